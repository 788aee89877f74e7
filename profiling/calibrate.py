"""Calibrate the planner's cost model on this machine, then check its predictions on scenes the
calibration never saw.

    python profiling/calibrate.py [--scenes 8] [--check-scenes 8] [--json] [--allow-dirty]

1. Calibration: `phide calibrate` on the bundled toy pair (scenes of CALIBRATION_SEED), saved where
   `phide generate` / `phide bench` look for it.
2. Check (held-out scenes of EVAL_SEED): every scene runs target-only, head-only, sequential and
   hide, interleaved (a shared machine's speed drifts; interleaved, every mode sees the same
   drift). For each request the planner predicts, from the calibration alone and the answer
   length that came out, the wall time of the plan that ran; the check reports per mode the
   median measured and predicted wall time and the median relative error, and for hide the draft
   steps finished inside the window, measured and predicted. One row per mode appended to
   profiling/results/calibrate.csv.
PHIDE_TOY_PAIR=DIR calibrates another pair in the toy layout.
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

MODES = ("target-only", "head-only", "sequential", "hide")


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=8, help="calibration scenes")
    ap.add_argument("--check-scenes", type=int, default=8, help="held-out scenes the check runs")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "calibrate.csv"))
    ap.add_argument("--allow-dirty", action="store_true", help="write rows from a tree with uncommitted changes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from phide.planner import window_draft_steps
    from phide.session import save_session_calibration
    from phide.tools.bench import bundled_session, eval_samples, toy_request, toy_samples
    from phide.tools.calibrate import calibrate, check, relative_errors
    from phide.toy.bundle import CALIBRATION_SEED

    ctx = run_context()
    if ctx["dirty"] and not args.allow_dirty:
        raise SystemExit("calibrate.py: the tree has uncommitted changes (commit first, or --allow-dirty)")
    session = bundled_session(calibration=None)
    say = lambda msg: print(f"calibrate: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    cal_reqs = [toy_request(s, args.max_new_tokens) for s in toy_samples(args.scenes, CALIBRATION_SEED)]
    cal = calibrate(session, cal_reqs, log=say)
    path = save_session_calibration(session, cal)
    say(f"saved {path}; checking on {args.check_scenes} held-out scenes")
    held = [toy_request(s, args.max_new_tokens) for s in eval_samples(args.check_scenes)]
    rows = check(session, held, MODES)
    errors = relative_errors(rows)
    out = []
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue
        row = {**ctx, "mode": mode, "calibration_scenes": args.scenes, "check_scenes": len(held),
               "median_measured_s": round(statistics.median(r["measured_s"] for r in mine), 5),
               "median_predicted_s": round(statistics.median(r["predicted_s"] for r in mine), 5),
               "median_error": errors[mode], "window_steps_measured": "", "window_steps_predicted": ""}
        if mode == "hide":
            split = next(sp for sp in cal.costs.splits if sp.draft_threads == session.planner.decide(
                args.max_new_tokens, "hide").draft_threads)
            row["window_steps_measured"] = round(statistics.fmean(r["draft_steps_in_window"] for r in mine), 2)
            row["window_steps_predicted"] = round(window_draft_steps(cal.costs, split,
                                                                     session.engine.spec.window_depth), 2)
        out.append(row)
    append_rows(args.csv, out, allow_dirty=args.allow_dirty)
    if args.json:
        print(json.dumps({"calibration": str(path), "check": out}))
        return 0
    print(f"calibration: {path}; check on {len(held)} held-out scenes (predictions from the calibration alone)")
    for r in out:
        extra = (f"; draft steps in the window {r['window_steps_measured']} measured, "
                 f"{r['window_steps_predicted']} predicted" if r["mode"] == "hide" else "")
        print(f"{r['mode']:12} measured {r['median_measured_s'] * 1e3:7.1f} ms, predicted "
              f"{r['median_predicted_s'] * 1e3:7.1f} ms, median error {r['median_error']:.0%}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
