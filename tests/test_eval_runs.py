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
    assert all(set(r) == {"sample", "mode", "question", "text", "token_ids", "stats"} for r in rows)
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["samples"] == 6 and summary["errors"] == 0
    for mode in ("auto", "hide"):  # fp32: every answer is target-only's
        assert summary["modes"][mode]["identical_rate"] == 1.0
    hide = summary["modes"]["hide"]
    assert hide["tau"] > 1.0 and "median" in hide["speedup_vs_target_only"]
    depths = hide["acceptance_by_depth"]
    assert depths["1"] >= max(depths.values()) - 1e-9  # deeper levels are accepted no more often
    # no calibration in the tests' PHIDE_HOME: auto runs target-only, and says so
    assert summary["modes"]["auto"]["schedules"] == {"target-only": 6}
    assert summary["modes"]["target-only"]["tau"] == 1.0
    # reference answers in the manifest: exact-match accuracy, the same wherever the tokens are
    accuracy = {m: summary["modes"][m]["accuracy"] for m in MODES.split(",")}
    assert len(set(accuracy.values())) == 1 and 0 < accuracy["target-only"] <= 1
    assert summary["modes"]["hide"]["schedules"] == {"hide": 6}
    assert (out / "summary.png").stat().st_size > 1000
    assert "identical" in stdout and "hide" in stdout


def test_kill_9_then_resume_ends_with_the_uninterrupted_summary(full_run, toy_data, tmp_path):
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
    with open(out / RESULTS, "a") as f:  # a row torn mid-write
        f.write('{"sample": "5", "mode": "hi')
    rc, _, err = run_cli(_eval_args(toy_data, out))
    assert rc == 2 and "--resume" in err  # a run directory is never overwritten
    rc, _, err = run_cli(_eval_args(toy_data, out, "--resume"))
    assert rc == 0, err
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
