"""Directories of paired (video, events, question) samples: what `phide distill` trains on.

Layout (paths in samples.jsonl are relative to the directory, or absolute):

    DIR/samples.jsonl        one JSON object per line:
                             {"question": "...", "video": "frames/0007", "events": "events/0007.npz"}
                             video: a frame folder (png/jpg) or a video file; events: DSEC .h5, .npz
                             (arrays x, y, t, p) or plain .npy. Extra keys (e.g. "id") are kept.
    DIR/frames/..., DIR/events/...   the files themselves (any layout)

`read_paired_dir` checks the whole manifest up front (every line, every referenced file) and
raises one PhideError naming the first problem, before any model is loaded; with
`keep_missing=True` (phide eval) a sample whose file is missing is kept with its `problem` said,
so one lost file does not refuse a whole data set.
`write_paired_dir` writes such a directory (the toy world exports its scenes with it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from phide.errors import PhideError

MANIFEST = "samples.jsonl"


@dataclass
class PairedSample:
    question: str
    video: Path
    events: Path
    extra: dict = field(default_factory=dict)
    problem: str | None = None  # keep_missing: why this sample cannot run (a file that does not exist)


def read_paired_dir(data_dir: str | os.PathLike, *, min_samples: int = 1,
                    keep_missing: bool = False) -> list[PairedSample]:
    d = Path(data_dir)
    if not d.is_dir():
        raise PhideError(f"{d}: not a directory of paired samples")
    manifest = d / MANIFEST
    if not manifest.is_file():
        raise PhideError(f"{d}: no {MANIFEST} (one JSON object per line with question, video, events)")
    try:
        lines = manifest.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PhideError(f"{manifest}: cannot read ({exc})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{manifest}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PhideError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise PhideError(f"{where}: expected a JSON object")
        for key in ("question", "video", "events"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise PhideError(f"{where}: needs a non-empty string {key!r}")
        video, events = d / rec["video"], d / rec["events"]
        problem = None
        if not video.exists():
            problem = f"{where}: video {rec['video']!r} does not exist"
        elif not events.is_file():
            problem = f"{where}: events file {rec['events']!r} does not exist"
        if problem is not None and not keep_missing:
            raise PhideError(problem)
        extra = {k: v for k, v in rec.items() if k not in ("question", "video", "events")}
        out.append(PairedSample(rec["question"].strip(), video, events, extra, problem))
    if len(out) < min_samples:
        raise PhideError(f"{manifest}: {len(out)} samples, at least {min_samples} needed")
    return out


def write_paired_dir(data_dir: str | os.PathLike, clips: Iterable[tuple[np.ndarray, object, list[str], dict]]) -> int:
    """Write clips as a paired directory. clips: (frames [F,H,W,3] uint8, EventStream, questions,
    extra keys for every line). Returns the number of samples written."""
    from PIL import Image

    d = Path(data_dir)
    (d / "frames").mkdir(parents=True, exist_ok=True)
    (d / "events").mkdir(parents=True, exist_ok=True)
    n = 0
    with open(d / MANIFEST, "w") as manifest:
        for i, (frames, events, questions, extra) in enumerate(clips):
            name = f"{i:05d}"
            folder = d / "frames" / name
            folder.mkdir(exist_ok=True)
            for j, frame in enumerate(frames):
                Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(folder / f"{j:02d}.png")
            np.savez(d / "events" / f"{name}.npz", x=events.x, y=events.y, t=events.t, p=events.p)
            for q in questions:
                rec = {"question": q, "video": f"frames/{name}", "events": f"events/{name}.npz", **extra}
                manifest.write(json.dumps(rec) + "\n")
                n += 1
    return n
