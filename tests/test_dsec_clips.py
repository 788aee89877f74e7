"""`phide dsec-clips` on a synthetic sequence in DSEC's layout, then `phide eval` on its output;
a sequence with a missing or truncated file is one error naming the file."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cli_run import run_cli
from phide.errors import PhideError
from phide.io.dsec import EVENTS, IMAGES, TIMESTAMPS, cut_clips, read_sequence
from phide.io.paired import read_paired_dir
from test_io_events import _write_dsec_h5

T_OFFSET = 50_000_000  # DSEC stores event times relative to t_offset; frame timestamps are absolute


def write_sequence(root, *, seconds=2.5, fps=20, seed=0):
    """A DSEC-layout sequence: 64x48 frames at `fps` from T_OFFSET + 0.1 s, events over the whole span."""
    rng = np.random.default_rng(seed)
    (root / IMAGES).mkdir(parents=True)
    (root / EVENTS).parent.mkdir(parents=True)
    stamps = T_OFFSET + 100_000 + np.arange(int(seconds * fps)) * (1_000_000 // fps)
    for i in range(len(stamps)):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / IMAGES / f"{i:06d}.png")
    (root / TIMESTAMPS).write_text("\n".join(str(t) for t in stamps) + "\n")
    n = 40_000
    t = np.sort(rng.integers(0, int((seconds + 0.2) * 1e6), n)).astype(np.uint32)
    _write_dsec_h5(root / EVENTS, rng.integers(0, 64, n).astype(np.uint16), rng.integers(0, 48, n).astype(np.uint16),
                   t, rng.integers(0, 2, n).astype(np.uint8), t_offset=T_OFFSET)
    return root, stamps


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    return write_sequence(tmp_path_factory.mktemp("dsec") / "zurich_city_00_a")


def test_clips_take_8_frames_over_the_clip_and_the_events_it_ends_with(sequence):
    root, stamps = sequence
    seq = read_sequence(root)
    clips = list(cut_clips(seq, clip_ms=1000, event_ms=50))
    assert [c.index for c in clips] == [0, 1]  # 2.4 s of frames and events in common: two whole clips
    for c in clips:
        assert c.t_end_us - c.t_start_us == 1_000_000 and c.frames.shape == (8, 48, 64, 3)
        in_clip = [i for i, t in enumerate(stamps) if c.t_start_us <= t < c.t_end_us]
        last = int(stamps[in_clip[-1]])  # the events end at the target's last frame, its instant included
        assert c.events.t.min() >= last + 1 - 50_000 and c.events.t.max() <= last
        assert c.events.t.max() > last - 5_000  # ... and reach it (40,000 events over 2.7 s)
        first = np.asarray(Image.open(root / IMAGES / f"{in_clip[0]:06d}.png").convert("RGB"))
        last = np.asarray(Image.open(root / IMAGES / f"{in_clip[-1]:06d}.png").convert("RGB"))
        np.testing.assert_array_equal(c.frames[0], first)   # spread from the clip's first frame ...
        np.testing.assert_array_equal(c.frames[-1], last)   # ... to its last
    with pytest.raises(PhideError, match="EventGPT reads streams shorter than 100 ms"):
        list(cut_clips(seq, clip_ms=1000, event_ms=100))


def test_dsec_clips_then_eval_end_to_end(sequence, tmp_path):
    from phide.toy.bundle import bundled_dir

    root, _ = sequence
    questions = tmp_path / "questions.txt"
    questions.write_text("Which way does the circle move?\n\nWhat is moving?\n")
    out = tmp_path / "paired"
    rc, stdout, err = run_cli(["dsec-clips", str(root), "--out", str(out), "--questions", str(questions), "--json"])
    assert rc == 0, err
    assert json.loads(stdout)["samples"] == 4  # 2 clips x 2 questions
    samples = read_paired_dir(out)
    assert [(s.extra["clip"], s.question) for s in samples] == [
        (0, "Which way does the circle move?"), (0, "What is moving?"), (1, "Which way does the circle move?"),
        (1, "What is moving?")]
    rc, _, err = run_cli(["dsec-clips", str(root), "--out", str(out), "--questions", str(questions)])
    assert rc == 2 and "already holds" in err  # never overwritten
    bad = tmp_path / "bad"
    rc, _, err = run_cli(["dsec-clips", str(root), "--out", str(bad), "--questions", str(questions), "--event-ms", "100"])
    assert rc == 2 and "shorter than 100 ms" in err
    assert not bad.exists() and not (tmp_path / "bad.partial").exists()  # nothing half-written
    run = tmp_path / "run"
    pair = bundled_dir()
    rc, stdout, err = run_cli(["eval", str(out), "--target", str(pair / "target"), "--draft", str(pair / "draft"),
                            "--out", str(run), "--modes", "target-only,hide", "--max-new-tokens", "8", "--json"])
    assert rc == 0, err
    summary = json.loads(stdout)["summary"]
    assert summary["samples"] == 4 and summary["errors"] == 0
    assert summary["modes"]["hide"]["identical_rate"] == 1.0


@pytest.mark.parametrize("damage, named", [
    ("no events", "events/left/events.h5"),
    ("truncated events", "events.h5"),
    ("truncated timestamps", "timestamps.txt"),
    ("truncated frame", "000012.png"),
    ("no frames folder", "images/left/rectified"),
])
def test_a_damaged_sequence_is_one_error_naming_the_file(sequence, tmp_path, damage, named):
    root = tmp_path / "seq"
    shutil.copytree(sequence[0], root)
    if damage == "no events":
        (root / EVENTS).unlink()
    elif damage == "truncated events":
        data = (root / EVENTS).read_bytes()
        (root / EVENTS).write_bytes(data[: len(data) // 3])
    elif damage == "truncated timestamps":
        lines = (root / TIMESTAMPS).read_text().splitlines()
        (root / TIMESTAMPS).write_text("\n".join(lines[:-7]) + "\n")
    elif damage == "truncated frame":
        data = (root / IMAGES / "000012.png").read_bytes()
        (root / IMAGES / "000012.png").write_bytes(data[:40])
    else:
        shutil.rmtree(root / IMAGES)
    questions = tmp_path / "q.txt"
    questions.write_text("What is moving?\n")
    rc, out, err = run_cli(["dsec-clips", str(root), "--out", str(tmp_path / "paired"), "--questions", str(questions)])
    assert rc == 2 and out == ""
    assert err.startswith("phide: error:") and err.count("\n") == 1, err
    assert named in err
