"""The real pair's formats end to end: a tiny Video-LLaVA target and a tiny EventGPT draft, in the
real directory formats, sharing a tokenizer, driven through `phide generate` with sensor FILES
(a frame folder / an mp4 and a DSEC events.h5 / an npz). Greedy tokens: target-only equals
transformers' VideoLlavaForConditionalGeneration.generate on the same frames; hide and
sequential equal target-only; stats carry the visual token counts."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from phide.cli import main
from phide.io.video import load_video_frames
from phide.models.tiny_eventgpt import write_tiny_clip, write_tiny_eventgpt
from phide.models.tiny_video_llava import write_tiny_video_llava
from test_io_events import _write_dsec_h5

QUESTIONS = ["What is moving?", "Describe the scene.", "Which car turns left?", "Where is the red ball?",
             "How many people are there?"]


def _quiet(fn, *a, **k):
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return fn(*a, **k)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from transformers import VideoLlavaForConditionalGeneration, VideoLlavaProcessor

    root = tmp_path_factory.mktemp("real_pair")
    target = root / "video_llava"
    _quiet(write_tiny_video_llava, target, seed=3, layout="hub", image_size=42)
    _quiet(write_tiny_clip, root / "clip", seed=4)
    _quiet(write_tiny_eventgpt, root / "eventgpt", clip_dir=root / "clip", tokenizer_dir=target, seed=5,
           add_ev_patch=True)
    hf = _quiet(VideoLlavaForConditionalGeneration.from_pretrained, str(target)).eval()
    proc = _quiet(VideoLlavaProcessor.from_pretrained, str(target))
    return {"root": root, "target": target, "draft": root / "eventgpt", "hf": hf, "proc": proc}


def _sensor_files(root, case):
    """A folder of 13 PNG frames and a DSEC-layout events.h5 (plus the same events as .npz)."""
    rng = np.random.default_rng(case)
    folder = root / f"frames{case}"
    folder.mkdir()
    for i in range(13):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
    n = 3000
    t = np.sort(rng.integers(0, 40_000, n)).astype(np.uint32)
    x = rng.integers(0, 64, n).astype(np.uint16)
    y = rng.integers(0, 48, n).astype(np.uint16)
    p = rng.integers(0, 2, n).astype(np.uint8)
    h5 = _write_dsec_h5(root / f"events{case}.h5", x, y, t, p, t_offset=1_000_000)
    npz = root / f"events{case}.npz"
    np.savez(npz, x=x, y=y, t=t.astype(np.int64) + 1_000_000, p=p)
    return folder, h5, npz


def _generate(capsys, pair, question, folder, events, mode, n):
    code = main(["generate", "--target", str(pair["target"]), "--draft", str(pair["draft"]), "--prompt", question,
                 "--video", str(folder), "--events", str(events), "--mode", mode, "--max-new-tokens", str(n),
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("case", range(10))
def test_cli_pair_greedy_equals_transformers(capsys, pair, tmp_path, case):
    folder, h5, npz = _sensor_files(tmp_path, case)
    question, n = QUESTIONS[case % len(QUESTIONS)], 8 + case
    frames = load_video_frames(folder, num_frames=8)
    inputs = pair["proc"](text=f"USER: <video>\n{question} ASSISTANT:", videos=frames, return_tensors="pt")
    with torch.no_grad():
        ref = pair["hf"].generate(**inputs, do_sample=False, max_new_tokens=n)[0, inputs["input_ids"].shape[1]:]
    events = h5 if case % 2 == 0 else npz
    runs = {mode: _generate(capsys, pair, question, folder, events, mode, n)
            for mode in ("target-only", "sequential", "hide")}
    for mode, obj in runs.items():
        assert obj["token_ids"] == ref.tolist(), mode
        stats = obj["stats"]
        assert stats["faults"] == 0, stats.get("fault_messages")
        assert stats["target_visual_tokens"] == 8 * ((42 // 14) ** 2 + 1)
        assert stats["peak_memory_mb"] > 0
        if mode != "target-only":
            assert stats["draft_visual_tokens"] == 5 + (42 // 14) ** 2 + 1
            assert stats["draft_forwards"] > 0


def test_h5_and_npz_events_drive_the_draft_identically(capsys, pair, tmp_path):
    folder, h5, npz = _sensor_files(tmp_path, 99)
    a = _generate(capsys, pair, QUESTIONS[0], folder, h5, "sequential", 12)
    b = _generate(capsys, pair, QUESTIONS[0], folder, npz, "sequential", 12)
    assert a["token_ids"] == b["token_ids"]
    assert a["stats"]["draft_forwards"] == b["stats"]["draft_forwards"]
    assert a["stats"]["accepted_per_verify"] == b["stats"]["accepted_per_verify"]


def test_missing_sensor_inputs_are_one_line_errors(capsys, pair, tmp_path):
    folder, h5, _ = _sensor_files(tmp_path, 7)
    base = ["generate", "--target", str(pair["target"]), "--draft", str(pair["draft"]), "--prompt", "x"]
    for extra, needle in [
        (["--events", str(h5)], "--video"),
        (["--video", str(folder)], "--events"),
        (["--video", str(tmp_path / "none"), "--events", str(h5)], "not found"),
        (["--video", str(folder), "--events", str(tmp_path / "none.h5")], "not found"),
    ]:
        code = main(base + extra)
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("phide: error")]
        assert code == 2 and len(lines) == 1 and needle in lines[0], (extra, err)
        assert "Traceback" not in err
