"""DSEC sequences cut into paired clips: the target's 8 RGB frames, the draft's events.

A DSEC sequence directory (the layout of DSEC's train/test archives, as EventGPT's own
`dataset/directory.py` models it):

    SEQ/events/left/events.h5          events/{x,y,t,p}, ms_to_idx, t_offset (µs)
    SEQ/images/left/rectified/*.png    the left RGB camera, one file per frame, in time order
    SEQ/images/timestamps.txt          one µs timestamp per frame, same order (t_offset included)

`cut_clips` slices the time both streams cover into clips of `clip_ms`. Each clip gives the target
8 frames spread uniformly over it (Video-LLaVA was trained on 8 frames per video), and gives the
draft the `event_ms` of events that end at the target's last frame (its timestamp included):
EventGPT refuses streams of 100 ms or more and its README targets ~50 ms, so the draft sees the
motion leading up to the moment the target's video ends, the moment a question about "what is
happening" is about. The layout, the timestamps and every
frame (PNG structure and checksums) are checked before any clip is cut; a missing or damaged file
is one PhideError naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phide.errors import PhideError
from phide.io.events import EVENTGPT_MAX_SPAN_US, EventStream, h5_span, load_events
from phide.io.video import sample_frame_indices

EVENTS = Path("events/left/events.h5")
IMAGES = Path("images/left/rectified")
TIMESTAMPS = Path("images/timestamps.txt")
TARGET_FRAMES = 8


@dataclass
class DsecSequence:
    root: Path
    images: list[Path]          # rectified left frames, in time order
    timestamps: np.ndarray      # [len(images)] int64 µs
    events: Path
    event_span: tuple[int, int]  # first and last event time, µs


def read_sequence(seq_dir: str | os.PathLike) -> DsecSequence:
    """Check a DSEC sequence directory's layout and read its frame timestamps and event span."""
    root = Path(seq_dir)
    if not root.is_dir():
        raise PhideError(f"DSEC sequence not found: {root}")
    for rel in (EVENTS, TIMESTAMPS):
        if not (root / rel).is_file():
            raise PhideError(f"{root}: missing {rel} (a DSEC sequence holds {EVENTS}, {IMAGES}/*.png, {TIMESTAMPS})")
    if not (root / IMAGES).is_dir():
        raise PhideError(f"{root}: missing {IMAGES}/ (a DSEC sequence holds {EVENTS}, {IMAGES}/*.png, {TIMESTAMPS})")
    images = sorted((root / IMAGES).glob("*.png"))
    if not images:
        raise PhideError(f"{root / IMAGES}: no .png frames")
    try:
        stamps = np.loadtxt(root / TIMESTAMPS, dtype=np.int64, ndmin=1)
    except ValueError as exc:
        raise PhideError(f"{root / TIMESTAMPS}: not one integer µs timestamp per line ({exc})") from None
    if len(stamps) != len(images):
        raise PhideError(f"{root / TIMESTAMPS}: {len(stamps)} timestamps for {len(images)} frames in {root / IMAGES} "
                         "(a truncated file?)")
    if np.any(np.diff(stamps) <= 0):
        raise PhideError(f"{root / TIMESTAMPS}: timestamps must increase")
    for image in images:  # a truncated frame is named now, not when (or whether) a clip reads it
        _check_png(image)
    span = h5_span(root / EVENTS)
    return DsecSequence(root, images, stamps, root / EVENTS, span)


def _check_png(path: Path) -> None:
    """The file is a whole PNG (structure and checksums; no decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as exc:  # PIL reports damage as OSError, SyntaxError, ValueError, ...
        raise PhideError(f"{path}: not a readable PNG ({type(exc).__name__}: {exc})") from None


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise PhideError(f"{path}: cannot read image ({exc})") from None


@dataclass
class Clip:
    index: int
    t_start_us: int
    t_end_us: int
    frames: np.ndarray          # [8, H, W, 3] uint8
    events: EventStream         # the clip's last event_ms


def check_clip_args(clip_ms: int, event_ms: int) -> None:
    if clip_ms < 1 or event_ms < 1:
        raise PhideError("--clip-ms and --event-ms must be positive")
    if event_ms * 1000 >= EVENTGPT_MAX_SPAN_US:
        raise PhideError(f"--event-ms {event_ms}: EventGPT reads streams shorter than {EVENTGPT_MAX_SPAN_US // 1000} ms")
    if event_ms > clip_ms:
        raise PhideError(f"--event-ms {event_ms} is longer than the clip (--clip-ms {clip_ms})")


def clip_span(seq: DsecSequence, clip_ms: int) -> tuple[int, int]:
    """(start µs, number of whole clips) over the time both cameras cover; an error when not one fits."""
    start = max(int(seq.timestamps[0]), seq.event_span[0])
    end = min(int(seq.timestamps[-1]) + 1, seq.event_span[1] + 1)
    n = max(0, end - start) // (clip_ms * 1000)
    if n < 1:
        raise PhideError(f"{seq.root}: frames and events overlap for {max(0, end - start) / 1000:.0f} ms, "
                         f"less than one {clip_ms} ms clip")
    return start, n


def cut_clips(seq: DsecSequence, clip_ms: int, event_ms: int = 50, *, skipped: list | None = None) -> Iterator[Clip]:
    """The sequence's clips of `clip_ms`, over the time both cameras cover. A clip with no frame or
    no event in its event window is left out (appended to `skipped` as (index, why)). Call
    `check_clip_args` and `clip_span` first to fail before anything is written."""
    check_clip_args(clip_ms, event_ms)
    start, n = clip_span(seq, clip_ms)
    for k in range(n):
        t0 = start + k * clip_ms * 1000
        t1 = t0 + clip_ms * 1000
        inside = np.flatnonzero((seq.timestamps >= t0) & (seq.timestamps < t1))
        if len(inside) == 0:
            if skipped is not None:
                skipped.append((k, "no frame"))
            continue
        picks = inside[sample_frame_indices(len(inside), TARGET_FRAMES)]
        frames = [_read_png(seq.images[i]) for i in picks]
        if len({f.shape for f in frames}) != 1:
            raise PhideError(f"{seq.root / IMAGES}: frames differ in size")
        end = int(seq.timestamps[picks[-1]]) + 1  # up to the target's last frame, included
        try:
            events = load_events(seq.events, t_start_us=end - event_ms * 1000, t_end_us=end)
        except PhideError as exc:
            if "no events" not in str(exc) and "outside the recording" not in str(exc):
                raise
            if skipped is not None:
                skipped.append((k, "no events"))
            continue
        yield Clip(k, t0, t1, np.stack(frames), events)
