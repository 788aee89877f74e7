"""`phide eval`: a pair over a paired data set, rows flushed as they complete, resumable after a
kill -9, bad samples as error rows, summary.json / summary.png from the rows alone."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cli_run import run_cli
from phide.tools.eval_runs import RESULTS, SUMMARY, without_timings

MODES = "auto,target-only,hide"


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """Six held-out toy scenes, one question each, exported as a paired directory."""
    from phide.toy.bundle import EVAL_SEED
    from phide.toy.export import export_scenes

    d = tmp_path_factory.mktemp("toy_eval") / "data"
    assert export_scenes(d, 6, EVAL_SEED) == 6
    return d


def _pair_args():
    from phide.toy.bundle import bundled_dir

    return ["--target", str(bundled_dir() / "target"), "--draft", str(bundled_dir() / "draft")]


def _eval_args(data, out, *extra):
    return ["eval", str(data), *_pair_args(), "--out", str(out), "--modes", MODES, "--max-new-tokens", "24", *extra]


def _rows(out):
    return [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    rc, stdout, err = run_cli(_eval_args(toy_data, out))
    assert rc == 0, err
    return out, stdout


def test_eval_writes_rows_summary_and_png(full_run):
    out, stdout = full_run
    rows = _rows(out)
    assert len(rows) == 6 * 3
    assert {(r["sample"], r["mode"]) for r in rows} == {(str(i), m) for i in range(6) for m in MODES.split(",")}
    assert all(set(r) == {"sample", "mode", "order", "question", "text", "token_ids", "stats"} for r in rows)
    # each sample's modes ran in an order rotated by its index, recorded in its rows
    modes = MODES.split(",")
    for r in rows:
        i = int(r["sample"])
        assert r["order"] == (modes.index(r["mode"]) - i) % len(modes), r
    summary = json.loads((out / SUMMARY).read_text())
    assert [summary["modes"][m]["ran_first"] for m in modes] == [2, 2, 2]
    assert summary["samples"] == 6 and summary["errors"] == 0
    for mode in ("auto", "hide"):  # fp32: every answer is target-only's
        assert summary["modes"][mode]["identical_rate"] == 1.0
    hide = summary["modes"]["hide"]
    assert hide["tau"]["mean"] > 1.0 and "median" in hide["speedup_vs_target_only"]
    depths = hide["acceptance_by_depth"]
    assert depths["1"] >= max(depths.values()) - 1e-9  # deeper levels are accepted no more often
    # no calibration in the tests' PHIDE_HOME: auto runs target-only, and says so
    assert summary["modes"]["auto"]["schedules"] == {"target-only": 6}
    assert summary["modes"]["auto"]["why"]["target-only"].startswith("no calibration of this pair on this machine")
    assert "auto: target-only on 6/6 (no calibration of this pair on this machine" in stdout
    assert summary["modes"]["target-only"]["tau"]["mean"] == 1.0
    # reference answers in the manifest: exact-match accuracy, the same wherever the tokens are
    accuracy = {m: summary["modes"][m]["accuracy"] for m in MODES.split(",")}
    assert len(set(accuracy.values())) == 1 and 0 < accuracy["target-only"] <= 1
    assert summary["modes"]["hide"]["schedules"] == {"hide": 6}
    assert (out / "summary.png").stat().st_size > 1000
    assert "identical" in stdout and "hide" in stdout


def test_kill_9_then_resume_ends_with_the_uninterrupted_summary(full_run, toy_data, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "phide.cli", *_eval_args(toy_data, out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / RESULTS).is_file() and len((out / RESULTS).read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(_rows(out))
    assert 5 <= before < 18
    finished = (out / RESULTS).read_bytes()
    with open(out / RESULTS, "a") as f:  # a row torn mid-write
        f.write('{"sample": "5", "mode": "hi')
    rc, _, err = run_cli(_eval_args(toy_data, out))
    assert rc == 2 and "--resume" in err  # a run directory is never overwritten
    from phide.session import Session

    calls = []
    generate = Session.generate
    monkeypatch.setattr(Session, "generate", lambda self, req, mode, *a, **k: calls.append(
        (req.max_new_tokens, mode)) or generate(self, req, mode, *a, **k))
    rc, _, err = run_cli(_eval_args(toy_data, out, "--resume"))
    assert rc == 0, err
    # the finished rows stay byte for byte; only the missing ones ran (after the three warm-ups)
    assert (out / RESULTS).read_bytes().startswith(finished)
    assert [c for c in calls if c[0] == 24] and len([c for c in calls if c[0] == 24]) == 18 - before
    assert sorted(m for n, m in calls if n != 24) == sorted(MODES.split(","))
    rows = _rows(out)
    keys = [(r["sample"], r["mode"]) for r in rows]
    assert len(keys) == len(set(keys)) == 18
    full = json.loads((full_run[0] / SUMMARY).read_text())
    resumed = json.loads((out / SUMMARY).read_text())
    assert without_timings(resumed) == without_timings(full)
    full_tokens = {(r["sample"], r["mode"]): r["token_ids"] for r in _rows(full_run[0])}
    assert {(r["sample"], r["mode"]): r["token_ids"] for r in rows} == full_tokens


def test_resume_refuses_another_run(full_run, toy_data, tmp_path):
    out = full_run[0]
    rc, _, err = run_cli(["eval", str(toy_data), *_pair_args(), "--out", str(out), "--modes", "target-only",
                       "--max-new-tokens", "24", "--resume"])
    assert rc == 2 and "other modes" in err and err.count("\n") == 1
    rc, _, err = run_cli(_eval_args(toy_data, out, "--resume", "--no-head"))  # what loads is part of the run
    assert rc == 2 and "other no_head" in err
    import shutil

    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    with open(edited / RESULTS, "a") as f:
        f.write("[1, 2]\n")
    rc, _, err = run_cli(_eval_args(toy_data, edited, "--resume"))
    assert rc == 2 and f"{RESULTS}:19 is not a result row" in err


def test_a_bad_sample_is_an_error_row_and_exit_1(toy_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(toy_data, data)
    (data / "frames" / "00002" / "03.png").write_bytes(b"not a png")  # exists (the manifest check passes), unreadable
    out = tmp_path / "run"
    rc, stdout, err = run_cli(["eval", str(data), *_pair_args(), "--out", str(out), "--modes", "target-only",
                            "--max-new-tokens", "8", "--limit", "4"])
    assert rc == 1, err
    rows = _rows(out)
    assert len(rows) == 4
    bad = [r for r in rows if "error" in r]
    assert [r["sample"] for r in bad] == ["2"] and "03.png" in bad[0]["error"]
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["errors"] == 1 and summary["modes"]["target-only"]["errors"] == 1


def test_eval_bad_arguments_exit_2(toy_data, tmp_path):
    rc, _, err = run_cli(["eval", str(toy_data), *_pair_args(), "--out", str(tmp_path / "x"), "--modes", "fast"])
    assert rc == 2 and "unknown mode 'fast'" in err
    rc, _, err = run_cli(["eval", str(tmp_path / "nowhere"), *_pair_args(), "--out", str(tmp_path / "y")])
    assert rc == 2 and err.startswith("phide: error:")


def test_calibrate_n_calibrates_first_and_leaves_those_samples_out(toy_data, tmp_path, monkeypatch):
    """`--calibrate 2`: the planner is calibrated on samples 0 and 1 (saved for this pair and
    machine), the table holds samples 2..5 only, and auto then plans from the calibration."""
    monkeypatch.setenv("PHIDE_HOME", str(tmp_path / "home"))  # the calibration must not outlive the test
    out = tmp_path / "run"
    rc, stdout, err = run_cli(["eval", str(toy_data), *_pair_args(), "--out", str(out), "--modes", "auto,target-only",
                               "--max-new-tokens", "16", "--calibrate", "2"])
    assert rc == 0, err
    assert "calibrating on 2 samples" in err
    assert sorted({r["sample"] for r in _rows(out)}) == ["2", "3", "4", "5"]
    assert list((tmp_path / "home" / "calibration").glob("*.json"))
    auto = json.loads((out / SUMMARY).read_text())["modes"]["auto"]
    assert not any(w.startswith("no calibration") for w in auto["why"].values()), auto["why"]
    rc, _, err = run_cli(["eval", str(toy_data), *_pair_args(), "--out", str(tmp_path / "r2"), "--modes", "auto",
                          "--limit", "3", "--calibrate", "3"])
    assert rc == 2 and "leaves no sample to evaluate" in err


def _row(sample, mode, order, wall, ttft, new, tau, prefill, tokens, question, *, sched=None, reason="forced",
         window=0, verifies=()):
    stats = {"wall_s": wall, "first_token_s": ttft, "new_tokens": new, "accepted_per_verify": tau,
             "verifies": max(1, round(new / tau)), "plan": {"schedule": sched or mode, "reason": reason},
             "phases": {"target_prefill": prefill}, "draft_tokens_in_window": window,
             "accepted_by_verify": [list(v) for v in verifies]}
    return {"sample": sample, "mode": mode, "order": order, "question": question, "text": "", "token_ids": tokens,
            "stats": stats}


def test_summary_statistics_match_hand_computed_values():
    """Every aggregate of `summarize` against values worked out by hand from four fixed rows."""
    from phide.tools.eval_runs import format_summary, summarize

    q0, q1 = "Which way does the circle move?", "How many objects are there?"
    rows = [_row("0", "target-only", 0, 1.0, 0.5, 11, 1.0, 0.4, [1, 2, 3], q0),
            _row("0", "hide", 1, 0.5, 0.25, 11, 5.5, 0.6, [1, 2, 3], q0, reason="forced; x", window=4,
                 verifies=[(2, 3), (1, 3)]),
            _row("1", "target-only", 1, 2.0, 1.0, 5, 1.0, 0.5, [4], q1),
            _row("1", "hide", 0, 0.5, 0.3, 5, 2.5, 0.5, [5], q1, reason="forced; x", window=2, verifies=[(0, 2)])]
    s = summarize(rows, ["target-only", "hide"])
    h, t = s["modes"]["hide"], s["modes"]["target-only"]
    approx = pytest.approx
    assert h["latency_s"] == {"mean": 0.5, "p50": 0.5, "p90": 0.5, "p99": 0.5}
    assert h["ttft_s"] == approx({"mean": 0.275, "p50": 0.275, "p90": 0.295, "p99": 0.2995})
    assert h["tpot_s"] == approx({"mean": 0.0375, "p50": 0.0375, "p90": 0.0475, "p99": 0.04975})
    assert h["tau"] == approx({"mean": 4.0, "p50": 4.0, "p90": 5.2, "p99": 5.47})  # per request, not pooled
    assert h["tokens_per_s"] == 16.0
    assert h["speedup_vs_target_only"] == approx({"median": 3.0, "p10": 2.2, "worst": 2.0})
    assert h["identical_rate"] == 0.5 and t["identical_rate"] == 1.0
    assert h["draft_tokens_in_window"] == 3.0 and h["prefill_slowdown"] == 1.25
    assert h["acceptance_by_depth"] == {"1": 0.6667, "2": 0.3333, "3": 0.0}
    assert (h["ran_first"], t["ran_first"]) == (1, 1)
    assert h["schedules"] == {"hide": 2} and h["why"] == {"hide": "forced; x"}
    assert h["by_question_type"] == {"How many objects": {"rows": 1, "tau_mean": 2.5, "speedup_median": 4.0},
                                     "Which way does": {"rows": 1, "tau_mean": 5.5, "speedup_median": 2.0}}
    assert t["tau"]["mean"] == 1.0 and "speedup_vs_target_only" not in t
    text = format_summary(s)
    assert "hide: hide on 2/2; ran first on 1; draft tokens in the window 3.0, target prefill 1.25x its time alone" in text
    hide_line = next(line for line in text.splitlines() if line.startswith("hide "))
    assert hide_line.split()[2:5] == ["500.0", "500.0", "500.0"] and "3.00x" in hide_line and "2.20x" in hide_line


def test_a_missing_or_bad_file_is_listed_up_front_and_becomes_error_rows(toy_data, tmp_path):
    """Six samples, one naming an events file that does not exist and one whose events are bad:
    both are listed once on stderr before anything runs, each gives an error row, the other four
    run, exit 1."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(toy_data, data)
    lines = (data / "samples.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec["events"] = "events/gone.npz"
    lines[1] = json.dumps(rec)
    (data / "samples.jsonl").write_text("\n".join(lines) + "\n")
    bad = json.loads(lines[4])["events"]
    (data / bad).write_bytes(b"not an npz")
    out = tmp_path / "run"
    rc, stdout, err = run_cli(["eval", str(data), *_pair_args(), "--out", str(out), "--modes", "target-only",
                               "--max-new-tokens", "4"])
    assert rc == 1, err
    assert "2 of 6 samples refused" in err and "events file 'events/gone.npz' does not exist" in err
    assert err.index("samples refused") < err.index("phide: eval: wrote")
    rows = {r["sample"]: r for r in _rows(out)}
    assert sorted(rows) == [str(i) for i in range(6)]
    assert [s for s, r in sorted(rows.items()) if "error" in r] == ["1", "4"]
    assert "not a readable .npz file" in rows["4"]["error"]
    assert json.loads((out / SUMMARY).read_text())["errors"] == 2


def test_ray_at_an_address_with_no_cluster_is_one_error_within_its_timeout(toy_data, tmp_path):
    """`--ray HOST:PORT` where nothing listens: one error line well within the stated 30 s, and no
    run directory is made (nothing to resume)."""
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    t0 = time.perf_counter()
    rc, _, err = run_cli(_eval_args(toy_data, out, "--ray", f"127.0.0.1:{port}"))
    assert rc == 2 and time.perf_counter() - t0 < 30
    assert err.count("phide: error:") == 1 and f"--ray 127.0.0.1:{port}: no Ray cluster answers there within 30 s" in err
    assert not out.exists()
    rc, _, err = run_cli(_eval_args(toy_data, out, "--ray", "nonsense"))
    assert rc == 2 and "expected auto, HOST:PORT or ray://HOST:PORT" in err


def test_a_malformed_run_json_on_resume_is_one_error_line(full_run, toy_data, tmp_path):
    import shutil

    edited = tmp_path / "edited"
    shutil.copytree(full_run[0], edited)
    (edited / "run.json").write_text("{not json")
    rc, _, err = run_cli(_eval_args(toy_data, edited, "--resume"))
    assert rc == 2 and err.count("phide: error:") == 1 and "run.json" in err and "Traceback" not in err


def test_ray_without_ray_installed_is_one_error_line(toy_data, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    rc, _, err = run_cli(_eval_args(toy_data, tmp_path / "run", "--ray", "auto"))
    assert rc == 2 and "--ray needs Ray (pip install 'phide[scale]')" in err and err.count("phide: error:") == 1


def test_a_repeated_row_is_written_once(tmp_path):
    """A retried Ray task's repeat of a finished item: the writer drops it (the file holds each
    (sample, mode) once), and says it did (False)."""
    from phide.tools.eval_runs import RowWriter

    path = tmp_path / RESULTS
    row = {"sample": "0", "mode": "hide", "token_ids": [1]}
    with RowWriter(path, set()) as write:
        assert write(row) is True
        assert write({**row, "token_ids": [2]}) is False
        assert write({**row, "mode": "auto"}) is True
    assert [json.loads(line) for line in path.read_text().splitlines()] == [row, {**row, "mode": "auto"}]


def test_worker_resources_per_cluster():
    from phide.errors import PhideError
    from phide.tools.eval_ray import worker_resources

    assert worker_resources({"GPU": 4.0, "CPU": 64.0}, None) == (4, {"num_gpus": 1, "num_cpus": 1}, 0)
    assert worker_resources({"GPU": 4.0}, 2) == (2, {"num_gpus": 1, "num_cpus": 1}, 0)
    with pytest.raises(PhideError, match="one per worker"):
        worker_resources({"GPU": 2.0}, 3)
    n, res, threads = worker_resources({"CPU": 2.0}, 2)  # a 2-core laptop: a third each, one share free
    assert n == 2 and res["num_cpus"] == pytest.approx(2 / 3) and threads == 1
    assert worker_resources({"CPU": 16.0}, None) == (15, {"num_cpus": 1.0}, 1)
