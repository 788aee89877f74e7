"""Calibrate the planner's cost model on this machine, then check its predictions.

    python profiling/calibrate.py [--scenes 8] [--check-scenes 8] [--draft-threads 1] [--json]

1. Calibration (scenes of seed EVAL_SEED + 1): solo costs from target-only and sequential requests
   of the toy pair (target prepare / prefill / decode step, draft prepare+prefill / tree step,
   continuation-head step), the per-node verify cost from one-shot verifies of 1 and 24 nodes,
   and for every lane split (draft threads of the machine's cores; 0 = no split, both lanes use
   every core) the target's prefill, the draft's prepare+prefill and tree step with both lanes
   busy. Saved where the planner looks (`phide.planner.calibration_path()`).
2. Check (held-out scenes of seed EVAL_SEED): hide requests per split, each after a target-only
   request of the same scene and alternating with the calibration's own split requests (a shared
   machine's speed drifts; interleaved, both see the same drift); the measured stretch of the
   target's prefill (hide / target-only) and the draft steps finished inside the window, against
   the planner's predictions; error in percent; rows appended to profiling/results/calibrate.csv.
PHIDE_TOY_PAIR=DIR calibrates another pair in the toy layout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import append_csv, run_context  # noqa: E402

from phide.calibration import _median, calibrate_and_check  # noqa: E402


def check(costs, checks, draft_threads: list[int], window_depth: int) -> list[dict]:
    """Per split: the planner's predicted stretch and window draft steps against the check
    requests' (measured interleaved with the calibration, `calibrate_and_check`)."""
    import torch

    from phide.planner import window_draft_steps

    rows = []
    total = torch.get_num_threads()
    for d, split, measured in zip(draft_threads, costs.splits, checks):
        pred_stretch = split.target_prefill_s / costs.target_prefill_s
        pred_steps = round(window_draft_steps(costs, split, window_depth), 2)
        got_stretch = _median([r for r, _ in measured])
        got_steps = sum(n for _, n in measured) / len(measured)
        rows.append({"draft_threads": d, "total_threads": total, "draft_share": split.draft_share,
                     "stretch_measured": round(got_stretch, 3), "stretch_predicted": round(pred_stretch, 3),
                     "stretch_error_pct": round(100 * abs(pred_stretch - got_stretch) / got_stretch, 1),
                     "draft_steps_measured": round(got_steps, 2), "draft_steps_predicted": pred_steps,
                     "draft_steps_error_pct": round(100 * abs(pred_steps - got_steps) / max(got_steps, 1), 1)})
    return rows


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--check-scenes", type=int, default=8)
    ap.add_argument("--draft-threads", type=int, nargs="+", default=[1, 0],
                    help="lane splits to calibrate: draft intra-op threads (0 = no split)")
    ap.add_argument("--out", help="calibration file (default: phide.planner.calibration_path())")
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "calibrate.csv"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from phide.bench import load_bundled
    from phide.planner import calibration_path, save_costs
    from phide.toy.bundle import EVAL_SEED
    from phide.toy.world import make_dataset

    pair = load_bundled()
    cal = make_dataset(args.scenes, seed=EVAL_SEED + 1, questions_per_scene=1)
    held = make_dataset(args.check_scenes, seed=EVAL_SEED, questions_per_scene=1)
    costs, checks = calibrate_and_check(pair, cal, held, args.draft_threads)
    out = Path(args.out) if args.out else calibration_path()
    save_costs(costs, out)
    rows = check(costs, checks, args.draft_threads, pair.engine.spec.window_depth)
    ctx = run_context()
    append_csv(args.csv, [{**ctx, **r} for r in rows])
    if args.json:
        print(json.dumps({"calibration": str(out), "costs": json.loads(out.read_text()), "check": rows}))
        return 0
    print(f"calibration written to {out}")
    for r in rows:
        print(f"draft threads {r['draft_threads']} of {r['total_threads']}: prefill stretch measured "
              f"{r['stretch_measured']:.2f} predicted {r['stretch_predicted']:.2f} "
              f"({r['stretch_error_pct']:.0f}% off); "
              f"draft steps in the window measured {r['draft_steps_measured']} predicted "
              f"{r['draft_steps_predicted']} ({r['draft_steps_error_pct']:.0f}% off)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
