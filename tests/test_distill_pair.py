"""Paired-sample directories, the draft adapter (strategy B), `phide distill --data`, and
`phide demo` / `phide bench` on a tiny pair in the toy layout (PHIDE_TOY_PAIR)."""

import contextlib
import csv
import io
import json

import numpy as np
import pytest
import torch

from phide.cli import main
from phide.distill_pair import PairExample, agreement, train_draft_adapter
from phide.errors import PhideError
from phide.models.draft_adapter import DraftAdapter, load_draft_adapter
from phide.paired import read_paired_dir
from phide.toy.bundle import export_distill_data
from phide.toy.pair import write_toy_pair


def _quiet(fn, *a, **k):
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return fn(*a, **k)


def _ok(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def _one_error(capsys, argv, needle):
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("phide: error")]
    assert code == 2 and len(lines) == 1 and needle in lines[0], err


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The 'test'-size toy pair (random), 4 scenes of paired data, distilled with the CLI."""
    root = tmp_path_factory.mktemp("toy")
    _quiet(write_toy_pair, root, size="test", seed=0)
    n = export_distill_data(root / "data", 4)
    code = _quiet(main, ["distill", "--target", str(root / "target"), "--draft", str(root / "draft"),
                         "--data", str(root / "data"), "--out", str(root / "dist"), "--steps", "20",
                         "--adapter-steps", "40", "--max-new-tokens", "8", "--json"])
    assert code == 0
    for part, pattern in (("target", "eagle_head.*"), ("draft", "draft_adapter.*")):
        for f in (root / "dist").glob(pattern):
            (root / part / f.name).write_bytes(f.read_bytes())
    return {"root": root, "samples": n}


# ------------------------------------------------------------------------------ paired directories
def test_paired_dir_round_trip(toy):
    samples = read_paired_dir(toy["root"] / "data")
    assert len(samples) == toy["samples"] >= 4
    assert all(s.video.is_dir() and s.events.suffix == ".npz" and s.question for s in samples)
    from phide.io.events import load_events
    from phide.io.video import load_video_frames

    frames = load_video_frames(samples[0].video)
    assert frames.shape[0] == 8 and frames.dtype == np.uint8
    assert len(load_events(samples[0].events).t) > 0


@pytest.mark.parametrize("content, needle", [
    (None, "no samples.jsonl"),
    ("not json\n", "not JSON"),
    ('{"question": "q", "video": "v"}\n', "'events'"),
    ('{"question": "q", "video": "nope", "events": "e.npz"}\n', "does not exist"),
    ('["a list"]\n', "JSON object"),
])
def test_bad_paired_dirs_give_one_clear_error(tmp_path, capsys, toy, content, needle):
    d = tmp_path / "data"
    d.mkdir()
    if content is not None:
        (d / "samples.jsonl").write_text(content)
    with pytest.raises(PhideError, match=needle.replace("'", ".")):
        read_paired_dir(d)
    _one_error(capsys, ["distill", "--target", str(toy["root"] / "target"), "--data", str(d),
                        "--out", str(tmp_path / "o")], needle)


def test_distill_needs_data_for_the_adapter(tmp_path, capsys, toy):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\n")
    _one_error(capsys, ["distill", "--target", str(toy["root"] / "target"), "--draft", str(toy["root"] / "draft"),
                        "--prompts", str(prompts), "--out", str(tmp_path / "o")], "needs --data")


# ------------------------------------------------------------------------------ the adapter
def test_untrained_adapter_is_the_draft_and_round_trips(tmp_path):
    head = torch.nn.Linear(16, 50, bias=False)
    a = DraftAdapter(16, 8, head)
    h = torch.randn(3, 16)
    torch.testing.assert_close(a.logits(h), head(h))  # W_out starts at zero
    with torch.no_grad():
        a.w_out.weight.normal_()
    a.save(tmp_path)
    b = load_draft_adapter(tmp_path, head)
    torch.testing.assert_close(b.logits(h), a.logits(h))
    assert not any(k.startswith("lm_head") for k in b.state_dict())  # the draft's head is not copied
    with pytest.raises(PhideError, match="hidden size 16"):
        load_draft_adapter(tmp_path, torch.nn.Linear(24, 50, bias=False))
    with pytest.raises(PhideError, match="no draft adapter"):
        load_draft_adapter(tmp_path / "missing", head)


def test_adapter_learns_the_target_distribution():
    """The target's choice is a fixed function of the draft's state that the draft's own head does
    not compute: agreement must rise from chance to near 1."""
    g = torch.Generator().manual_seed(0)
    H, V = 16, 12
    head = torch.nn.Linear(H, V, bias=False)
    mix = torch.randn(H, V, generator=g)
    examples = []
    for _ in range(8):
        h = torch.randn(40, H, generator=g)
        probs = torch.softmax(4 * h @ mix, dim=-1)
        examples.append(PairExample(None, h, probs))
    a = DraftAdapter(H, 32, head)
    before = agreement(a.logits, examples, V)
    train_draft_adapter(a, examples, vocab=V, steps=300, lr=1e-2, log_every=0)
    after = agreement(a.logits, examples, V)
    assert after > 0.9 and after > before + 0.4, (before, after)


# ------------------------------------------------------------------------------ engine, demo, bench
def test_distilled_pair_is_lossless_in_every_configuration(toy, monkeypatch):
    from phide.bench import CONFIGS, eval_samples, load_bundled, run_scenes

    monkeypatch.setenv("PHIDE_TOY_PAIR", str(toy["root"]))
    pair = _quiet(load_bundled)
    assert pair.head is not None and pair.adapter is not None
    rows = run_scenes(pair, eval_samples(2), list(CONFIGS), max_new_tokens=10)  # raises on a difference
    for r in rows:
        for name, res in r["results"].items():
            assert res.stats["faults"] == 0, (name, res.stats.get("fault_messages"))
        assert r["results"]["hide-split"].stats["head_forwards"] > 0
        assert r["results"]["hide-draft"].stats["head_forwards"] == 0
        assert r["results"]["hide"].stats["plan"] in ("target-only", "head-only", "sequential", "hide")


def test_calibration_interleaves_its_check(toy, monkeypatch):
    """calibrate_and_check: the planner's costs per split, and per split one (stretch, window
    steps) measurement of every check scene, taken between the calibration's own requests."""
    from phide.bench import eval_samples, load_bundled
    from phide.calibration import calibrate_and_check
    from phide.planner import window_draft_steps

    monkeypatch.setenv("PHIDE_TOY_PAIR", str(toy["root"]))
    pair = _quiet(load_bundled)
    cal, held = eval_samples(2), eval_samples(3)[1:]
    costs, checks = calibrate_and_check(pair, cal, held, [1, 0])
    import torch

    assert [sp.draft_share for sp in costs.splits] == [1 / torch.get_num_threads(), 1.0]
    assert len(checks) == 2 and all(len(c) == 2 for c in checks)
    for split, measured in zip(costs.splits, checks):
        assert split.target_prefill_s > 0 and split.draft_step_s > 0
        assert all(ratio > 0 and steps >= 0 for ratio, steps in measured)
        assert 0 <= window_draft_steps(costs, split, 8) <= 8


