"""Two commits side by side in one run: `phide bench` at each, alternated, and the ratios.

Each commit is checked out as a git worktree under a temporary directory and run from there
(PYTHONPATH = its root), with this checkout's compiled extension copied in when the old commit's
ops are a subset of it (the same acceptance walk: so neither side runs the pure-torch walk). The
bench runs `--rounds` times per commit in alternating order (old, new, new, old, ...), each run
writing its rows to a CSV of this run; per configuration the median over the runs of each
commit's median wall time, and new / old.

    python profiling/ab_commits.py OLD_REV [NEW_REV] --rounds 2 -- --scenes 8 --repeats 1

Rows: profiling/results/ab_commits.csv (one per commit and configuration, both commits named).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness

from harness import append_rows, run_context  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def rev(name: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", name], check=True, text=True,
                          capture_output=True).stdout.strip()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bench_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new", nargs="?", default="HEAD")
    ap.add_argument("--rounds", type=int, default=2, help="bench runs per commit, alternated")
    ap.add_argument("--csv", type=Path, default=Path(__file__).parent / "results" / "ab_commits.csv")
    ap.add_argument("--allow-dirty", action="store_true")
    args = ap.parse_args(argv)
    if run_context()["dirty"] and not args.allow_dirty:  # refuse before the run, not after it
        raise SystemExit("ab_commits: the tree has uncommitted changes (commit first, or --allow-dirty)")
    commits = [rev(args.old), rev(args.new)]
    work = Path(tempfile.mkdtemp(prefix="phide-ab-"))
    so = sorted((ROOT / "phide").glob("_C*.so"))
    try:
        trees = {}
        for c in commits:
            trees[c] = work / c
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(trees[c]), c], check=True,
                           capture_output=True)
            for f in so:  # the compiled ops (the old commit's are a subset: the same walk)
                shutil.copy2(f, trees[c] / "phide" / f.name)
            build_info = ROOT / "phide" / "_build_info.py"
            if build_info.exists():
                shutil.copy2(build_info, trees[c] / "phide" / build_info.name)
        walls = {c: {} for c in commits}
        order = []
        for i in range(args.rounds):
            order += commits if i % 2 == 0 else commits[::-1]
        for k, c in enumerate(order):
            out = work / f"run{k}_{c}.csv"
            env = dict(os.environ, PYTHONPATH=str(trees[c]))
            print(f"ab: run {k + 1}/{len(order)}: {c}", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "phide", "bench", "--csv", str(out), "--allow-dirty", *bench_args],
                           check=True, env=env, cwd=trees[c], stdout=subprocess.DEVNULL)
            with out.open() as f:
                for row in csv.DictReader(f):
                    walls[c].setdefault(row["config"], []).append(float(row["median_wall_s"]))
        ctx = run_context()
        old, new = commits
        rows = []
        for config in walls[old]:
            if config not in walls[new]:
                continue
            a, b = statistics.median(walls[old][config]), statistics.median(walls[new][config])
            rows.append(dict(ctx, old_commit=old, new_commit=new, config=config, runs_per_commit=args.rounds,
                             bench_args=" ".join(bench_args), old_median_wall_s=round(a, 4),
                             new_median_wall_s=round(b, 4), new_over_old=round(b / a, 3)))
            print(f"{config:42s} {old} {a * 1e3:8.1f} ms   {new} {b * 1e3:8.1f} ms   new/old {b / a:.3f}")
        append_rows(args.csv, rows, allow_dirty=args.allow_dirty)
    finally:
        for c in commits:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / c)],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
