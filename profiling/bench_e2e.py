"""End-to-end benchmark of the bundled toy pair: every configuration of `phide.tools.bench.CONFIGS` on the
same held-out scenes in one run, medians and quartiles, speedups vs target-only and vs sequential,
rows appended to profiling/results/bench_e2e.csv with the machine and git sha.

    python profiling/bench_e2e.py [--scenes 24] [--max-new-tokens 48] [--json]

The same as `phide bench`; PHIDE_TOY_PAIR=DIR benchmarks another pair in the toy layout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from phide.cli import main as phide_main

    default_csv = str(Path(__file__).resolve().parent / "results" / "bench_e2e.csv")
    args = sys.argv[1:]
    if not any(a == "--csv" or a.startswith("--csv=") for a in args):
        args += ["--csv", default_csv]
    return phide_main(["bench", *args])


if __name__ == "__main__":
    raise SystemExit(main())
