"""`phide trace` and `phide distill` from the command line."""

import json

import pytest
import torch

from phide.cli import main
from phide.runtime.trace import validate_chrome_trace


def _ok(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_trace_writes_a_valid_chrome_trace_and_png(capsys, tiny_pair, tmp_path):
    obj = _ok(capsys, "trace", "--target", str(tiny_pair["target"]), "--draft", str(tiny_pair["near"]),
              "--prompt", " ".join(["the red car turns left near the big square"] * 12), "--mode", "hide",
              "--max-new-tokens", "8", "--out", str(tmp_path / "t"), "--json")
    trace = json.loads((tmp_path / "t" / "trace.json").read_text())
    validate_chrome_trace(trace)
    lanes = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}
    assert {"target lane", "draft lane"} <= lanes
    names = {e["name"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert {"target_prefill", "draft_prefill", "verify"} <= names
    assert (tmp_path / "t" / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert obj["overlap_s"] > 0  # the draft lane ran inside the target's prefill


def test_distill_then_generate_with_the_head(capsys, tiny_pair, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(["What is moving?", "Describe the scene.", "the red car turns left",
                                  "Where is the ball", "one two three", "Is it bright?"]))
    rep = _ok(capsys, "distill", "--target", str(tiny_pair["target"]), "--prompts", str(prompts),
              "--out", str(tmp_path / "head"), "--steps", "60", "--max-new-tokens", "24", "--json")
    assert (tmp_path / "head" / "config.json").is_file() and (tmp_path / "head" / "model.safetensors").is_file()
    assert rep["head_kind"] == "eagle3" and rep["val_identical"] == 1.0  # head-only on held-out: lossless
    base = ["generate", "--target", str(tiny_pair["target"]), "--draft", str(tiny_pair["near"]),
            "--prompt", "What is moving?", "--max-new-tokens", "20", "--json"]
    ref = _ok(capsys, *base, "--mode", "target-only")["token_ids"]
    for mode in ("sequential", "hide", "head-only"):
        out = _ok(capsys, *base, "--mode", mode, "--head", str(tmp_path / "head"))
        assert out["token_ids"] == ref and out["stats"]["faults"] == 0 and out["stats"]["head_forwards"] > 0
    out = _ok(capsys, *base, "--mode", "hide", "--head", str(tmp_path / "head"), "--no-head")
    assert out["token_ids"] == ref and out["stats"]["head_forwards"] == 0
    from phide.speculation import drafters

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(drafters, "MIN_PATH_PROB", 0.0)  # grow ahead whenever the flag allows it
        for flag, grew in (([], False), (["--overlap"], True)):
            out = _ok(capsys, *base, "--mode", "head-only", "--head", str(tmp_path / "head"), *flag)
            assert out["token_ids"] == ref and (out["stats"]["overlap_rounds"] > 0) == grew
    # --init-head goes on training that head: with lr 0 it comes back unchanged
    _ok(capsys, "distill", "--target", str(tiny_pair["target"]), "--prompts", str(prompts), "--out",
        str(tmp_path / "again"), "--steps", "5", "--lr", "0", "--max-new-tokens", "8", "--init-head",
        str(tmp_path / "head"), "--json")
    from safetensors.torch import load_file

    before, after = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("head", "again"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_tool_errors_are_one_line(capsys, tiny_pair, tmp_path):
    for argv, needle in [
        (["distill", "--target", str(tiny_pair["target"]), "--prompts", str(tmp_path / "none.txt"),
          "--out", str(tmp_path / "h")], "cannot read prompts"),
        (["generate", "--target", str(tiny_pair["target"]), "--draft", str(tiny_pair["near"]), "--prompt", "x",
          "--head", str(tmp_path)], "no EAGLE head"),
        (["distill", "--target", str(tiny_pair["target"]), "--prompts", str(tmp_path / "p.txt"), "--out",
          str(tmp_path / "h"), "--init-head", str(tmp_path)], "no EAGLE head"),
        (["calibrate", "--draft", str(tiny_pair["near"])], "--draft needs --target"),
        (["calibrate", "--target", str(tiny_pair["target"])], "--data PAIRED_DIR or --prompts"),
        (["generate", "--target", str(tiny_pair["target"]), "--prompt", "x", "--calibration",
          str(tmp_path / "none.json")], "no calibration"),
    ]:
        code = main(argv)
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("phide: error")]
        assert code == 2 and len(lines) == 1 and needle in lines[0], err
