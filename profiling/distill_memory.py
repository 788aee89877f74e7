"""Peak memory of `phide distill` against the data set's size: it must not grow with the samples.

Exports held-out-free toy scenes (distillation seed) as paired directories of exactly N samples
for each N, runs `phide distill` on the bundled pair over each (the same steps, batch and flags:
only the number of samples differs) in its own process, and reads that process's peak RSS from
the kernel (os.wait4's ru_maxrss). With --old, the same for the pipeline as it was at 399dce9
(exported from git into a temporary directory), which kept every sample's tensors in memory.

    python profiling/distill_memory.py [--samples 100,800] [--steps 40] [--features] [--old]

Rows: profiling/results/distill_memory.csv (one per pipeline and N, with the ratio to the first N).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from phide.tools.benchlog import ROOT, append_csv, check_schema, run_context

OLD_COMMIT = "399dce9"
COLUMNS = ["device", "torch_version", "git_sha", "dirty", "timestamp", "pipeline", "samples", "steps", "batch",
           "features", "peak_rss_mb", "vs_smallest", "wall_s"]


def export(n: int, out: Path) -> Path:
    """A paired directory of exactly n distillation samples (all questions of enough scenes)."""
    from phide.toy.bundle import export_distill_data

    export_distill_data(out, n // 4 + 1)
    lines = (out / "samples.jsonl").read_text().splitlines()
    if len(lines) < n:
        raise SystemExit(f"{n // 4 + 1} scenes gave only {len(lines)} samples")
    (out / "samples.jsonl").write_text("\n".join(lines[:n]) + "\n")
    return out


def run(argv: list[str], env: dict) -> tuple[float, float]:
    """(peak RSS of the process in MB, wall seconds)."""
    import time

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(argv[:4])} failed:\n{err[-3000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", default="100,800")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--features", action="store_true", help="offline features (--features DIR) instead of online")
    ap.add_argument("--old", action="store_true", help=f"also the pipeline at {OLD_COMMIT}")
    ap.add_argument("--csv", default=str(ROOT / "profiling/results/distill_memory.csv"))
    ap.add_argument("--allow-dirty", action="store_true")
    args = ap.parse_args(argv)
    check_schema(args.csv, COLUMNS)
    ctx = run_context()
    if ctx["dirty"] and not args.allow_dirty:
        raise SystemExit("uncommitted changes: commit first (or --allow-dirty)")
    sizes = [int(x) for x in args.samples.split(",")]
    target = ROOT / "phide/toy/bundled/target"
    tmp = Path(tempfile.mkdtemp(prefix="phide-distill-memory-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    pipelines = {"streaming (this commit)": ([sys.executable, "-m", "phide"], env)}
    if args.old:
        old = tmp / "old"
        old.mkdir()
        subprocess.run(f"git -C {ROOT} archive {OLD_COMMIT} | tar -x -C {old}", shell=True, check=True)
        pipelines[f"in memory ({OLD_COMMIT})"] = ([sys.executable, "-c", "from phide.cli import main; "
                                                   "raise SystemExit(main())"], {**env, "PYTHONPATH": str(old)})
    rows = []
    for name, (cmd, penv) in pipelines.items():
        first = None
        for n in sizes:
            data = export(n, tmp / f"data{n}")
            out = tmp / f"run-{len(rows)}"
            argv = [*cmd, "distill", "--target", str(target), "--data", str(data), "--out", str(out),
                    "--steps", str(args.steps), "--max-new-tokens", "48", "--json"]
            if name.startswith("streaming"):
                argv += ["--batch", str(args.batch)] + (["--features", str(tmp / f"feat{n}")] if args.features else [])
            rss, wall = run(argv, penv)
            first = first or rss
            rows.append({**ctx, "pipeline": name, "samples": n, "steps": args.steps, "batch": args.batch,
                         "features": "offline" if args.features and name.startswith("streaming") else "online",
                         "peak_rss_mb": round(rss, 1), "vs_smallest": round(rss / first, 3), "wall_s": round(wall, 1)})
            print(json.dumps({k: rows[-1][k] for k in ("pipeline", "samples", "peak_rss_mb", "vs_smallest", "wall_s")}),
                  flush=True)
    append_csv(args.csv, rows, COLUMNS, allow_dirty=args.allow_dirty)
    print(f"appended {len(rows)} rows to {args.csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
