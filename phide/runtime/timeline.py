"""Per-request timeline: named spans on lanes, also emitted as NVTX ranges.

NVTX ranges come from the `nvtx` package when it is installed (a no-op without a profiler
attached), so Nsight Systems shows the same phases as phide's own timeline.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

try:  # optional: NVTX annotations for Nsight Systems
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - nvtx is a declared dependency, but never required
    _nvtx = None


@dataclass
class Span:
    name: str
    lane: str
    start: float  # seconds since the timeline's origin
    end: float


class Timeline:
    def __init__(self):
        self.origin = time.perf_counter()
        self.spans: list[Span] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.perf_counter() - self.origin

    @contextmanager
    def phase(self, name: str, lane: str = "target"):
        rng = _nvtx.start_range(message=f"{lane}:{name}") if _nvtx is not None else None
        start = self.now()
        try:
            yield
        finally:
            end = self.now()
            if rng is not None:
                _nvtx.end_range(rng)
            with self._lock:
                self.spans.append(Span(name, lane, start, end))

    def record(self, name: str, lane: str, start: float, end: float) -> None:
        """A span measured elsewhere (e.g. in a process lane's worker): perf_counter start/end."""
        with self._lock:
            self.spans.append(Span(name, lane, start - self.origin, end - self.origin))

    def totals(self) -> dict[str, float]:
        """Seconds per phase name, summed over spans (lanes may overlap, so totals can exceed wall)."""
        out: dict[str, float] = {}
        for s in self.spans:
            out[s.name] = out.get(s.name, 0.0) + (s.end - s.start)
        return {k: round(v, 6) for k, v in out.items()}
