"""How often each schedule's greedy answer is token-for-token the target-only answer, per dtype.

    python profiling/identity.py [--scenes 32] [--dtype bfloat16] [--device cuda] [--csv FILE]

In fp32 every schedule's tokens are identical to target-only's (the tests check it bitwise).
In bf16 / fp16 on a GPU they are identical up to near-ties: a verify of a tree computes the same
rows as a decode step with GEMMs of another shape (cuBLAS picks other tiles and split-K), so a
logit can differ in its last bit and flip an argmax between two almost equal tokens; from that
token on the two answers may differ (each is still the target's own greedy answer to within one
rounding). This script measures that fraction on the bundled toy pair's held-out scenes: per
schedule, the share of answers identical to target-only's, and the mean position of the first
difference when they differ. gpu_check.sh runs it in bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import append_rows, run_context  # noqa: E402

MODES = ("head-only", "sequential", "hide")


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when present")
    ap.add_argument("--csv", help="append one row per schedule (e.g. profiling/results/identity.csv)")
    ap.add_argument("--allow-dirty", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from phide.tools.bench import bundled_session, eval_samples, toy_request

    if args.csv and run_context()["dirty"] and not args.allow_dirty:  # refuse before the run, not after
        raise SystemExit("identity.py: the tree has uncommitted changes (commit first, or --allow-dirty)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    session = bundled_session(calibration=None, device=device, dtype=getattr(torch, args.dtype))
    samples = eval_samples(args.scenes)
    rows = []
    first_diff: dict[str, list[int]] = {m: [] for m in MODES}
    same = {m: 0 for m in MODES}
    for s in samples:
        ref = session.generate(toy_request(s, args.max_new_tokens), "target-only").token_ids
        for mode in MODES:
            got = session.generate(toy_request(s, args.max_new_tokens), mode).token_ids
            if got == ref:
                same[mode] += 1
            else:
                first_diff[mode].append(next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b),
                                             min(len(got), len(ref))))
    ctx = run_context()
    for mode in MODES:
        rows.append({**ctx, "dtype": args.dtype, "schedule": mode, "scenes": len(samples),
                     "identical_fraction": round(same[mode] / len(samples), 4),
                     "mean_first_difference": round(statistics.fmean(first_diff[mode]), 2) if first_diff[mode] else ""})
    if args.csv:
        append_rows(args.csv, rows, allow_dirty=args.allow_dirty)
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{args.dtype} on {device}: {r['schedule']:10} identical to target-only on "
                  f"{r['identical_fraction']:.0%} of {r['scenes']} scenes"
                  + (f" (first difference at token {r['mean_first_difference']} on average)"
                     if r["mean_first_difference"] != "" else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