def test_demo_json_and_timeline(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PHIDE_TOY_PAIR", str(toy["root"]))
    obj = _ok(capsys, "demo", "--scenes", "2", "--max-new-tokens", "8", "--out", str(tmp_path / "d"), "--json")
    assert set(obj) >= {"text", "token_ids", "stats", "modes", "scenes", "accuracy"}
    assert set(obj["modes"]) == {"target-only", "sequential", "hide"}
    assert all(m["identical_to_target_only"] for m in obj["modes"].values())
    assert len(obj["scenes"]) == 2 and obj["stats"]["mode"] == "hide"
    assert (tmp_path / "d" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    json.loads((tmp_path / "d" / "trace.json").read_text())
    code = main(["demo", "--scenes", "1", "--max-new-tokens", "6", "--out", str(tmp_path / "d2")])
    out = capsys.readouterr().out
    assert code == 0 and "target-only" in out and "identical tokens" in out


def test_bench_appends_csv(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PHIDE_TOY_PAIR", str(toy["root"]))
    path = tmp_path / "bench.csv"
    for _ in range(2):
        obj = _ok(capsys, "bench", "--scenes", "2", "--max-new-tokens", "6", "--csv", str(path), "--json")
    assert obj["configs"]["hide"]["speedup_vs_target-only"] > 0
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 2 * len(obj["configs"])
    assert {"device", "git_sha", "config", "median_wall_s", "mean_accepted_per_verify"} <= set(rows[0])


def test_missing_toy_pair_is_one_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PHIDE_TOY_PAIR", str(tmp_path / "nothing"))
    _one_error(capsys, ["demo", "--out", str(tmp_path / "d")], "toy pair is missing")


def test_the_bundled_pair_is_complete_small_and_lossless(monkeypatch):
    """The committed toy pair: every part present, within the 40 MB bf16 budget, head and adapter
    loaded by default, identical greedy tokens in hide / sequential / target-only."""
    from phide.bench import _request, eval_samples, load_bundled
    from phide.toy.bundle import BUNDLED
    from phide.toy.pair import BF16_BUDGET_BYTES, checkpoint_stats

    monkeypatch.delenv("PHIDE_TOY_PAIR", raising=False)
    stats = checkpoint_stats(BUNDLED)
    assert sum(s["bf16_bytes"] for s in stats.values()) <= BF16_BUDGET_BYTES
    on_disk = sum(f.stat().st_size for f in BUNDLED.rglob("*") if f.is_file())
    assert on_disk <= BF16_BUDGET_BYTES
    pair = _quiet(load_bundled)
    assert pair.head is not None and pair.adapter is not None
    s = eval_samples(1)[0]
    outs = {m: pair.engine.generate(_request(s, 16, m)) for m in ("target-only", "sequential", "hide")}
    assert outs["hide"].token_ids == outs["sequential"].token_ids == outs["target-only"].token_ids
    assert outs["hide"].stats["accepted_per_verify"] > 2  # the head drafts well for its own target


def test_toy_evaluate_scores_target_and_draft(toy, capsys, monkeypatch):
    """`python -m phide.toy.evaluate`: accuracy of the target and the draft alone, per question."""
    from phide.toy.evaluate import main as evaluate_main

    monkeypatch.setenv("PHIDE_TOY_PAIR", str(toy["root"]))
    assert evaluate_main(["--scenes", "3", "--max-new-tokens", "6", "--json"]) == 0
    acc = json.loads(capsys.readouterr().out)
    assert acc["scenes"] == 3
    for k in ("target_correct", "target_motion", "target_colour", "draft_motion", "draft_colour"):
        assert 0.0 <= acc[k] <= 1.0
    assert acc["target_correct"] <= min(acc["target_motion"], acc["target_colour"])
    assert sum(len(q) > 0 for q in acc["by_question"]) == len(acc["by_question"]) >= 1
    assert evaluate_main([str(toy["root"]), "--scenes", "1", "--max-new-tokens", "4"]) == 0
    assert "held-out scenes" in capsys.readouterr().out


def test_toy_evaluate_bad_directory_is_one_error(tmp_path, capsys):
    from phide.toy.evaluate import main as evaluate_main

    assert evaluate_main([str(tmp_path / "nothing"), "--scenes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("phide: error:")
