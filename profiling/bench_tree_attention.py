"""Microbenchmark of tree-verify attention: the Triton kernel against its torch twin (SDPA with a
dense mask). One run, one table, rows appended to profiling/results/tree_attention.csv with the
device, versions and git sha.

    python profiling/bench_tree_attention.py                  # small defaults: CUDA if present, else CPU
    python profiling/bench_tree_attention.py --prefix 2048 8192 --B 1 4 --Hq 32 --Hkv 8 --D 128 --N 24 64

Columns: µs per call (median), effective GB/s of the kernel (bytes it must move: the prefix K/V
read once per (request, KV head), the tree's K/V rows, q, the output; / time), and the kernel's
max abs error vs the twin, checked against a per-dtype tolerance. On a CPU the kernel only runs
through the interpreter (TRITON_INTERPRET=1, set here when there is no GPU): those timings are
marked `interpreted` and mean nothing about GPU speed; they still check kernel and twin agree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "profiling"))

import torch  # noqa: E402
from harness import (add_kernel_bench_args, append_rows, kernel_bench_start, sync, time_us,  # noqa: E402
                     use_interpreter_without_gpu)

use_interpreter_without_gpu()

CSV_PATH = ROOT / "profiling" / "results" / "tree_attention.csv"
TOLERANCE = {"float32": 5e-5, "float16": 5e-3, "bfloat16": 5e-2}  # max abs error vs the twin


def make_inputs(device, dtype, B: int, Hq: int, Hkv: int, N: int, D: int, prefix: int, seed: int = 0):
    """Random q/k/v, each request's prefix followed by a random tree of N nodes (one layer)."""
    from phide.ops.reference.tree_attention import ancestor_bits

    g = torch.Generator().manual_seed(seed)
    S = prefix + N
    parents = [[-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, N)] for _ in range(B)]
    cast = dict(device=device, dtype=dtype)
    return dict(
        q=torch.randn(B, Hq, N, D, generator=g).to(**cast),
        k_cache=torch.randn(B, Hkv, S, D, generator=g).to(**cast),
        v_cache=torch.randn(B, Hkv, S, D, generator=g).to(**cast),
        prefix_len=torch.full((B,), prefix, dtype=torch.int64, device=device),
        tree_start=torch.full((B,), prefix, dtype=torch.int64, device=device),
        ancestors=torch.tensor([ancestor_bits(p) for p in parents], dtype=torch.int64, device=device),
        n_nodes=torch.full((B,), N, dtype=torch.int64, device=device),
    )


def bench_case(device, dtype, B, Hq, Hkv, N, D, prefix, min_time):
    from phide.ops.reference.tree_attention import tree_attention_torch
    from phide.triton_kernels.tree_attention import tree_attention_triton

    args = make_inputs(device, dtype, B, Hq, Hkv, N, D, prefix)
    out = {}
    for name, fn in (("torch", tree_attention_torch), ("triton", tree_attention_triton)):
        def call():
            fn(**args)
            sync(device)
        out[name] = time_us(call, min_time_s=min_time, min_iters=3)
    err = float((tree_attention_triton(**args).float() - tree_attention_torch(**args).float()).abs().max())
    elt = args["q"].element_size()
    kv_rows = B * Hkv * (prefix + N)
    nbytes = 2 * kv_rows * D * elt + 2 * B * Hq * N * D * elt + args["ancestors"].numel() * 8
    return out, nbytes, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--B", type=int, nargs="+", default=[1], help="requests")
    ap.add_argument("--Hq", type=int, default=8, help="query heads")
    ap.add_argument("--Hkv", type=int, default=2, help="KV heads")
    ap.add_argument("--N", type=int, nargs="+", default=[13], help="tree nodes (<= 64)")
    ap.add_argument("--D", type=int, default=80, help="head dim")
    ap.add_argument("--prefix", type=int, nargs="+", default=[96], help="committed prefix rows")
    add_kernel_bench_args(ap, CSV_PATH)
    args = ap.parse_args()

    device, interpreted, meta = kernel_bench_start()
    print(f"{'case':<34} {'dtype':<9} {'torch µs':>10} {'triton µs':>10} {'triton GB/s':>12} {'max err':>9}")
    rows, failed = [], []
    for dt in args.dtypes:
        dtype = getattr(torch, dt)
        for B in args.B:
            for N in args.N:
                for prefix in args.prefix:
                    us, nbytes, err = bench_case(device, dtype, B, args.Hq, args.Hkv, N, args.D, prefix, args.min_time)
                    name = f"B{B} H{args.Hq}/{args.Hkv} N{N} D{args.D} P{prefix}"
                    gbs = nbytes / (us["triton"] * 1e-6) / 1e9
                    print(f"{name:<34} {dt:<9} {us['torch']:>10.1f} {us['triton']:>10.1f} {gbs:>12.3f} {err:>9.2e}")
                    rows.append({"op": "tree_attention", "case": name, "dtype": dt,
                                 "torch_us": round(us["torch"], 2), "triton_us": round(us["triton"], 2),
                                 "triton_gbps": round(gbs, 4), "max_err_vs_twin": err,
                                 "interpreted": interpreted, **meta})
                    if not err <= TOLERANCE[dt]:
                        failed.append(f"{name} {dt}: error {err:.3g} > {TOLERANCE[dt]}")
    if not args.no_csv:
        append_rows(args.csv, rows, allow_dirty=args.allow_dirty)
        print(f"appended {len(rows)} rows to {args.csv}")
    if failed:
        sys.exit("the Triton kernel differs from its torch twin: " + "; ".join(failed))


if __name__ == "__main__":
    main()
