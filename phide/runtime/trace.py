"""Export a request's Timeline: Chrome/Perfetto trace JSON, a Gantt PNG, and lane overlap.

Trace format (load in https://ui.perfetto.dev or chrome://tracing)::

    {"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}

- one metadata event ``{"name": "process_name", "ph": "M", "pid": P, "tid": 0, "ts": 0,
  "args": {"name": "phide"}}``;
- per lane, ``{"name": "thread_name", "ph": "M", "pid": P, "tid": T, "ts": 0,
  "args": {"name": "<lane> lane"}}`` and ``{"name": "thread_sort_index", "ph": "M", ...,
  "args": {"sort_index": T}}``;
- per span, a complete event ``{"name": <phase>, "cat": <lane>, "ph": "X", "ts": <start µs>,
  "dur": <µs>, "pid": P, "tid": T, "args": {"lane": <lane>}}``; ts is microseconds since the
  timeline's origin (rounded to 0.001 µs), complete events are sorted by ts.

tid is stable per lane: "target" is 1, "draft" is 2, other lanes follow in order of first
appearance. ``otherData`` carries ``producer``, ``time_unit`` ("us"), ``lanes`` (lane -> tid),
``overlap_s`` (see :func:`overlap_seconds`) and whatever ``metadata`` the caller passes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from phide.runtime.timeline import Span, Timeline

KNOWN_LANES = ("target", "draft")

# Fixed colours so the same phase looks the same in every PNG (target: blues/greens, draft: warm).
PHASE_COLORS = {
    "target_prepare": "#9ecae1",
    "target_prefill": "#2171b5",
    "verify": "#238b45",
    "commit": "#74c476",
    "draft_prepare": "#fdae6b",
    "draft_prefill": "#e6550d",
    "draft_grow": "#d62728",
}
_EXTRA_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def lane_ids(timeline: Timeline) -> dict[str, int]:
    """lane -> tid: target 1, draft 2, then other lanes in order of first appearance."""
    lanes = list(KNOWN_LANES)
    for s in timeline.spans:
        if s.lane not in lanes:
            lanes.append(s.lane)
    return {lane: i + 1 for i, lane in enumerate(lanes)}


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


def chrome_trace(timeline: Timeline, *, pid: int = 1, metadata: dict | None = None) -> dict:
    """The timeline as a Chrome trace object (see the module docstring for the exact format)."""
    tids = lane_ids(timeline)
    spans = sorted(timeline.spans, key=lambda s: (s.start, tids[s.lane], s.end))
    used = {s.lane for s in spans}
    events: list[dict] = [
        {"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "ts": 0, "args": {"name": "phide"}}
    ]
    for lane, tid in tids.items():
        if lane not in used and lane not in KNOWN_LANES:
            continue
        events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "ts": 0,
                       "args": {"name": f"{lane} lane"}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "ts": 0,
                       "args": {"sort_index": tid}})
    for s in spans:
        events.append({"name": s.name, "cat": s.lane, "ph": "X", "ts": _us(s.start),
                       "dur": _us(max(0.0, s.end - s.start)), "pid": pid, "tid": tids[s.lane],
                       "args": {"lane": s.lane}})
    other = {"producer": "phide", "time_unit": "us", "lanes": dict(tids),
             "overlap_s": round(overlap_seconds(timeline), 9)}
    other.update(metadata or {})
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def write_chrome_trace(timeline: Timeline, path: str | os.PathLike, **kw) -> Path:
    """Write chrome_trace(timeline, **kw) as JSON to path; returns the path."""
    obj = chrome_trace(timeline, **kw)
    validate_chrome_trace(obj)
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, allow_nan=False, default=str)
        f.write("\n")
    return path


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_chrome_trace(obj) -> None:
    """Raise ValueError unless obj is a trace whose every event has name, ph, ts, pid and tid
    (and dur for ph == "X"), with numeric, finite, non-negative ts/dur and integer pid/tid.
    Accepts the object form ({"traceEvents": [...]}) or a bare event list."""
    if isinstance(obj, dict):
        if "traceEvents" not in obj:
            raise ValueError("trace object has no 'traceEvents'")
        events = obj["traceEvents"]
    else:
        events = obj
    if not isinstance(events, list):
        raise ValueError("traceEvents must be a list")
    for i, ev in enumerate(events):
        if not isinstance(ev, dict):
            raise ValueError(f"event {i} is not an object")
        required = ("name", "ph", "ts", "pid", "tid") + (("dur",) if ev.get("ph") == "X" else ())
        missing = [k for k in required if k not in ev]
        if missing:
            raise ValueError(f"event {i} ({ev.get('name', '?')!r}) lacks {', '.join(missing)}")
        if not isinstance(ev["name"], str) or not isinstance(ev["ph"], str) or not ev["ph"]:
            raise ValueError(f"event {i}: name and ph must be strings")
        for k in ("pid", "tid"):
            if not isinstance(ev[k], int) or isinstance(ev[k], bool):
                raise ValueError(f"event {i} ({ev['name']!r}): {k} must be an integer")
        for k in ("ts", "dur"):
            if k in ev and not (_is_num(ev[k]) and ev[k] >= 0):
                raise ValueError(f"event {i} ({ev['name']!r}): {k} must be a finite number >= 0")


def _merged(spans: list[Span]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for start, end in sorted((s.start, s.end) for s in spans if s.end > s.start):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def busy_seconds(timeline: Timeline, lane: str) -> float:
    """Time the lane has at least one span running (nested/overlapping spans counted once)."""
    return sum(b - a for a, b in _merged([s for s in timeline.spans if s.lane == lane]))


def overlap_seconds(timeline: Timeline, lane_a: str = "target", lane_b: str = "draft") -> float:
    """Total time during which both lanes have a span running (intersection of the lanes' busy
    intervals; nested or overlapping spans on one lane count once)."""
    a = _merged([s for s in timeline.spans if s.lane == lane_a])
    b = _merged([s for s in timeline.spans if s.lane == lane_b])
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _colors(names) -> dict[str, str]:
    colors, k = {}, 0
    for n in names:
        if n in PHASE_COLORS:
            colors[n] = PHASE_COLORS[n]
        elif n not in colors:
            colors[n] = _EXTRA_COLORS[k % len(_EXTRA_COLORS)]
            k += 1
    return colors


def timeline_png(timeline: Timeline, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Gantt chart of the timeline (1200x400 px PNG): one row per lane, one bar per span coloured
    by phase, x in ms. The target prefill window is shaded; when it is short next to the whole
    request, a second panel zooms on it so the draft work inside it is visible."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: matplotlib is optional
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    tids = lane_ids(timeline)
    lanes = [lane for lane in tids if lane in KNOWN_LANES or any(s.lane == lane for s in timeline.spans)]
    rows = {lane: len(lanes) - 1 - i for i, lane in enumerate(lanes)}  # target on top
    order = []
    for s in sorted(timeline.spans, key=lambda s: (tids[s.lane], s.start)):
        if s.name not in order:
            order.append(s.name)
    colors = _colors(order)
    ms = [(s, s.start * 1e3, max(0.0, s.end - s.start) * 1e3) for s in timeline.spans]
    t_end = max((x + w for _, x, w in ms), default=1.0) or 1.0
    prefill = [s for s in timeline.spans if s.name == "target_prefill" and s.lane == "target"]
    window = (min(s.start for s in prefill) * 1e3, max(s.end for s in prefill) * 1e3) if prefill else None
    zoom = window is not None and (window[1] - window[0]) < 0.25 * t_end

    fig = Figure(figsize=(12, 4), dpi=100)
    FigureCanvasAgg(fig)
    if zoom:
        gs = fig.add_gridspec(1, 2, width_ratios=[3, 2], wspace=0.12)
        axes = [fig.add_subplot(gs[0]), fig.add_subplot(gs[1])]
    else:
        axes = [fig.add_subplot(1, 1, 1)]

    def draw(ax, lo, hi):
        for s, x, w in ms:
            ax.broken_barh([(x, w)], (rows[s.lane] - 0.38, 0.76), facecolors=colors[s.name],
                           edgecolors="black", linewidth=0.4)
        if window is not None:
            ax.axvspan(window[0], window[1], facecolor="#2171b5", alpha=0.10, linewidth=0, zorder=0)
            for edge in window:
                ax.axvline(edge, color="#2171b5", linestyle="--", linewidth=1.0, zorder=0.5)
        ax.set_xlim(lo, hi)
        ax.set_ylim(-0.6, len(lanes) - 0.4)
        ax.set_yticks([rows[lane] for lane in lanes])
        ax.set_yticklabels([f"{lane} lane" for lane in lanes])
        ax.set_xlabel("time since request start (ms)")
        ax.grid(axis="x", linestyle=":", linewidth=0.5)

    draw(axes[0], 0.0, t_end * 1.01)
    overlap = overlap_seconds(timeline) * 1e3
    axes[0].set_title(title or f"phide timeline — lane overlap {overlap:.2f} ms", fontsize=10, loc="left")
    if zoom:
        width = window[1] - window[0]
        pad = max(width * 0.25, 1e-3)
        draw(axes[1], max(0.0, window[0] - pad), window[1] + pad)
        axes[1].set_yticklabels([])
        axes[1].set_title(f"zoom: target prefill window ({width:.2f} ms)", fontsize=10, loc="left")
    handles = [Patch(facecolor=colors[n], edgecolor="black", linewidth=0.4, label=n) for n in order]
    if window is not None:
        handles.append(Patch(facecolor="#dde8f4", edgecolor="#2171b5", linestyle="--",
                             label="target prefill window"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.25)
    path = Path(path)
    fig.savefig(path, format="png")
    return path
