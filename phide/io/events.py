"""Event-camera streams: loading (DSEC events.h5, .npz, .npy) and EventGPT's event-frame rendering.

Time is in microseconds throughout. For DSEC files `t` is the stored (uint32) timestamp cast to int64
plus `/t_offset`, so window bounds are absolute times, as DSEC's `EventSlicer.get_events` takes them.
Windows are half-open: `t_start_us <= t < t_end_us`.

EventGPT's input (XduSyL/EventGPT `common/common.py`, `get_event_images_list` + `generate_event_image`):
the stream is cut, in array order, into `n` chunks of `k = len // n` events each, the LAST chunk also
taking the remainder (`[i*k, (i+1)*k)` for i < n-1, `[(n-1)*k, len)`): this is not `np.array_split`,
which spreads the remainder over the first chunks. Each chunk becomes a (y.max()+1, x.max()+1) RGB
image of the chunk's own extent, white (255) background, p == 0 blue [0,0,255], any other p red
[255,0,0], later events overwriting earlier ones. EventGPT also refuses streams spanning >= 100 ms
(`EVENTGPT_MAX_SPAN_US`); `last_window(stream, EVENTGPT_MAX_SPAN_US)` always fits. Coordinates must
lie inside the sensor: the file's sensor size where the format stores one (.npz height/width), else
`MAX_SENSOR_SIDE`, so no frame outgrows a real sensor.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from phide.errors import PhideError

EVENTGPT_MAX_SPAN_US = 100_000
"""EventGPT raises when t.max() - t.min() >= this (its README targets ~50 ms windows)."""

MAX_SENSOR_SIDE = 4096
"""Largest sensor side (px) accepted when the file gives no sensor size (DSEC's events.h5 does not;
its cameras are 640x480). A frame is as large as its largest coordinate, so one stray x = 10**6
would allocate gigabytes per frame; 4096 is several times the widest event camera."""

BLUE = np.array([0, 0, 255], dtype=np.uint8)  # p == 0 (EventGPT's negative polarity)
RED = np.array([255, 0, 0], dtype=np.uint8)  # p != 0

_FIELDS = ("x", "y", "t", "p")
_H5_SUFFIXES = (".h5", ".hdf5")

PathLike = Union[str, os.PathLike]


@dataclass(eq=False)
class EventStream:
    """Events in array (time) order.

    x, y: integer pixel coordinates (column, row), >= 0; the loaded dtype is kept (DSEC: uint16).
    t: int64 microseconds (absolute: DSEC's t_offset already added).
    p: polarity, integer or bool; 0/False is negative (EventGPT: blue), anything else positive.
    sensor_size: optional (height, width), at most MAX_SENSOR_SIDE a side; when given, every event
        must lie inside it, else every coordinate must be below MAX_SENSOR_SIDE.
    """

    x: np.ndarray
    y: np.ndarray
    t: np.ndarray
    p: np.ndarray
    sensor_size: tuple[int, int] | None = None

    def __post_init__(self):
        arrays = {name: np.asarray(getattr(self, name)) for name in _FIELDS}
        for name, a in arrays.items():
            if a.ndim != 1:
                raise PhideError(f"events: {name} must be 1-D, got shape {a.shape}")
        lengths = {name: len(a) for name, a in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise PhideError(f"events: x, y, t, p differ in length ({lengths})")
        for name in ("x", "y", "t"):
            if arrays[name].dtype.kind not in "iu":
                raise PhideError(f"events: {name} must be integers, got dtype {arrays[name].dtype}")
        if arrays["p"].dtype.kind not in "iub":
            raise PhideError(f"events: p must be integer or bool, got dtype {arrays['p'].dtype}")
        n = lengths["x"]
        if n:
            for name in ("x", "y"):
                if arrays[name].dtype.kind == "i" and arrays[name].min() < 0:
                    raise PhideError(f"events: negative {name} coordinate {arrays[name].min()}")
        if self.sensor_size is not None:
            h, w = (int(v) for v in self.sensor_size)
            if h <= 0 or w <= 0:
                raise PhideError(f"events: bad sensor size {self.sensor_size}")
            if max(h, w) > MAX_SENSOR_SIDE:  # events inside it could still make gigabyte frames
                raise PhideError(f"events: sensor size (height={h}, width={w}) is beyond the largest supported "
                                 f"sensor side ({MAX_SENSOR_SIDE} px)")
            if n and (arrays["y"].max() >= h or arrays["x"].max() >= w):
                raise PhideError(
                    f"events: coordinates up to (y={arrays['y'].max()}, x={arrays['x'].max()}) "
                    f"fall outside the sensor (height={h}, width={w})")
            self.sensor_size = (h, w)
        elif n:
            _check_side("x", arrays["x"])
            _check_side("y", arrays["y"])
        arrays["t"] = arrays["t"].astype(np.int64, copy=False)
        for name, a in arrays.items():
            setattr(self, name, a)

    def __len__(self) -> int:
        return len(self.t)

    @classmethod
    def from_mapping(cls, d: Mapping, *, what: str = "events") -> EventStream:
        """From a dict/npz with keys x, y, t, p (optionally t_offset, height + width)."""
        missing = [k for k in _FIELDS if k not in d]
        if missing:
            raise PhideError(f"{what}: missing key(s) {', '.join(missing)} (need x, y, t, p)")
        t = np.asarray(d["t"])
        if "t_offset" in d:
            if t.dtype.kind not in "iu":
                raise PhideError(f"{what}: t must be integers, got dtype {t.dtype}")
            t = t.astype(np.int64) + int(np.asarray(d["t_offset"]))
        size = None
        if "height" in d and "width" in d:
            try:
                size = (int(np.asarray(d["height"])), int(np.asarray(d["width"])))
            except (TypeError, ValueError):
                raise PhideError(f"{what}: height and width must be single integers (the sensor size)") from None
        return cls(np.asarray(d["x"]), np.asarray(d["y"]), t, np.asarray(d["p"]), size)

    def select(self, index) -> EventStream:
        """The events at `index` (slice, mask or index array), same sensor size."""
        return EventStream(self.x[index], self.y[index], self.t[index], self.p[index],
                           self.sensor_size)

    @property
    def t_first(self) -> int:
        return int(self.t.min())

    @property
    def t_last(self) -> int:
        return int(self.t.max())


def _check_side(name: str, a: np.ndarray) -> None:
    """Without a sensor size, coordinates must fit the largest supported sensor."""
    top = int(a.max())
    if top >= MAX_SENSOR_SIDE:
        raise PhideError(f"events: {name} reaches {top}, beyond the largest supported sensor side "
                         f"({MAX_SENSOR_SIDE} px); pass events of a real sensor")


# --------------------------------------------------------------------------------------------
# windows


def _check_bounds(t_start_us, t_end_us):
    if t_start_us is not None and t_end_us is not None and t_start_us >= t_end_us:
        raise PhideError(f"event window: start {t_start_us} µs must be before end {t_end_us} µs")


def _check_overlap(t_start_us, t_end_us, first, last, what):
    """Window [start, end) against the recording's events [first, last] (both absolute µs)."""
    if (t_end_us is not None and t_end_us <= first) or (t_start_us is not None and t_start_us > last):
        raise PhideError(
            f"{what}: window [{t_start_us}, {t_end_us}) µs is outside the recording, whose events "
            f"span [{first}, {last}] µs")


def window(stream: EventStream, t_start_us: int | None, t_end_us: int | None) -> EventStream:
    """Events with t_start_us <= t < t_end_us (None: unbounded on that side), in array order.

    Raises PhideError when the window lies outside the recording or holds no event.
    """
    _check_bounds(t_start_us, t_end_us)
    if len(stream) == 0:
        raise PhideError("event window: the stream holds no events")
    _check_overlap(t_start_us, t_end_us, stream.t_first, stream.t_last, "event window")
    keep = np.ones(len(stream), dtype=bool)
    if t_start_us is not None:
        keep &= stream.t >= t_start_us
    if t_end_us is not None:
        keep &= stream.t < t_end_us
    if not keep.any():
        raise PhideError(f"event window: no events in [{t_start_us}, {t_end_us}) µs")
    return stream.select(keep)


def _last_window_bounds(t_last: int, duration_us: int) -> tuple[int, int]:
    if not isinstance(duration_us, (int, np.integer)) or duration_us <= 0:
        raise PhideError(f"event window: duration must be a positive number of µs, got {duration_us!r}")
    end = int(t_last) + 1
    return end - int(duration_us), end


def last_window(stream: EventStream, duration_us: int) -> EventStream:
    """The last `duration_us` µs of the stream, ending at (and including) its last event:
    [t_last + 1 - duration_us, t_last + 1), so t.max() - t.min() < duration_us."""
    if len(stream) == 0:
        raise PhideError("event window: the stream holds no events")
    return window(stream, *_last_window_bounds(stream.t_last, duration_us))


# --------------------------------------------------------------------------------------------
# loading


def load_events(path: PathLike, *, allow_pickle: bool = False, t_start_us: int | None = None,
                t_end_us: int | None = None) -> EventStream:
    """Load events from a DSEC `events.h5`, an `.npz` (x, y, t, p) or an `.npy` (structured array
    with fields x, y, t, p; or, with allow_pickle=True only, EventGPT's pickled dict).

    With a window (t_start_us and/or t_end_us, absolute µs, half-open), only the events inside
    are returned; for DSEC files only the needed part of the file is read (via /ms_to_idx).
    """
    path = Path(path)
    _check_bounds(t_start_us, t_end_us)
    if not path.exists():
        raise PhideError(f"event file not found: {path}")
    if path.is_dir():
        raise PhideError(f"event path is a directory, not a file: {path}")
    suffix = path.suffix.lower()
    if suffix in _H5_SUFFIXES:
        return _load_dsec_h5(path, t_start_us, t_end_us)
    if suffix == ".npz":
        stream = _load_npz(path)
    elif suffix == ".npy":
        stream = _load_npy(path, allow_pickle)
    else:
        raise PhideError(f"{path}: unknown event file extension {path.suffix!r} "
                         f"(expected .h5/.hdf5 (DSEC), .npz or .npy)")
    if t_start_us is None and t_end_us is None:
        return stream
    return _window_of_file(stream, t_start_us, t_end_us, path)


def check_event_file(path: PathLike) -> None:
    """Open and check an event file before any plan runs, cheaply, so a bad file is one error
    whatever the schedule (a plan that never reads the events included): a DSEC h5 must hold its
    events group with 1-D datasets of one length, non-empty, its first and last element of each
    readable (a truncated file fails there) and in range; an .npz / .npy (small) is read whole with
    every check `load_events` makes (keys, integer dtypes, coordinates, pickles refused) and must
    hold events. Raises PhideError."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() not in _H5_SUFFIXES:
        stream = load_events(path)
        if not len(stream):
            raise PhideError(f"{path}: holds no events")
        return
    with _open_h5(path) as f:
        ds, n, _ = _h5_events(f, path)
        ends = {k: np.concatenate([_read(d, 0, 1, path, k), _read(d, n - 1, n, path, k)]) for k, d in ds.items()}
    for name in ("x", "y"):
        _check_side(name, ends[name])


def _window_of_file(stream, t_start_us, t_end_us, path):
    try:
        return window(stream, t_start_us, t_end_us)
    except PhideError as e:
        raise PhideError(f"{path}: {e}") from None


def _load_npz(path: Path) -> EventStream:
    import zipfile

    if not zipfile.is_zipfile(path):  # np.load would take it for a pickle and say so, wrongly
        raise PhideError(f"{path}: not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise PhideError(f"{path}: holds pickled object arrays, which phide does not load from "
                             f".npz; store plain numeric arrays x, y, t, p") from None
        raise PhideError(f"{path}: not a readable .npz file ({e})") from None
    except (OSError, EOFError) as e:
        raise PhideError(f"{path}: not a readable .npz file ({e})") from None
    return EventStream.from_mapping(data, what=str(path))


def _load_npy(path: Path, allow_pickle: bool) -> EventStream:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise PhideError(f"{path}: not a readable .npy file ({e})") from None
        if not allow_pickle:
            raise PhideError(
                f"{path}: is a pickled .npy (EventGPT's dict format); unpickling can run arbitrary "
                f"code, so it is refused unless allow_pickle=True is given for a file you trust") \
                from None
        print(f"phide: warning: unpickling {path} (allow_pickle=True); only do this for files you "
              f"trust", file=sys.stderr)
        try:
            arr = np.load(path, allow_pickle=True)
        except Exception as e2:  # unpickling can fail in many ways
            raise PhideError(f"{path}: cannot unpickle ({type(e2).__name__}: {e2})") from None
    except (OSError, EOFError) as e:
        raise PhideError(f"{path}: not a readable .npy file ({e})") from None
    if arr.dtype == object:
        obj = arr.item() if arr.shape == () else None
        if not isinstance(obj, Mapping):
            raise PhideError(f"{path}: pickled .npy does not hold a dict of x, y, t, p")
        return EventStream.from_mapping(obj, what=str(path))
    if arr.dtype.names is None:
        raise PhideError(f"{path}: .npy must be a structured array with fields x, y, t, p "
                         f"(got a plain {arr.dtype} array of shape {arr.shape})")
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    return EventStream.from_mapping({k: arr[k] for k in arr.dtype.names}, what=str(path))


def _open_h5(path: Path):
    try:
        import hdf5plugin  # noqa: F401  (registers the Blosc/ZSTD filter DSEC files use)
        import h5py
    except ImportError as e:
        raise PhideError(f"reading {path} needs h5py and hdf5plugin (pip install h5py hdf5plugin): "
                         f"{e}") from None
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise PhideError(f"{path}: not a readable HDF5 file ({e})") from None


def _h5_events(f, path: Path):
    missing = [f"events/{k}" for k in _FIELDS if f"events/{k}" not in f]
    if missing:
        raise PhideError(f"{path}: not a DSEC events file, missing dataset(s) {', '.join(missing)}")
    ds = {k: f[f"events/{k}"] for k in _FIELDS}
    shapes = {k: d.shape for k, d in ds.items()}
    if any(len(s) != 1 for s in shapes.values()) or len({s[0] for s in shapes.values()}) != 1:
        raise PhideError(f"{path}: events/x, y, t, p must be 1-D of one length, got {shapes}")
    n = shapes["t"][0]
    if n == 0:
        raise PhideError(f"{path}: holds no events")
    t_offset = int(f["t_offset"][()]) if "t_offset" in f else 0
    return ds, n, t_offset


def h5_span(path: Path) -> tuple[int, int]:
    """(first, last) absolute event time of a DSEC file, reading two elements."""
    with _open_h5(path) as f:
        ds, n, t_offset = _h5_events(f, path)
        return int(ds["t"][0]) + t_offset, int(ds["t"][n - 1]) + t_offset


def _read(d, lo, hi, path, name):
    try:
        return d[lo:hi]
    except OSError as e:  # typically: the compression filter is not available
        raise PhideError(f"{path}: cannot read events/{name} ({e})") from None


def _load_dsec_h5(path: Path, t_start_us, t_end_us) -> EventStream:
    with _open_h5(path) as f:
        ds, n, t_offset = _h5_events(f, path)
        if t_start_us is None and t_end_us is None:
            lo, hi = 0, n
        else:
            first = int(ds["t"][0]) + t_offset
            last = int(ds["t"][n - 1]) + t_offset
            _check_overlap(t_start_us, t_end_us, first, last, str(path))
            lo, hi = _h5_window_indices(f, ds["t"], n, t_offset, t_start_us, t_end_us, path)
            if lo >= hi:
                raise PhideError(f"{path}: no events in [{t_start_us}, {t_end_us}) µs")
        t = _read(ds["t"], lo, hi, path, "t").astype(np.int64) + t_offset
        x, y, p = (_read(ds[k], lo, hi, path, k) for k in ("x", "y", "p"))
    # DSEC files store no sensor size (DSEC's is 640x480), and files of other cameras share the
    # layout: MAX_SENSOR_SIDE bounds the coordinates.
    return EventStream(x, y, t, p)


def _h5_window_indices(f, t_ds, n, t_offset, t_start_us, t_end_us, path) -> tuple[int, int]:
    """[lo, hi) indices of the events with t_start_us <= t < t_end_us, like DSEC's EventSlicer:
    a conservative slice from /ms_to_idx (t[ms_to_idx[ms]] >= ms*1000 > t[ms_to_idx[ms]-1]),
    then exact µs bounds by binary search inside it. Without /ms_to_idx, searches all of t."""
    rel_start = None if t_start_us is None else t_start_us - t_offset
    rel_end = None if t_end_us is None else t_end_us - t_offset
    coarse_lo, coarse_hi = 0, n
    if "ms_to_idx" in f:
        ms_ds = f["ms_to_idx"]
        m = ms_ds.shape[0] if ms_ds.ndim == 1 else 0
        if m:
            if rel_start is not None and rel_start > 0:
                # ms_to_idx[ms] is the first event at or after ms*1000 <= rel_start
                ms = min(math.floor(rel_start / 1000), m - 1)
                coarse_lo = int(ms_ds[ms])
            if rel_end is not None:
                ms = math.ceil(rel_end / 1000)
                if ms < m:  # past the table: all events up to the end stay candidates
                    coarse_hi = int(ms_ds[max(ms, 0)])
            coarse_lo = min(max(coarse_lo, 0), n)
            coarse_hi = min(max(coarse_hi, coarse_lo), n)
    t = _read(t_ds, coarse_lo, coarse_hi, path, "t").astype(np.int64)
    a = 0 if rel_start is None else int(np.searchsorted(t, rel_start, side="left"))
    b = len(t) if rel_end is None else int(np.searchsorted(t, rel_end, side="left"))
    return coarse_lo + a, coarse_lo + b


# --------------------------------------------------------------------------------------------
# EventGPT rendering


def chunk_bounds(n_events: int, n_frames: int) -> list[tuple[int, int]]:
    """EventGPT's split: n_frames chunks of n_events // n_frames events, the last one also taking
    the remainder."""
    k = n_events // n_frames
    return [(i * k, (i + 1) * k if i < n_frames - 1 else n_events) for i in range(n_frames)]


def render_event_image(x: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """One EventGPT event image (`generate_event_image`): HxWx3 uint8 RGB of size
    (y.max()+1, x.max()+1), white background, p == 0 blue, else red, the last event at a pixel wins.

    Vectorised without relying on numpy's unspecified order for repeated fancy-index writes: the
    last event of each pixel is found explicitly (first occurrence in the reversed array)."""
    if len(x) == 0:
        raise PhideError("cannot render an event image from zero events")
    for name, a in (("x", x), ("y", y)):  # EventStream checks these; raw arrays may come here too
        if a.min() < 0:
            raise PhideError(f"events: negative {name} coordinate {a.min()}")
        _check_side(name, a)
    h, w = int(y.max()) + 1, int(x.max()) + 1
    img = np.full((h, w, 3), 255, dtype=np.uint8)
    lin = y.astype(np.int64) * w + x.astype(np.int64)
    pix, first_in_reversed = np.unique(lin[::-1], return_index=True)
    last = len(lin) - 1 - first_in_reversed
    neg = p[last] == 0
    flat = img.reshape(-1, 3)
    flat[pix[neg]] = BLUE
    flat[pix[~neg]] = RED
    return img


def render_event_frames(stream: EventStream, n_frames: int = 5) -> list[np.ndarray]:
    """EventGPT's `get_event_images_list(events, n_frames)`: n_frames HxWx3 uint8 RGB images, one
    per equal-count chunk (see `chunk_bounds`); sizes can differ between chunks."""
    if not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise PhideError(f"n_frames must be a positive integer, got {n_frames!r}")
    if len(stream) < n_frames:
        raise PhideError(f"{len(stream)} event(s) cannot fill {n_frames} event frames "
                         f"(EventGPT needs at least one event per frame)")
    return [render_event_image(stream.x[a:b], stream.y[a:b], stream.p[a:b])
            for a, b in chunk_bounds(len(stream), n_frames)]


def load_event_frames(source: PathLike | EventStream | Mapping, n_frames: int = 5, *,
                      allow_pickle: bool = False, duration_us: int | None = None) -> list[np.ndarray]:
    """EventGPT's event frames for `source` (a file for `load_events`, an EventStream or a dict of
    x, y, t, p): optionally only the last `duration_us` µs (see `last_window`), then
    `render_event_frames`. For DSEC files with duration_us, only that window is read."""
    if isinstance(source, EventStream):
        stream = source
    elif isinstance(source, Mapping):
        stream = EventStream.from_mapping(source)
    else:
        path = Path(source)
        if duration_us is not None and path.suffix.lower() in _H5_SUFFIXES and path.is_file():
            _, t_last = h5_span(path)
            start, end = _last_window_bounds(t_last, duration_us)
            stream = load_events(path, t_start_us=start, t_end_us=end)
            return render_event_frames(stream, n_frames)
        stream = load_events(path, allow_pickle=allow_pickle)
    if duration_us is not None:
        stream = last_window(stream, duration_us)
    return render_event_frames(stream, n_frames)
