"""Lane-overlap sweep: the hide window at several lane splits, measured on this machine.

    python profiling/sweep_lanes.py [--scenes 4] [--draft-sms 8 16 24 32] [--draft-threads 1]

GPU (the toy pair on cuda:0): for each reserved SM count, hide requests whose draft window runs
on a green context of that many SMs (`Plan.draft_sms`) and the target on the remainder.
CPU: the same for reserved draft threads. Per split: the target prefill's stretch (hide /
target-only, same scene), draft tree steps finished inside the window, end-to-end wall time vs
target-only, and the share of scenes whose tokens are target-only's (reported, never assumed). Rows appended to profiling/results/sweep_lanes.csv.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import append_rows, run_context  # noqa: E402


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--draft-sms", type=int, nargs="+", default=[8, 16, 24, 32])
    ap.add_argument("--draft-threads", type=int, nargs="+", default=[1])
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "sweep_lanes.csv"))
    ap.add_argument("--allow-dirty", action="store_true", help="write rows from a tree with uncommitted changes")
    args = ap.parse_args()

    import torch

    from phide.engine import Plan
    from phide.tools.bench import bundled_session, eval_samples, toy_request

    gpu = torch.cuda.is_available()
    eng = bundled_session(calibration=None, device="cuda" if gpu else "cpu").engine
    samples = eval_samples(args.scenes)
    splits = [("draft_sms", n) for n in args.draft_sms] if gpu else [("draft_threads", n) for n in args.draft_threads]
    eng.generate(toy_request(samples[0], 4), "target-only")  # warm-up
    alone = [eng.generate(toy_request(s, 48), "target-only") for s in samples]
    rows, ctx = [], run_context()
    for field, n in splits:
        plan = Plan("hide", **{field: n})
        eng.generate(toy_request(samples[0], 4), plan)  # warm-up (makes the green contexts once)
        runs = [eng.generate(toy_request(s, 48), plan) for s in samples]
        # Divergence is reported, not fatal: in bf16/fp16 (and even fp32 on a GPU, where cuBLAS picks
        # other GEMM algorithms for other shapes and SM counts) identity is measured, not assumed.
        same = [r.token_ids == a.token_ids for a, r in zip(alone, runs)]
        for s, ok in zip(samples, same):
            if not ok:
                print(f"sweep_lanes: hide at {field}={n} diverged from target-only on {s.question!r}", flush=True)
        stretch = [r.stats["phases"]["target_prefill"] / a.stats["phases"]["target_prefill"]
                   for a, r in zip(alone, runs)]
        row = {**ctx, "split": f"{field}={n}", "lanes": runs[0].stats.get("window_lanes", ""),
               "prefill_stretch": round(statistics.median(stretch), 3),
               "draft_steps_in_window": round(statistics.fmean(r.stats.get("draft_steps_in_window", 0)
                                                               for r in runs), 2),
               "speedup_vs_target_only": round(statistics.median(a.stats["wall_s"] / r.stats["wall_s"]
                                                                  for a, r in zip(alone, runs)), 3),
               "identical_fraction": round(sum(same) / len(same), 4)}
        rows.append(row)
        print(f"{row['split']:>16} ({row['lanes']}): prefill stretch {row['prefill_stretch']:.2f}, "
              f"draft steps in window {row['draft_steps_in_window']:.1f}, "
              f"vs target-only {row['speedup_vs_target_only']:.2f}x, "
              f"identical tokens on {row['identical_fraction']:.0%} of scenes", flush=True)
    append_rows(args.csv, rows, allow_dirty=args.allow_dirty)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
