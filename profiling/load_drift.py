"""Does the planner follow the machine? Calibrate while a busy process holds a core, stop it, and
watch the predictions of the requests that follow.

    python profiling/load_drift.py [--calibration-scenes 3] [--scenes 10] [--busy 1] [--allow-dirty]

1. The bundled toy pair is calibrated (`phide calibrate`'s measurements, on CALIBRATION_SEED
   scenes) while `--busy` processes spin on the CPU: the costs of a loaded machine.
2. The busy processes stop. Held-out scenes (EVAL_SEED) then run `--mode auto` under two planners
   from that one calibration, alternating which goes first per scene: `follows` (the planner as
   shipped: a moving average of measured / predicted time scales its costs) and `frozen` (the
   same with that average switched off: the planner before issue 22). Per request the prediction
   made before it ran is shown beside its measured wall time.
One row per (planner, scene) appended to profiling/results/load_drift.csv; the summary prints
each planner's median relative error over the first 3 scenes and over all. Nothing is saved to
the user's calibration (a private PHIDE_HOME).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import append_rows, run_context  # noqa: E402


def _spin() -> None:
    while True:
        pass


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["PHIDE_HOME"] = tempfile.mkdtemp(prefix="phide-drift-")  # never the user's calibration
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibration-scenes", type=int, default=3)
    ap.add_argument("--scenes", type=int, default=10)
    ap.add_argument("--busy", type=int, default=1, help="spinning processes while calibrating")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "load_drift.csv"))
    ap.add_argument("--allow-dirty", action="store_true", help="write rows from a tree with uncommitted changes")
    args = ap.parse_args()


    from phide.tools.bench import bundled_session, eval_samples, toy_request, toy_samples
    from phide.tools.calibrate import calibrate
    from phide.toy.bundle import CALIBRATION_SEED

    session = bundled_session(calibration=None)
    cal_requests = [toy_request(s, args.max_new_tokens) for s in toy_samples(args.calibration_scenes, CALIBRATION_SEED)]
    session.generate(cal_requests[0], "target-only")  # warm-up, before the load starts
    busy = [mp.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for p in busy:
        p.start()
    try:
        cal = calibrate(session, cal_requests,
                        log=lambda m: print(f"load_drift: calibrate (busy x{args.busy}): {m}", file=sys.stderr))
    finally:
        for p in busy:
            p.terminate()
            p.join()
    follows = session.planner.with_calibration(cal)
    frozen = session.planner.with_calibration(cal)
    frozen.LOAD_ALPHA = 0.0  # the instance's: the moving average never moves
    planners = {"follows": follows, "frozen": frozen}
    ctx, rows = run_context(), []
    errors: dict[str, list[float]] = {name: [] for name in planners}
    for i, sample in enumerate(eval_samples(args.scenes)):
        order = list(planners) if i % 2 == 0 else list(planners)[::-1]  # rotated: neither always first
        for name in order:
            session.planner = planners[name]
            res = session.generate(toy_request(sample, args.max_new_tokens), "auto")
            st = res.stats
            predicted, wall = st["plan"]["predicted_s"], st["wall_s"]
            err = abs(predicted - wall) / wall
            errors[name].append(err)
            rows.append({**ctx, "planner": name, "scene": i, "schedule": st["plan"]["schedule"],
                         "predicted_s": round(predicted, 5), "wall_s": round(wall, 5),
                         "relative_error": round(err, 4), "load_scale": st.get("prediction", {}).get("load_scale"),
                         "busy_while_calibrating": args.busy})
            print(f"scene {i:2d} {name:8} {st['plan']['schedule']:11} predicted {predicted * 1e3:7.1f} ms, "
                  f"measured {wall * 1e3:7.1f} ms, error {err:5.0%}", flush=True)
    for name, errs in errors.items():
        print(f"{name:8}: median error first 3 scenes {statistics.median(errs[:3]):.0%}, "
              f"scenes 4+ {statistics.median(errs[3:]) if len(errs) > 3 else float('nan'):.0%}, "
              f"all {statistics.median(errs):.0%}")
    append_rows(args.csv, rows, allow_dirty=args.allow_dirty)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
