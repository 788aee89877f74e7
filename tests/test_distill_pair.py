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
from phide.distill.features import AdapterBatch
from phide.distill.pair import AdapterObjective, agreement
from phide.distill.trainer import TrainConfig, train
from phide.engine import Plan
from phide.errors import PhideError
from phide.io.paired import read_paired_dir
from phide.models.draft_adapter import DraftAdapter, load_draft_adapter
from phide.models.heads import HEAD_SUBDIR
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
    head_dir = root / "target" / HEAD_SUBDIR  # the EAGLE-3 head (SGLang layout) in the target's head place
    head_dir.mkdir()
    for name in ("config.json", "model.safetensors"):
        (head_dir / name).write_bytes((root / "dist" / name).read_bytes())
    for f in (root / "dist").glob("draft_adapter.*"):
        (root / "draft" / f.name).write_bytes(f.read_bytes())
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


class _FixedAdapterSource:
    """Adapter batches from fixed tensors: sample k's draft states and the target's final features
    (here the target's choice is a fixed function of the draft's state its own head does not compute)."""

    def __init__(self, hidden, finals, lm_head):
        self.hidden, self.finals = hidden, finals
        self.target = type("T", (), {"lm_head": lm_head})()

    def adapter_batch(self, entries):
        rows = [(self.hidden[k], self.finals[k]) for k in entries]
        return AdapterBatch(torch.cat([h for h, _ in rows]), torch.cat([f for _, f in rows]),
                            torch.cat([torch.full((h.shape[0],), b) for b, (h, _) in enumerate(rows)]))


def test_adapter_learns_the_target_distribution():
    """Trained by the distill loop on a stream of batches, agreement rises from chance to near 1."""
    g = torch.Generator().manual_seed(0)
    H, V = 16, 12
    draft_head = torch.nn.Linear(H, V, bias=False)
    target_head = torch.nn.Linear(H, V, bias=False)
    mix = torch.randn(H, H, generator=g)
    hidden = [torch.randn(40, H, generator=g) for _ in range(8)]
    finals = [4 * h @ mix for h in hidden]  # the target's features: its distribution is softmax(lm_head(.))
    source = _FixedAdapterSource(hidden, finals, target_head)
    a = DraftAdapter(H, 32, draft_head)
    entries = list(range(8))
    before = agreement(a.logits, source, entries, V)
    cfg = TrainConfig(steps=300, batch=8, micro_batch=8, lr=1e-2, warmup=5, clip=1.0)
    train(AdapterObjective(a, source, target_head.weight, V), a, entries, cfg, ckpt_dir=None, resume=False, quiet=True)
    after = agreement(a.logits, source, entries, V)
    assert after > 0.9 and after > before + 0.4, (before, after)


# ------------------------------------------------------------------------------ engine, demo, bench
def _toy_configs(toy, monkeypatch, names):
    from phide.tools.bench import load_configs

    monkeypatch.setenv("PHIDE_TOY_PAIR", str(toy["root"]))
    return _quiet(load_configs, names)


def test_distilled_pair_is_lossless_in_every_configuration(toy, monkeypatch):
    from phide.tools.bench import CONFIGS, eval_samples, run_scenes

    # Quantized drafts: tests/test_quant.py, on the bundled pair (this toy's 32-wide layers are
    # narrower than a 4-bit block).
    configs = _toy_configs(toy, monkeypatch, [n for n in CONFIGS if "--draft-quant" not in n])
    session = configs["hide"][0]
    assert session.engine.head is not None and session.engine.draft_adapter is not None
    assert session.planner.calibration is not None  # load_configs calibrated it (saved under PHIDE_HOME)
    rows = _quiet(run_scenes, configs, eval_samples(2), max_new_tokens=10)
    for r in rows:
        assert all(r["identical"].values()), r["identical"]
        st = {name: res.stats for name, res in r["results"].items()}
        for name in configs:
            assert st[name]["faults"] == 0, (name, st[name].get("fault_messages"))
        # each row ran what it is named for
        assert st["hide"]["plan"]["schedule"] == "hide" and st["hide"]["draft_forwards"] > 0
        assert st["hide"]["head_forwards"] > 0
        assert st["head-only"]["draft_forwards"] == 0 and st["head-only"]["head_forwards"] > 0
        assert st["hide --no-head"]["head_forwards"] == 0 and st["hide --no-head"]["draft_forwards"] > 1
        assert st["sequential"]["plan"]["schedule"] == "sequential"
        assert st["auto"]["mode"] == "auto"


