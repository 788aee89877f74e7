"""Where and with what a measurement was taken, and CSV appends: shared by `phide bench` and the
microbenchmarks in profiling/ (profiling/harness.py re-exports these)."""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root in a source checkout


def git_sha() -> str:
    """Short sha of HEAD, suffixed -dirty when tracked files differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_context() -> dict:
    """Where and with what a measurement was taken (one dict per run, merged into every row)."""
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        device = f"cpu:{cpu_name()}:{torch.get_num_threads()}t"
    return {
        "device": device,
        "torch_version": torch.__version__,
        "git_sha": git_sha(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def append_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append rows. Columns: the file's header, then any new keys (in first-seen order); when
    rows bring new columns the file is rewritten with the wider header (old rows get blanks)."""
    if not rows:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old_rows: list[dict] = []
    fields: list[str] = []
    if path.exists() and path.stat().st_size:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            old_rows = list(reader)
    known = len(fields)
    for row in rows:
        fields += [k for k in row if k not in fields]
    rewrite = not known or len(fields) > known
    with path.open("w" if rewrite else "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if rewrite:
            w.writeheader()
            w.writerows(old_rows)
        w.writerows(rows)
