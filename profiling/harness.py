"""Shared benchmark plumbing: run context (device, versions, git sha) and CSV appends (from
phide.tools.benchlog, also used by `phide bench`), a wall-clock timer for microbenchmarks, and
the Triton kernel benches' setup (`use_interpreter_without_gpu`, `sync`)."""

from __future__ import annotations

import os
import statistics
import time

from phide.tools.benchlog import ROOT, append_csv, cpu_name, git_sha, run_context  # noqa: F401


def append_rows(path, rows: list[dict], *, allow_dirty: bool = False) -> None:
    """Append a script's rows under their own keys as the schema (every row of a script has the
    same keys, in the same order); `benchlog.append_csv` refuses another file's schema and rows
    from a dirty tree unless `allow_dirty`."""
    if rows:
        append_csv(path, rows, list(rows[0]), allow_dirty=allow_dirty)


def time_us(fn, min_time_s: float = 0.3, min_iters: int = 5) -> float:
    """Median wall time of one call in µs, after two warm-up calls."""
    for _ in range(2):
        fn()
    samples = []
    start = time.perf_counter()
    while len(samples) < min_iters or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def use_interpreter_without_gpu() -> None:
    """Without CUDA, Triton kernels can only run interpreted: set TRITON_INTERPRET=1 (unless the
    caller chose) before triton is imported."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def sync(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so wall times cover it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def add_kernel_bench_args(ap, csv_path) -> None:
    """The options every kernel microbenchmark takes: dtypes, timing budget, CSV destination."""
    from pathlib import Path

    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--csv", type=Path, default=csv_path)
    ap.add_argument("--no-csv", action="store_true")
    ap.add_argument("--allow-dirty", action="store_true", help="write rows from a tree with uncommitted changes")


def kernel_bench_start():
    """(device, interpreted, meta) for a Triton kernel microbenchmark, after printing its header
    line: the device (CUDA when present, else the CPU under the interpreter), whether timings
    are interpreted (and so mean nothing about GPU speed), and the run context for CSV rows."""
    import torch
    import triton

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    interpreted = device.type == "cpu"
    meta = {**run_context(), "triton_version": triton.__version__}
    note = "interpreted (timings not meaningful)" if interpreted else "compiled"
    print(f"# {meta['device']}, torch {torch.__version__}, triton {triton.__version__} {note}, git {meta['git_sha']}")
    return device, interpreted, meta