def test_bench_rotates_the_order_and_runs_the_draft_alone_last(toy, monkeypatch):
    """No configuration always runs first in a scene (a cold start would always hit it), and the
    draft answering alone runs after every timed request."""
    from phide.engine import Engine
    from phide.session import Session
    from phide.tools.bench import eval_samples, run_scenes

    configs = _toy_configs(toy, monkeypatch, ["target-only", "sequential", "hide"])
    order = []
    s_generate, e_generate = Session.generate, Engine.generate

    def session_generate(self, req, mode="auto"):
        order.append(mode)
        return s_generate(self, req, mode)

    def engine_generate(self, req, plan):
        if self.draft is None and self.head is None:  # only the draft-alone engine has neither
            order.append("draft alone")
        return e_generate(self, req, plan)

    monkeypatch.setattr(Session, "generate", session_generate)
    monkeypatch.setattr(Engine, "generate", engine_generate)
    _quiet(run_scenes, configs, eval_samples(3), max_new_tokens=4)
    timed = [m for m in order if m != "draft alone"][3:]  # after the warm-up of each configuration
    firsts = [timed[3 * i] for i in range(3)]
    assert sorted(firsts) == ["hide", "sequential", "target-only"]
    assert order[-3:] == ["draft alone"] * 3 and order.count("draft alone") == 3


def test_calibration_runs_neighbour_pairs_and_the_check_predicts_from_it_alone(toy, monkeypatch):
    """calibrate: each split's hide request runs right after a target-only request of the same
    sample (a drifting machine drifts under both). check: every mode of a request before the
    next request, and predictions from the calibration alone (what the planner learns during
    the check does not leak into them)."""
    from phide.tools.bench import eval_samples, toy_request
    from phide.tools.calibrate import calibrate, check, relative_errors

    session = _toy_configs(toy, monkeypatch, ["hide"])["hide"][0]
    order = []
    generate = session.engine.generate

    def logged(req, plan):
        label = plan if isinstance(plan, str) else plan.schedule + (f"@{plan.draft_threads}t" if plan.draft_threads
                                                                      else "")
        order.append((req.prompt, label))
        return generate(req, plan)

    monkeypatch.setattr(session.engine, "generate", logged)
    reqs = [toy_request(s, 8) for s in eval_samples(2)]
    cal = _quiet(calibrate, session, reqs, splits=[{"draft_threads": 1}])
    assert [sp.label for sp in cal.costs.splits] == ["hide@1t"]
    split_runs = order[-4:]  # the split phase comes last: (target-only, hide) per request
    assert split_runs == [(reqs[0].prompt, "target-only"), (reqs[0].prompt, "hide@1t"),
                          (reqs[1].prompt, "target-only"), (reqs[1].prompt, "hide@1t")]
    from phide.session import save_session_calibration

    save_session_calibration(session, cal)
    order.clear()
    held = [toy_request(s, 8) for s in eval_samples(4)[2:]]
    modes = ("target-only", "head-only", "hide")
    rows = _quiet(check, session, held, modes)
    assert order == [(r.prompt, m) for r in held for m in ("target-only", "head-only", "hide@1t")]
    fresh = session.planner.with_calibration(cal)
    # what the session's planner has learnt since (6 requests, and here much more) must not leak
    session.planner.head_acc.update(cal.head.tau + 5.0, weight=1.0)
    session.planner.draft_acc.update_window(1.0 - cal.draft.window_accept_rate, weight=1.0)
    again = _quiet(check, session, held, modes)
    for a, b in zip(rows, again):  # greedy: the same answers, so the same predictions
        assert (a["new_tokens"], a["predicted_s"]) == (b["new_tokens"], b["predicted_s"])
        plan = Plan(a["schedule"], draft_threads=1 if a["schedule"] == "hide" else 0)
        assert a["predicted_s"] == pytest.approx(fresh.predict(plan, a["new_tokens"]))
    errors = relative_errors(rows)
    assert set(errors) == set(modes)
    for mode in modes:
        mine = [abs(r["predicted_s"] - r["measured_s"]) / r["measured_s"] for r in rows if r["mode"] == mode]
        assert errors[mode] == pytest.approx(float(np.median(mine)), abs=1e-4)


