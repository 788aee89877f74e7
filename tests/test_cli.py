"""`phide generate` per the CLI/JSON contract, and one-line errors with exit code 2."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaForCausalLM

from phide.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def hf_target(tiny_pair):
    return LlamaForCausalLM.from_pretrained(tiny_pair["target"]).eval()


@pytest.mark.parametrize("prompt", ["What is moving?", "Describe the scene.", "left right"])
def test_generate_json_all_modes_identical(capsys, tiny_pair, hf_target, prompt):
    from phide.models.loading import load_tokenizer

    ids = load_tokenizer(tiny_pair["target"])(prompt)["input_ids"]
    ref = hf_target.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=20, eos_token_id=2,
                             pad_token_id=0)[0, len(ids):].tolist()
    seen = {}
    for mode in ("target-only", "sequential", "hide", None):  # None: no --mode, the default (auto)
        code, out, err = _run(capsys, "generate", "--target", str(tiny_pair["target"]), "--draft",
                              str(tiny_pair["near"]), "--prompt", prompt, *(["--mode", mode] if mode else []),
                              "--max-new-tokens", "20", "--json")
        assert code == 0, err
        obj = json.loads(out)  # exactly one JSON object on stdout
        assert set(obj) >= {"text", "token_ids", "stats"}
        stats = obj["stats"]
        for key, typ in [("mode", str), ("target_forwards", int), ("draft_forwards", int),
                         ("accepted_per_verify", float), ("draft_tokens_in_window", int),
                         ("wall_s", float), ("phases", dict), ("plan", dict)]:
            assert isinstance(stats[key], typ), key
        assert stats["mode"] == (mode or "auto")
        # what ran: the forced schedule; auto with no calibration of this pair runs target-only
        assert stats["plan"]["schedule"] == (mode or "target-only")
        if mode is None:
            assert "no calibration" in stats["plan"]["reason"] and stats["plan"]["predicted_s"] is None
        # tau = tokens emitted / verify forwards (every target forward after the prefill verifies)
        assert stats["verifies"] == stats["target_forwards"] - 1
        assert stats["accepted_per_verify"] == round(len(obj["token_ids"]) / stats["verifies"], 4)
        # emitted drafts: every verify emits its bonus but perhaps the last (cut at the limit)
        drafts = round(stats["accepted_drafts_per_verify"] * stats["verifies"])
        assert len(obj["token_ids"]) - stats["verifies"] <= drafts <= len(obj["token_ids"]) - stats["verifies"] + 1
        assert "loading target" in err  # progress on stderr
        seen[mode] = obj["token_ids"]
    assert seen["target-only"] == seen["sequential"] == seen["hide"] == seen[None] == ref


def test_calibrate_then_auto_plans_from_it(capsys, tiny_pair, tmp_path):
    """`phide calibrate` measures the pair on this machine and saves it; `generate` then finds it
    (auto plans with a predicted wall time) while another pair stays uncalibrated."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is moving?\nDescribe the scene.\n")
    pair = ["--target", str(tiny_pair["target"]), "--draft", str(tiny_pair["near"])]
    code, out, err = _run(capsys, "calibrate", *pair, "--prompts", str(prompts), "--samples", "2",
                          "--max-new-tokens", "8", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["costs"]["target_step_s"] > 0 and report["costs"]["draft_step_s"] > 0
    assert [sp["draft_threads"] for sp in report["costs"]["splits"]] == [
        n for n in (1, 2, 4, 8) if n < torch.get_num_threads()]
    code, out, err = _run(capsys, "generate", *pair, "--prompt", "a dog", "--max-new-tokens", "8", "--json")
    got = json.loads(out)
    plan = got["stats"]["plan"]
    assert code == 0 and plan["schedule"] == report["auto_picks"]["schedule"] and plan["predicted_s"] > 0
    code, out, _ = _run(capsys, "generate", *pair, "--prompt", "a dog", "--max-new-tokens", "8", "--mode",
                        "target-only", "--json")
    assert got["token_ids"] == json.loads(out)["token_ids"]  # whatever auto picked, target-only's tokens
    code, out, err = _run(capsys, "generate", "--target", str(tiny_pair["target"]), "--draft",
                          str(tiny_pair["wrong"]), "--prompt", "a dog", "--max-new-tokens", "8", "--json")
    assert "no calibration" in json.loads(out)["stats"]["plan"]["reason"]


def test_generate_plain_text_output(capsys, tiny_pair):
    code, out, err = _run(capsys, "generate", "--target", str(tiny_pair["target"]), "--draft",
                          str(tiny_pair["near"]), "--prompt", "hello", "--max-new-tokens", "5")
    assert code == 0 and out.strip() and "tokens/verify" in err


def test_sampling_is_seeded(capsys, tiny_pair):
    args = ["generate", "--target", str(tiny_pair["target"]), "--draft", str(tiny_pair["near"]),
            "--prompt", "a dog", "--temperature", "0.8", "--max-new-tokens", "16", "--json"]
    a = json.loads(_run(capsys, *args, "--seed", "3")[1])["token_ids"]
    b = json.loads(_run(capsys, *args, "--seed", "3")[1])["token_ids"]
    assert a == b
    others = [json.loads(_run(capsys, *args, "--seed", str(seed))[1])["token_ids"] for seed in (4, 5)]
    assert any(o != a for o in others)  # the seed is read: another one samples other tokens


def _error(capsys, *argv):
    code, out, err = _run(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert lines and lines[-1].startswith("phide: error: "), err
    assert sum(ln.startswith("phide: error") for ln in lines) == 1 and "Traceback" not in err
    assert out == ""
    return lines[-1]


def test_bad_inputs(capsys, tiny_pair, tmp_path):
    t, d = str(tiny_pair["target"]), str(tiny_pair["near"])
    base = ["generate", "--target", t, "--draft", d]
    assert "not found" in _error(capsys, "generate", "--target", str(tmp_path / "nope"), "--draft", d, "--prompt", "x")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    assert "not valid JSON" in _error(capsys, "generate", "--target", str(tmp_path / "bad"), "--draft", d,
                                      "--prompt", "x")
    (tmp_path / "empty").mkdir()
    assert "config.json" in _error(capsys, "generate", "--target", t, "--draft", str(tmp_path / "empty"),
                                   "--prompt", "x")
    assert "prompt is empty" in _error(capsys, *base, "--prompt", "  ")
    assert "positive integer" in _error(capsys, *base, "--prompt", "x", "--max-new-tokens", "0")
    assert "positive integer" in _error(capsys, *base, "--prompt", "x", "--max-new-tokens", "-3")
    assert "positive integer" in _error(capsys, *base, "--prompt", "x", "--max-new-tokens", "many")
    assert "temperature" in _error(capsys, *base, "--prompt", "x", "--temperature", "-1")
    assert "mode" in _error(capsys, *base, "--prompt", "x", "--mode", "fastest")
    assert "--draft is required" in _error(capsys, "generate", "--target", t, "--prompt", "x", "--mode", "hide")
    assert "EAGLE head" in _error(capsys, *base, "--prompt", "x", "--mode", "head-only")
    assert "required" in _error(capsys, "generate", "--draft", d, "--prompt", "x")
    assert "text-only" in _error(capsys, *base, "--prompt", "x", "--video", str(tmp_path))



def test_lane_split_and_draft_graph_flags(capsys, tiny_pair):
    base = ["generate", "--target", str(tiny_pair["target"]), "--draft", str(tiny_pair["near"]),
            "--prompt", "What is moving?", "--max-new-tokens", "12", "--json"]
    ref = json.loads(_run(capsys, *base, "--mode", "target-only")[1])["token_ids"]
    code, out, err = _run(capsys, *base, "--mode", "hide", "--draft-threads", "1", "--draft-graph")
    stats = json.loads(out)["stats"]
    assert code == 0 and json.loads(out)["token_ids"] == ref
    assert stats["plan"]["draft_threads"] == 1 and stats["window_lanes"].startswith("threads: draft 1")
    assert "needs --device cuda" in _error(capsys, *base, "--mode", "hide", "--draft-sms", "16")


def test_cuda_without_a_device_is_one_error(capsys, tiny_pair, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    assert "no CUDA device" in _error(capsys, "generate", "--target", str(tiny_pair["target"]), "--prompt", "x",
                                      "--device", "cuda")


def test_missing_weights_and_pickled_only(capsys, tiny_pair, tmp_path):
    import shutil

    d = tmp_path / "noweights"
    shutil.copytree(tiny_pair["near"], d)
    for f in d.glob("*.safetensors"):
        f.unlink()
    (d / "pytorch_model.bin").write_bytes(b"not really")
    msg = _error(capsys, "generate", "--target", str(tiny_pair["target"]), "--draft", str(d), "--prompt", "x")
    assert "does not unpickle" in msg


def test_console_script_subprocess(tiny_pair):
    """The installed entry point (python -m phide.cli) exits 2 with one line on bad input."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "phide.cli", "generate", "--target", "/nonexistent", "--prompt", "x",
                        "--mode", "target-only"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "phide: error: checkpoint directory not found: /nonexistent"]
