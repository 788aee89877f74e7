"""Lane-overlap sweep: the hide window at several lane splits, measured on this machine.

    python profiling/sweep_lanes.py [--scenes 4] [--draft-sms 8 16 24 32] [--draft-threads 1]

GPU (the toy pair on cuda:0): for each reserved SM count, hide requests whose draft window runs
on a green context of that many SMs (`SpecConfig.draft_sms`) and the target on the remainder.
CPU: the same for reserved draft threads. Per split: the target prefill's stretch (hide /
target-only, same scene), draft tree steps finished inside the window, end-to-end wall time vs
target-only, and identical tokens (checked). Rows appended to profiling/results/sweep_lanes.csv.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import append_csv, run_context  # noqa: E402


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--draft-sms", type=int, nargs="+", default=[8, 16, 24, 32])
    ap.add_argument("--draft-threads", type=int, nargs="+", default=[1])
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "sweep_lanes.csv"))
    args = ap.parse_args()

    import torch

    from phide.bench import eval_samples, toy_spec
    from phide.calibration import _request
    from phide.pipeline import load_pair
    from phide.toy.bundle import bundled_dir

    gpu = torch.cuda.is_available()
    d = bundled_dir()
    pair = load_pair(d / "target", d / "draft", spec=toy_spec(), device="cuda" if gpu else "cpu")
    eng = pair.engine
    samples = eval_samples(args.scenes)
    splits = [("draft_sms", n) for n in args.draft_sms] if gpu else [("draft_threads", n) for n in args.draft_threads]
    eng.generate(_request(samples[0], "target-only", 4))  # warm-up
    alone = [eng.generate(_request(s, "target-only")) for s in samples]
    rows, ctx = [], run_context()
    for field, n in splits:
        e = copy.copy(eng)
        e.spec = dataclasses.replace(eng.spec, window="prefill", **{field: n})
        e.generate(_request(samples[0], "hide", 4))  # warm-up (makes the green contexts once)
        runs = [e.generate(_request(s, "hide")) for s in samples]
        for s, a, r in zip(samples, alone, runs):
            if r.token_ids != a.token_ids:
                raise SystemExit(f"sweep_lanes: hide at {field}={n} diverged from target-only on {s.question!r}")
        stretch = [r.stats["phases"]["target_prefill"] / a.stats["phases"]["target_prefill"]
                   for a, r in zip(alone, runs)]
        row = {**ctx, "split": f"{field}={n}", "lanes": runs[0].stats.get("window_lanes", ""),
               "prefill_stretch": round(statistics.median(stretch), 3),
               "draft_steps_in_window": round(statistics.fmean(r.stats.get("draft_steps_in_window", 0)
                                                               for r in runs), 2),
               "speedup_vs_target_only": round(statistics.median(a.stats["wall_s"] / r.stats["wall_s"]
                                                                  for a, r in zip(alone, runs)), 3)}
        rows.append(row)
        print(f"{row['split']:>16} ({row['lanes']}): prefill stretch {row['prefill_stretch']:.2f}, "
              f"draft steps in window {row['draft_steps_in_window']:.1f}, "
              f"vs target-only {row['speedup_vs_target_only']:.2f}x", flush=True)
    append_csv(args.csv, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