def test_demo_json_and_timeline(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PHIDE_TOY_PAIR", str(toy["root"]))
    obj = _ok(capsys, "demo", "--scenes", "2", "--max-new-tokens", "8", "--out", str(tmp_path / "d"), "--json")
    assert set(obj) >= {"text", "token_ids", "stats", "modes", "scenes", "accuracy"}
    assert set(obj["modes"]) == {"target-only", "sequential", "hide", "auto"}
    assert all(m["identical_scenes"] == 2 for m in obj["modes"].values())
    assert obj["modes"]["hide"]["ran"] == "hide"
    auto_ran = [s["modes"]["auto"]["ran"] for s in obj["scenes"]]
    assert obj["modes"]["auto"]["ran"].startswith("auto (") and auto_ran[0] in obj["modes"]["auto"]["ran"]
    assert len(obj["scenes"]) == 2 and obj["stats"]["mode"] == "auto"
    assert obj["stats"]["plan"]["schedule"] == auto_ran[0]
    assert (tmp_path / "d" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    json.loads((tmp_path / "d" / "trace.json").read_text())
    code = main(["demo", "--scenes", "1", "--max-new-tokens", "6", "--out", str(tmp_path / "d2")])
    out = capsys.readouterr().out
    assert code == 0 and "target-only" in out and "identical to target-only in every mode on 1 scenes: yes" in out


def test_bench_appends_one_schema_and_names_what_ran(toy, tmp_path, capsys, monkeypatch):
    from phide.tools.bench import BENCH_COLUMNS, CONFIGS
    from phide.tools.benchlog import git_state

    monkeypatch.setenv("PHIDE_TOY_PAIR", str(toy["root"]))
    path = tmp_path / "bench.csv"
    for _ in range(2):
        obj = _ok(capsys, "bench", "--scenes", "2", "--max-new-tokens", "6", "--csv", str(path), "--allow-dirty",
                  "--json")
    names = [n for n, c in CONFIGS.items() if c.default]
    assert list(obj["configs"]) == names
    with path.open() as f:
        assert next(csv.reader(f)) == BENCH_COLUMNS
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 2 * len(names)
    assert {r["dirty"] for r in rows} == {str(int(git_state()[1]))}
    for name, e in obj["configs"].items():
        assert e["identical_scenes"] == 2
        ran = [p for p, c in e["plans"].items() for _ in range(c)]
        if name == "auto":
            assert e["ran"].startswith("auto (")
        else:  # a forced mode runs what it names
            assert ran == [CONFIGS[name].mode] * 2 and e["ran"] == name
        if e["median_predicted_s"] is not None:  # the main session's modes are calibrated
            assert e["median_prediction_error"] is not None
    assert obj["configs"]["hide"]["median_predicted_s"] is not None
    assert obj["configs"]["hide --no-head"]["median_predicted_s"] is None  # no calibration of that session


def test_bench_refuses_a_dirty_tree_and_another_schema(toy, tmp_path, capsys, monkeypatch):
    from phide.tools import benchlog

    monkeypatch.setenv("PHIDE_TOY_PAIR", str(toy["root"]))
    monkeypatch.setattr(benchlog, "git_state", lambda: ("abc1234", True))
    path = tmp_path / "bench.csv"
    _one_error(capsys, ["bench", "--scenes", "1", "--csv", str(path)], "uncommitted changes")
    assert not path.exists()
    monkeypatch.setattr(benchlog, "git_state", lambda: ("abc1234", False))
    path.write_text("device,config,median_wall_s\nx,y,1\n")
    _one_error(capsys, ["bench", "--scenes", "1", "--max-new-tokens", "4", "--configs", "hide",
                        "--csv", str(path)], "another schema")
    with pytest.raises(PhideError, match="not in the file's schema"):
        benchlog.append_csv(tmp_path / "new.csv", [{"device": "x", "surprise": 1}], ["device"])


def test_bench_fails_when_a_configuration_changes_the_tokens(toy, tmp_path, capsys, monkeypatch):
    """The identical-token count is computed: a configuration whose tokens differ from
    target-only's is counted, and the bench ends with an error."""
    from phide.session import Session

    monkeypatch.setenv("PHIDE_TOY_PAIR", str(toy["root"]))
    generate = Session.generate

    def wrong_in_hide(self, req, mode="auto"):
        res = generate(self, req, mode)
        if mode == "hide" and res.token_ids:
            res.token_ids = [res.token_ids[0] + 1] + res.token_ids[1:]
        return res

    monkeypatch.setattr(Session, "generate", wrong_in_hide)
    code = main(["bench", "--scenes", "2", "--max-new-tokens", "4", "--configs", "hide,sequential",
                 "--csv", str(tmp_path / "b.csv"), "--allow-dirty", "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and "tokens differ from target-only in hide" in err
    configs = json.loads(out)["configs"]
    assert configs["hide"]["identical_scenes"] == 0 and configs["sequential"]["identical_scenes"] == 2


def test_missing_toy_pair_is_one_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PHIDE_TOY_PAIR", str(tmp_path / "nothing"))
    _one_error(capsys, ["demo", "--out", str(tmp_path / "d")], "toy pair is missing")


def test_the_bundled_pair_is_complete_small_and_lossless(monkeypatch):
    """The committed toy pair: every part present, within the 40 MB bf16 budget, head, adapter
    and tree shape loaded by default, identical greedy tokens in every schedule."""
    from phide.tools.bench import bundled_session, eval_samples, toy_request
    from phide.toy.bundle import BUNDLED, TREE_SHAPE
    from phide.toy.pair import BF16_BUDGET_BYTES, checkpoint_stats

    monkeypatch.delenv("PHIDE_TOY_PAIR", raising=False)
    stats = checkpoint_stats(BUNDLED)
    assert sum(s["bf16_bytes"] for s in stats.values()) <= BF16_BUDGET_BYTES
    on_disk = sum(f.stat().st_size for f in BUNDLED.rglob("*") if f.is_file())
    assert on_disk <= BF16_BUDGET_BYTES
    session = _quiet(bundled_session, calibration=None)
    eng = session.engine
    assert eng.head is not None and eng.draft_adapter is not None
    assert eng.head.kind == "eagle3"  # the default kind, the one that measured better (docs/measured.md)
    assert {k: getattr(eng.spec, k) for k in TREE_SHAPE} == TREE_SHAPE
    s = eval_samples(1)[0]
    outs = {m: session.generate(toy_request(s, 16), m) for m in ("target-only", "head-only", "sequential", "hide")}
    assert outs["hide"].token_ids == outs["sequential"].token_ids == outs["target-only"].token_ids
    assert outs["head-only"].token_ids == outs["target-only"].token_ids
    assert outs["hide"].stats["accepted_per_verify"] > 2  # the head drafts well for its own target


def test_toy_evaluate_scores_target_and_draft(toy, capsys, monkeypatch, tmp_path):
    """`python -m phide.tools.evaluate`: accuracy of the target and the draft alone, per question,
    aggregated from the scorer's verdicts (here a scorer that says motion right, colour wrong)."""
    from phide.toy import world
    from phide.tools.evaluate import main as evaluate_main

    monkeypatch.setenv("PHIDE_TOY_PAIR", str(toy["root"]))
    monkeypatch.setattr(world, "score_answer", lambda scene, question, text: {"motion": True, "colour": False})
    path = tmp_path / "evaluate.csv"
    assert evaluate_main(["--scenes", "3", "--max-new-tokens", "6", "--json", "--csv", str(path), "--allow-dirty"]) == 0
    acc = json.loads(capsys.readouterr().out)
    row = next(csv.DictReader(path.open()))
    assert float(row["target_motion"]) == 1.0 and float(row["target_colour"]) == 0.0 and row["scenes"] == "3"
    assert acc["scenes"] == 3
    assert (acc["target_motion"], acc["target_colour"], acc["target_correct"]) == (1.0, 0.0, 0.0)
    assert (acc["draft_motion"], acc["draft_colour"]) == (1.0, 0.0)
    assert set(acc["by_question"].values()) == {0.0}
    assert evaluate_main([str(toy["root"]), "--scenes", "1", "--max-new-tokens", "4"]) == 0
    assert "held-out scenes" in capsys.readouterr().out


def test_toy_evaluate_bad_directory_is_one_error(tmp_path, capsys):
    from phide.tools.evaluate import main as evaluate_main

    assert evaluate_main([str(tmp_path / "nothing"), "--scenes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("phide: error:")
