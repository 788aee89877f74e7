"""Microbenchmark of the greedy tree acceptance walk: torch twin vs the compiled C++ op, on CPU.

    python profiling/bench_tree_accept.py                      # B in {1, 8, 64}, N=16, V=32000
    python profiling/bench_tree_accept.py --B 1 4 --N 16 64 --backends cpp

Prints an aligned table (median µs per call, speedup over the twin) and appends one row per
measurement to profiling/results/tree_accept.csv:
    op, backend, B, N, V, us_per_call, device, torch_version, git_sha, timestamp
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere against this checkout
sys.path.insert(0, str(ROOT / "profiling"))

from harness import append_csv, run_context, time_us  # noqa: E402

from phide._ext import load_extension  # noqa: E402
from phide.ops.reference.accept import accept_path_torch  # noqa: E402

CSV_PATH = ROOT / "profiling" / "results" / "tree_accept.csv"


def make_inputs(B: int, N: int, V: int, seed: int = 0):
    """EAGLE-like trees: 4 children at the root, then chains and pairs; half the drafts are the
    target's choice."""
    g = torch.Generator().manual_seed(seed)
    parents = torch.full((B, N), -1, dtype=torch.int64)
    for i in range(1, N):
        parents[:, i] = 0 if i <= 4 else max(0, i - 4)
    tokens = torch.randint(0, V, (B, N), generator=g)
    choice = torch.randint(0, V, (B, N), generator=g)
    for i in range(1, N):  # half the drafts are what the target wants
        if i % 2:
            choice[:, int(parents[0, i])] = tokens[:, i]
    return tokens, parents, choice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--B", type=int, nargs="+", default=[1, 8, 64], help="batch sizes")
    ap.add_argument("--N", type=int, nargs="+", default=[16], help="tree sizes (nodes)")
    ap.add_argument("--V", type=int, nargs="+", default=[32000], help="vocabulary sizes")
    ap.add_argument("--backends", nargs="+", default=["torch", "cpp"], choices=["torch", "cpp"])
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per measurement")
    ap.add_argument("--min-iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--csv", type=Path, default=CSV_PATH, help="CSV file to append to")
    ap.add_argument("--no-csv", action="store_true", help="print only")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if "cpp" in args.backends and not load_extension():
        sys.exit("phide._C is not built: pip install --no-build-isolation -e .  (or --backends torch)")

    meta = run_context()
    device = meta["device"]
    rows = []
    header = f"{'op':<11} {'B':>4} {'N':>4} {'V':>7}  " + "".join(
        f"{b + ' µs':>12}" for b in args.backends) + ("  speedup" if len(args.backends) == 2 else "")
    print(f"# {device}, torch {torch.__version__}, git {meta['git_sha']}")
    print(header)
    print("-" * len(header))
    op = "greedy"
    for V in args.V:
        for N in args.N:
            for B in args.B:
                tokens, parents, choice = make_inputs(B, N, V)
                fns = {"torch": lambda: accept_path_torch(tokens, parents, choice),
                       "cpp": lambda: torch.ops.phide.accept_path(tokens, parents, choice)}
                us = {}
                for backend in args.backends:
                    us[backend] = time_us(fns[backend], args.min_time, args.min_iters)
                    rows.append(dict(op=f"tree_accept_{op}", backend=backend, B=B, N=N, V=V,
                                     us_per_call=f"{us[backend]:.2f}", **meta))
                line = f"{op:<11} {B:>4} {N:>4} {V:>7}  " + "".join(
                    f"{us[b]:>12.1f}" for b in args.backends)
                if len(args.backends) == 2:
                    line += f"  {us['torch'] / us['cpp']:>6.1f}x"
                print(line, flush=True)

    if not args.no_csv:
        append_csv(args.csv, rows)
        print(f"appended {len(rows)} rows to {os.path.relpath(args.csv)}")


if __name__ == "__main__":
    main()
