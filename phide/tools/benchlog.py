"""Where and with what a measurement was taken, and CSV appends: shared by `phide bench`, the
calibration check and the microbenchmarks in profiling/ (profiling/harness.py re-exports these).

Every results CSV has one schema (its header, given by the writer) and every row names the commit
it was measured at. A row measured on a tree with uncommitted changes cannot be traced to code
anyone can run, so `append_csv` refuses it unless told (`allow_dirty`), and then marks it
(`dirty` = 1).
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path

from phide.errors import PhideError

ROOT = Path(__file__).resolve().parents[2]  # the repository root in a source checkout
RESULTS = "profiling/results"  # where the measurements' CSV rows live, relative to ROOT
CONTEXT_COLUMNS = ["device", "torch_version", "git_sha", "dirty", "timestamp"]


def git_state() -> tuple[str, bool]:
    """(short sha of HEAD, whether tracked files other than the results differ from it);
    ("unknown", False) outside a git checkout (an installed package)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
        # The results files themselves do not count: appending a row must not make the next
        # measurement's tree "dirty".
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                f":(exclude){RESULTS}"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return sha, bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def git_sha() -> str:
    """Short sha of HEAD, suffixed -dirty when tracked files differ from it (for display)."""
    sha, dirty = git_state()
    return sha + ("-dirty" if dirty else "")


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
    """Where and with what a measurement was taken (one dict per run, merged into every row):
    the CONTEXT_COLUMNS."""
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        device = f"cpu:{cpu_name()}:{torch.get_num_threads()}t"
    sha, dirty = git_state()
    return {
        "device": device,
        "torch_version": torch.__version__,
        "git_sha": sha,
        "dirty": int(dirty),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def check_schema(path: str | os.PathLike, columns: list[str]) -> None:
    """Refuse a results file whose header is not `columns` (rows of two schemas cannot share one)."""
    path = Path(path)
    if path.exists() and path.stat().st_size:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != list(columns):
            raise PhideError(f"{path} has another schema ({len(header)} columns, expected {len(columns)}): "
                             "write to a new file")


def append_csv(path: str | os.PathLike, rows: list[dict], columns: list[str], *, allow_dirty: bool = False) -> None:
    """Append rows under `columns` (the file's schema: its header). A file whose header differs
    is refused (write to a new file: rows of two schemas cannot share one); so is a key that is
    not a column, and a row from a dirty tree unless `allow_dirty`."""
    if not rows:
        return
    path = Path(path)
    for row in rows:
        extra = [k for k in row if k not in columns]
        if extra:
            raise PhideError(f"{path}: columns {', '.join(extra)} are not in the file's schema")
        if str(row.get("dirty", 0)) not in ("0", "False") and not allow_dirty:
            raise PhideError(f"not writing to {path}: the tree has uncommitted changes, so the rows could not be "
                             "traced to a commit (commit first, or pass --allow-dirty: the rows are marked dirty)")
    check_schema(path, columns)
    if path.exists() and path.stat().st_size:
        mode = "a"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = "w"
    with path.open(mode, newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        if mode == "w":
            w.writeheader()
        w.writerows(rows)
