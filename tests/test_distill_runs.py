"""`phide distill` as a long run: killed with SIGKILL and resumed it ends with the uninterrupted run's
head (bitwise, CPU, same seed) and every answer once; under torchrun (2 processes, gloo) each rank
answers a disjoint half and the head equals one process's at the same global batch; offline
features train the same head as online ones; bad runs are one clear error."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_run import run_cli
from phide.toy.bundle import export_distill_data
from phide.toy.pair import write_toy_pair

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
STEPS, EVERY = 24, 6


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-runs")
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        write_toy_pair(root, size="test", seed=0)
    n = export_distill_data(root / "data", 16)
    return {"root": root, "samples": n}


def _args(toy, out, *extra):
    r = toy["root"]
    return ["distill", "--target", str(r / "target"), "--data", str(r / "data"), "--out", str(out),
            "--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--batch", "4", "--max-new-tokens", "6",
            "--held-out", "2", "--ttt-steps", "2", "--seed", "3", "--json", *extra]


def _popen(argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "phide", *argv], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _kill_when(proc, ready, timeout=240):
    t0 = time.time()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.communicate()[1][-2000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail("the run never reached the point to kill it at")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _answer_rows(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "answers.jsonl").read_text().splitlines()]


def _final_weights(out: Path) -> dict:
    """The fp32 master weights of the last checkpoint (what the saved bf16 head was made from)."""
    last = sorted((out / "checkpoints" / "head").glob("step-*"))[-1]
    assert last.name == f"step-{STEPS:07d}"
    return load_file(str(last / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(toy):
    out = toy["root"] / "whole"
    rc, stdout, err = run_cli(_args(toy, out))
    assert rc == 0, err
    return {"out": out, "report": json.loads(stdout)}


def test_killed_twice_and_resumed_it_ends_with_the_uninterrupted_head(toy, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    # 1: killed while the target answers (some answers written, maybe a torn last line)
    p = _popen(_args(toy, out))
    _kill_when(p, lambda: (out / "answers.jsonl").is_file()
               and (out / "answers.jsonl").read_text().count("\n") >= toy["samples"] // 3)
    with (out / "answers.jsonl").open("a") as f:
        f.write('{"sample": "torn", "tok')  # a row cut by the kill
    answered_before = (out / "answers.jsonl").read_text().count("\n")
    assert 0 < answered_before < toy["samples"]
    # 2: resumed, killed while training (after a checkpoint, before the end)
    p = _popen(_args(toy, out, "--resume"))
    _kill_when(p, lambda: (out / "checkpoints" / "head" / f"step-{2 * EVERY:07d}" / "state.json").is_file())
    assert not (out / "checkpoints" / "head" / f"step-{STEPS:07d}").exists()
    # 3: resumed to the end
    rc, stdout, err = run_cli(_args(toy, out, "--resume"))
    assert rc == 0, err
    rows = _answer_rows(out)
    assert sorted(r["sample"] for r in rows) == sorted(r["sample"] for r in _answer_rows(uninterrupted["out"]))
    assert len(rows) == toy["samples"] == len({r["sample"] for r in rows})  # every sample once
    assert {r["sample"]: r["token_ids"] for r in rows} == {r["sample"]: r["token_ids"]
                                                          for r in _answer_rows(uninterrupted["out"])}
    a, b = _final_weights(out), _final_weights(uninterrupted["out"])
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise
    assert (out / "model.safetensors").read_bytes() == (uninterrupted["out"] / "model.safetensors").read_bytes()
    log = (out / "train_log.csv").read_text().splitlines()
    steps = [int(ln.split(",")[0]) for ln in log[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # no step logged twice after the resume


def test_torchrun_two_ranks_answer_disjoint_halves_and_train_the_one_process_head(toy, uninterrupted, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun is not installed beside this python")
    out = tmp_path / "ddp"
    p = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "phide", *_args(toy, out)],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = _answer_rows(out)
    assert len(rows) == toy["samples"] == len({r["sample"] for r in rows})
    order = {r["sample"]: i for i, r in enumerate(_answer_rows(uninterrupted["out"]))}
    by_rank = {rank: {order[r["sample"]] for r in rows if r["rank"] == rank} for rank in (0, 1)}
    assert by_rank[0] == set(range(0, toy["samples"], 2)) and by_rank[1] == set(range(1, toy["samples"], 2))
    assert json.loads(p.stdout)["ranks"] == 2
    a, b = _final_weights(out), _final_weights(uninterrupted["out"])
    for k in a:  # fp32; the ranks' padded shapes and thread counts change only the rounding
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    moved = sum(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    assert moved < 1e-3


def test_offline_features_train_the_online_head(toy, uninterrupted, tmp_path):
    """--features writes each sample's tensors once (bf16) and trains from them: the head is the
    online one up to bf16 rounding of its inputs; a second run reuses the files."""
    out, feats = tmp_path / "offline", tmp_path / "features"
    rc, stdout, err = run_cli(_args(toy, out, "--features", str(feats)))
    assert rc == 0, err
    files = sorted(feats.rglob("*.safetensors"))
    assert len(files) == toy["samples"]
    a, b = _final_weights(out), _final_weights(uninterrupted["out"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0.05, atol=0.02, msg=k)
    mtimes = [f.stat().st_mtime_ns for f in files]
    rc, _, err = run_cli(_args(toy, tmp_path / "again", "--features", str(feats)))
    assert rc == 0, err
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # read back, not rewritten


def test_bad_runs_are_one_clear_error(toy, uninterrupted, tmp_path):
    def one_error(argv, needle):
        rc, _, err = run_cli(argv)
        lines = [ln for ln in err.splitlines() if ln.startswith("phide: error")]
        assert rc == 2 and len(lines) == 1 and needle in lines[0], err

    one_error(_args(toy, uninterrupted["out"]), "already holds a distillation")
    one_error(_args(toy, uninterrupted["out"], "--resume", "--lr", "0.5"), "was run with other lr")
    one_error(_args(toy, tmp_path / "x", "--init-head", str(tmp_path / "nothing")), "head directory not found")
    one_error(["distill", "--target", str(toy["root"] / "target"), "--draft", str(toy["root"] / "draft"),
               "--prompts", "p.txt", "--out", str(tmp_path / "y")], "needs --data")
    feats = tmp_path / "feats3"
    assert run_cli(_args(toy, tmp_path / "e3", "--features", str(feats), "--steps", "1"))[0] == 0
    one_error(_args(toy, tmp_path / "e2", "--features", str(feats), "--head-kind", "eagle2"), "holds other features")
    one = tmp_path / "one"
    one.mkdir()
    first = (toy["root"] / "data" / "samples.jsonl").read_text().splitlines()[0]
    (one / "samples.jsonl").write_text(first.replace('"frames/', f'"{toy["root"] / "data"}/frames/')
                                       .replace('"events/', f'"{toy["root"] / "data"}/events/') + "\n")
    one_error(["distill", "--target", str(toy["root"] / "target"), "--data", str(one), "--out", str(tmp_path / "o")],
              "needs at least 2")
    assert not (tmp_path / "o").exists()  # nothing made for a run that cannot start


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_distill_on_a_gpu_trains_in_bf16_autocast(toy, tmp_path):
    """On a GPU: the frozen pair in bf16, the head's fp32 master weights under bf16 autocast,
    online and offline features; the saved head loads and drafts (the answers' identity in bf16
    is reported: near-ties may differ, the numerics table in docs/gpu.md)."""
    for extra in ([], ["--features", str(tmp_path / "f")]):
        out = tmp_path / f"gpu{len(extra)}"
        rc, stdout, err = run_cli(_args(toy, out, "--device", "cuda", *extra))
        assert rc == 0, err
        rep = json.loads(stdout)
        rows = (out / "train_log.csv").read_text().splitlines()
        first, last = (float(r.split(",")[4]) for r in (rows[1], rows[-1]))
        assert last < first, (first, last)
        print(f"gpu distill {extra or 'online'}: loss {first:.3f} -> {last:.3f}, val_identical {rep['val_identical']}, "
              f"val_tau {rep['val_tau']:.2f}")
