"""`phide eval --ray` on a local Ray cluster (ray.init(num_cpus=2)): two workers give the serial
run's rows; a worker killed mid-run (SIGKILL of its process) still ends with every row exactly
once. Slow (a cluster and two engines start): marked `ray`, run by .ci/run."""

import json
import os
import signal
import threading
import time

import pytest

from cli_run import run_cli
from phide.tools.eval_runs import RESULTS

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray
MODES = "target-only,hide,head-only"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from phide.toy.bundle import EVAL_SEED
    from phide.toy.export import export_scenes

    d = tmp_path_factory.mktemp("ray_eval") / "data"
    export_scenes(d, 6, EVAL_SEED)
    return d


def _args(data, out, *extra):
    from phide.toy.bundle import bundled_dir

    pair = bundled_dir()
    return ["eval", str(data), "--target", str(pair / "target"), "--draft", str(pair / "draft"), "--out", str(out),
            "--modes", MODES, "--max-new-tokens", "16", "--json", *extra]


def _tokens(out):
    rows = [json.loads(line) for line in (out / RESULTS).read_text().splitlines()]
    keys = [(r["sample"], r["mode"]) for r in rows]
    assert len(keys) == len(set(keys)), "a row was written twice"
    return {(r["sample"], r["mode"]): r["token_ids"] for r in rows}


@pytest.fixture(scope="module")
def serial(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "run"
    rc, _, err = run_cli(_args(data, out))
    assert rc == 0, err
    return _tokens(out)


def _worker_pids():
    """PIDs of the pool's actor processes (Ray titles them `ray::_EvalWorker...`), from /proc."""
    from pathlib import Path

    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"_EvalWorker" in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return pids


def test_two_workers_give_the_serial_rows(cluster, data, serial, tmp_path):
    out = tmp_path / "ray"
    rc, stdout, err = run_cli(_args(data, out, "--ray", "auto", "--workers", "2"))
    assert rc == 0, err
    assert _tokens(out) == serial
    assert json.loads(stdout)["summary"]["modes"]["hide"]["identical_rate"] == 1.0


def test_a_worker_killed_mid_run_loses_and_repeats_nothing(cluster, data, serial, tmp_path):
    out = tmp_path / "ray_kill"
    killed = []

    def kill_one_worker():  # once rows are flowing, SIGKILL one worker's process
        deadline = time.time() + 300
        while time.time() < deadline:
            rows = (out / RESULTS).read_text().count("\n") if (out / RESULTS).is_file() else 0
            pids = _worker_pids()
            if rows >= 3 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    rc, _, err = run_cli(_args(data, out, "--ray", "auto", "--workers", "2"))
    killer.join(timeout=5)
    assert killed, "no worker was killed (the run ended first?)"
    assert rc == 0, err
    assert _tokens(out) == serial  # every (sample, mode) exactly once, the serial run's tokens
