"""Microbenchmark of the draft tree step top-k: the Triton kernel against its torch twin. One
run, one table, rows appended to profiling/results/tree_topk.csv with the device, versions and
git sha.

    python profiling/bench_tree_topk.py                        # CUDA if present, else CPU
    python profiling/bench_tree_topk.py --B 1 8 --F 4 8 --V 32064 128256 --k 4 8

Columns: µs per call (median), effective GB/s of the kernel (the logits it must read once plus
what it writes, / time), whether the tokens are identical to the twin's (they must be) and the
max abs error of the cumulative log-probs. On a CPU the kernel only runs through the interpreter
(TRITON_INTERPRET=1, set here when there is no GPU): those timings are marked `interpreted` and
mean nothing about GPU speed; they still check that kernel and twin agree.
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

CSV_PATH = ROOT / "profiling" / "results" / "tree_topk.csv"
SCORE_TOLERANCE = 1e-4  # selection is exact; scores differ by the sum-of-exp rounding only


def bench_case(device, dtype, B: int, F: int, V: int, k: int, min_time: float):
    from phide.ops.reference.tree_topk import tree_topk_torch
    from phide.triton_kernels.tree_topk import tree_topk_triton

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(B, F, V, generator=g) * 3).to(device=device, dtype=dtype)
    parents = (-torch.rand(B, F, generator=g) * 5).to(device)
    out = {}
    for name, fn in (("torch", tree_topk_torch), ("triton", tree_topk_triton)):
        def call():
            fn(logits, parents, k)
            sync(device)
        out[name] = time_us(call, min_time_s=min_time, min_iters=3)
    ref_tok, ref_score, _ = tree_topk_torch(logits, parents, k)
    tok, score, _ = tree_topk_triton(logits, parents, k)
    same_tokens = bool(torch.equal(tok, ref_tok))
    err = float((score - ref_score).abs().max())
    nbytes = logits.numel() * logits.element_size() + B * F * (k * 12 + 8)
    return out, nbytes, same_tokens, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--B", type=int, nargs="+", default=[1], help="requests")
    ap.add_argument("--F", type=int, nargs="+", default=[4], help="frontier nodes per request")
    ap.add_argument("--V", type=int, nargs="+", default=[32064], help="vocabulary sizes")
    ap.add_argument("--k", type=int, nargs="+", default=[4], help="children per node")
    add_kernel_bench_args(ap, CSV_PATH)
    args = ap.parse_args()

    device, interpreted, meta = kernel_bench_start()
    print(f"{'case':<24} {'dtype':<9} {'torch µs':>10} {'triton µs':>10} {'triton GB/s':>12} {'tokens':>7} {'max err':>9}")
    rows, failed = [], []
    for dt in args.dtypes:
        dtype = getattr(torch, dt)
        for B in args.B:
            for F in args.F:
                for V in args.V:
                    for k in args.k:
                        us, nbytes, same, err = bench_case(device, dtype, B, F, V, k, args.min_time)
                        name = f"B{B} F{F} V{V} k{k}"
                        gbs = nbytes / (us["triton"] * 1e-6) / 1e9
                        print(f"{name:<24} {dt:<9} {us['torch']:>10.1f} {us['triton']:>10.1f} {gbs:>12.3f} "
                              f"{'same' if same else 'DIFFER':>7} {err:>9.2e}")
                        rows.append({"op": "tree_topk", "case": name, "dtype": dt,
                                     "torch_us": round(us["torch"], 2), "triton_us": round(us["triton"], 2),
                                     "triton_gbps": round(gbs, 4), "tokens_identical": same,
                                     "max_score_err_vs_twin": err, "interpreted": interpreted, **meta})
                        if not same or not err <= SCORE_TOLERANCE:
                            failed.append(f"{name} {dt}: tokens {'same' if same else 'differ'}, error {err:.3g}")
    if not args.no_csv:
        append_rows(args.csv, rows, allow_dirty=args.allow_dirty)
        print(f"appended {len(rows)} rows to {args.csv}")
    if failed:
        sys.exit("the Triton kernel differs from its torch twin: " + "; ".join(failed))


if __name__ == "__main__":
    main()
