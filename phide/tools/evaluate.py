"""How well the toy pair answers held-out scenes (greedy, target alone and draft alone), scored on
motion and on colour with `phide.toy.world.score_answer`.

    python -m phide.tools.evaluate [PAIR_DIR] [--scenes 100] [--json] [--csv FILE] [--allow-dirty]

PAIR_DIR defaults to the bundled pair ($PHIDE_TOY_PAIR overrides it). Scenes come from world seed
EVAL_SEED (never trained or distilled on), one question each. This is the measurement behind the
README's accuracy figures (`--csv profiling/results/evaluate.csv` appends them with the commit);
`phide bench` and `phide demo` report the same scores on their scenes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from phide.schedules import TARGET_ONLY
from phide.tools.benchlog import CONTEXT_COLUMNS


EVALUATE_COLUMNS = CONTEXT_COLUMNS + ["scenes", "target_correct", "target_motion", "target_colour", "draft_motion",
                                      "draft_colour"]


def evaluate(pair_dir, scenes: int, max_new_tokens: int = 48) -> dict:
    from phide.session import load_session
    from phide.tools.bench import accuracy, eval_samples, run_scenes

    session = load_session(os.path.join(pair_dir, "target"), os.path.join(pair_dir, "draft"), calibration=None)
    rows = run_scenes({TARGET_ONLY: (session, TARGET_ONLY)}, eval_samples(scenes), max_new_tokens=max_new_tokens)
    by_question: dict[str, list[bool]] = {}
    for r in rows:
        template = " ".join(r["sample"].question.split()[:3])
        by_question.setdefault(template, []).append(r["score"]["motion"] and r["score"]["colour"])
    return {**accuracy(rows), "by_question": {q: round(sum(v) / len(v), 3) for q, v in sorted(by_question.items())}}


def main(argv: list[str] | None = None) -> int:
    from phide.errors import PhideError
    from phide.toy.bundle import bundled_dir

    ap = argparse.ArgumentParser(prog="python -m phide.tools.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("pair_dir", nargs="?", help="a toy pair directory (default: the bundled pair)")
    ap.add_argument("--scenes", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--csv", help="CSV to append the scores to (the README's: profiling/results/evaluate.csv)")
    ap.add_argument("--allow-dirty", action="store_true", help="write a row from a tree with uncommitted changes")
    args = ap.parse_args(argv)
    if args.scenes < 1:
        ap.error("--scenes must be >= 1")
    from phide.tools.benchlog import append_csv, check_schema, run_context

    t0 = time.perf_counter()
    ctx = run_context()
    csv_path = args.csv
    try:
        if csv_path is not None:
            check_schema(csv_path, EVALUATE_COLUMNS)
            if ctx["dirty"] and not args.allow_dirty:
                raise PhideError("the tree has uncommitted changes, so the row could not be traced to a commit "
                                 "(commit first, pass --allow-dirty, or --csv elsewhere)")
        acc = evaluate(args.pair_dir or str(bundled_dir()), args.scenes, args.max_new_tokens)
        if csv_path is not None:
            append_csv(csv_path, [{**ctx, **{k: acc.get(k, "") for k in EVALUATE_COLUMNS if k not in ctx}}],
                       EVALUATE_COLUMNS, allow_dirty=args.allow_dirty)
    except PhideError as exc:  # a missing or broken pair directory: one line, as the CLI does
        print(f"phide: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(acc))
        return 0
    print(f"{acc['scenes']} held-out scenes ({time.perf_counter() - t0:.0f} s): target correct (motion and colour) "
          f"{acc['target_correct']:.0%} (motion {acc['target_motion']:.0%}, colour {acc['target_colour']:.0%}); "
          f"draft alone: motion {acc.get('draft_motion', 0):.0%}, colour {acc.get('draft_colour', 0):.0%}")
    for q, v in acc["by_question"].items():
        print(f"  {q}...: target correct {v:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
