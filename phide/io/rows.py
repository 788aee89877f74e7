"""Append-only JSONL row files that survive a kill: `phide eval`'s results.jsonl and `phide
distill`'s answers.jsonl.

Each row is written, flushed and fsynced as it completes, so a crash loses at most the row in
flight; reading cuts a torn last line (a kill mid-write) off the file, so appending goes on from
a clean end. A row already written (by its key) is never written twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from phide.errors import PhideError


def read_rows(path: Path, required: tuple[str, ...], *, what: str = "row") -> list[dict]:
    """The complete rows of a JSONL file (each a JSON object with the `required` keys); a torn
    last line is cut from the file. [] when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]  # everything up to the last complete line
    if len(keep) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(keep))
    rows = []
    for n, line in enumerate(keep.decode().splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or any(k not in row for k in required):
            raise PhideError(f"{path}:{n} is not a {what} (the file was edited?)")
        rows.append(row)
    return rows


class RowWriter:
    """Appends rows to `path`, each flushed and synced as it completes; a row whose key
    (`key(row)`) is in `done` or was written already is dropped, so no row is written twice."""

    def __init__(self, path: Path, key: Callable[[dict], object], done=()):
        self.path, self.key, self.done = Path(path), key, set(done)

    def __enter__(self):
        self.f = open(self.path, "a")
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __call__(self, row: dict) -> bool:
        k = self.key(row)
        if k in self.done:
            return False
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())
        self.done.add(k)
        return True


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to `path` through a synced temporary file and a rename: readers see the old
    file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def open_run_dir(out: Path, run_file: str, run: dict, resume: bool) -> None:
    """Create a run directory and write its description `run_file` (atomically); with resume, the
    description already there must equal `run` (one error naming what changed)."""
    if out.exists() and not out.is_dir():
        raise PhideError(f"--out {out} is a file")
    path = out / run_file
    if resume and path.is_file():
        try:
            before = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise PhideError(f"{path} is not valid JSON ({exc}): not a run phide can resume") from None
        if not isinstance(before, dict):
            raise PhideError(f"{path} is not a run description: not a run phide can resume")
        changed = sorted(k for k in run if before.get(k) != run[k])
        if changed:
            raise PhideError(f"--resume: {out} was run with other {', '.join(changed)} "
                             f"({changed[0]}: {before.get(changed[0])!r}, now {run[changed[0]]!r})")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PhideError(f"cannot create {out}: {exc.strerror}") from None
    write_json_atomic(path, run)
