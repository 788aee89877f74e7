"""Microbenchmarks of the Triton verification kernels against their torch twins: Gumbel choices
(greedy and sampled) and the KV commit. One run, one table, rows appended to
profiling/results/verify_kernels.csv with the device, versions and git sha.

    python profiling/bench_verify_kernels.py                    # CUDA if present, else CPU
    python profiling/bench_verify_kernels.py --ops kv_commit --L 32 --H 8 --D 128

Columns: µs per call (median), effective GB/s (bytes the op must read + write / time), and the
kernel's error vs the twin (0 = bit-identical; both must agree exactly). On a CPU the Triton
kernels only run through the interpreter (TRITON_INTERPRET=1, set here when there is no GPU):
those timings are marked `interpreted` and mean nothing about GPU speed; they still check that
the kernel and the twin agree.
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

CSV_PATH = ROOT / "profiling" / "results" / "verify_kernels.csv"


def bench_gumbel(device, N: int, V: int, dtype, temperature: float, min_time: float):
    from phide.ops.reference.hash_noise import gumbel_choices_torch
    from phide.triton_kernels.gumbel_verify import gumbel_choices_triton

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(N, V, generator=g) * 3).to(device=device, dtype=dtype)
    positions = torch.arange(100, 100 + N, device=device)
    out = {}
    for name, fn in (("torch", gumbel_choices_torch), ("triton", gumbel_choices_triton)):
        def call():
            fn(logits, temperature, 7, positions)
            sync(device)
        out[name] = time_us(call, min_time_s=min_time, min_iters=3)
    ref = gumbel_choices_torch(logits, temperature, 7, positions)
    got = gumbel_choices_triton(logits, temperature, 7, positions)
    mismatches = int((ref != got).sum())
    nbytes = logits.numel() * logits.element_size()
    return out, nbytes, mismatches


def bench_kv_commit(device, L: int, B: int, H: int, S: int, D: int, path: int, dtype, min_time: float):
    from phide.ops.reference.kv_commit import commit_accepted_path
    from phide.triton_kernels.kv_commit import kv_commit_triton

    g = torch.Generator().manual_seed(0)
    k0 = torch.randn(L, B, H, S, D, generator=g).to(device=device, dtype=dtype)
    v0 = torch.randn(L, B, H, S, D, generator=g).to(device=device, dtype=dtype)
    base = torch.full((B,), S // 2, dtype=torch.int64, device=device)
    nodes = torch.tensor([[0] + list(range(2, 2 * path, 2))] * B, dtype=torch.int64, device=device)
    alen = torch.full((B,), path - 1, dtype=torch.int64, device=device)
    out = {}
    for name, fn in (("torch", commit_accepted_path), ("triton", kv_commit_triton)):
        k, v = k0.clone(), v0.clone()

        def call():
            fn(k, v, base, nodes, alen)
            sync(device)
        out[name] = time_us(call, min_time_s=min_time, min_iters=3)
    kr, vr, kt, vt = k0.clone(), v0.clone(), k0.clone(), v0.clone()
    commit_accepted_path(kr, vr, base, nodes, alen)
    kv_commit_triton(kt, vt, base, nodes, alen)
    err = float(max((kr.float() - kt.float()).abs().max(), (vr.float() - vt.float()).abs().max()))
    nbytes = 2 * 2 * L * B * H * path * D * k0.element_size()  # read + write of K and V rows
    return out, nbytes, err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ops", nargs="+", default=["gumbel", "kv_commit"], choices=["gumbel", "kv_commit"])
    ap.add_argument("--N", type=int, default=13, help="tree nodes (gumbel)")
    ap.add_argument("--V", type=int, nargs="+", default=[32064], help="vocabulary sizes (gumbel)")
    ap.add_argument("--L", type=int, default=4)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--H", type=int, default=2)
    ap.add_argument("--S", type=int, default=256)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--path", type=int, default=8, help="accepted path length incl. the root (kv_commit)")
    add_kernel_bench_args(ap, CSV_PATH)
    args = ap.parse_args()

    device, interpreted, meta = kernel_bench_start()
    print(f"{'op':<22} {'dtype':<9} {'torch µs':>10} {'triton µs':>10} {'triton GB/s':>12} {'error':>8}")
    rows = []
    for dt in args.dtypes:
        dtype = getattr(torch, dt)
        cases = []
        if "gumbel" in args.ops:
            for V in args.V:
                for T in (0.0, 1.0):
                    res = bench_gumbel(device, args.N, V, dtype, T, args.min_time)
                    cases.append((f"gumbel N{args.N} V{V} T{T:g}", res))
        if "kv_commit" in args.ops:
            res = bench_kv_commit(device, args.L, args.B, args.H, args.S, args.D, args.path, dtype, args.min_time)
            cases.append((f"kv_commit L{args.L} P{args.path}", res))
        for name, (us, nbytes, err) in cases:
            gbs = nbytes / (us["triton"] * 1e-6) / 1e9
            print(f"{name:<22} {dt:<9} {us['torch']:>10.1f} {us['triton']:>10.1f} {gbs:>12.3f} {err:>8}")
            rows.append({"op": name, "dtype": dt, "torch_us": round(us["torch"], 2), "triton_us": round(us["triton"], 2),
                         "triton_gbps": round(gbs, 4), "error_vs_twin": err, "interpreted": interpreted, **meta})
            if err:
                sys.exit(f"{name} {dt}: the Triton kernel differs from its torch twin ({err})")
    if not args.no_csv:
        append_rows(args.csv, rows, allow_dirty=args.allow_dirty)
        print(f"appended {len(rows)} rows to {args.csv}")


if __name__ == "__main__":
    main()
