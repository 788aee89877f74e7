"""Per-request timeline: named spans on lanes, also emitted as NVTX ranges.

With an asynchronous device clock (a GPU: phide.runtime.signals.DeviceClock) each phase also
records a signal at its start and end on the lane's stream; `resolve()`, once the request's work
is done, replaces the spans' times with the device's (when the work ran) and keeps the host's
(when it was launched) beside them. On a CPU the two are the same.

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
    start: float  # seconds since the timeline's origin (device time once resolved)
    end: float
    host_start: float | None = None  # when the host launched it (None: same as start)
    host_end: float | None = None


class Timeline:
    def __init__(self, clock=None):
        """clock: the request's phide.runtime.signals.DeviceClock; phases get device times when
        it is asynchronous (`clock.asynchronous`)."""
        self.clock = clock if clock is not None and getattr(clock, "asynchronous", False) else None
        self.origin = clock.origin_host if clock is not None else time.perf_counter()
        self.spans: list[Span] = []
        self._pending: list[tuple[Span, object, object]] = []  # (span, start signal, end signal)
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.perf_counter() - self.origin

    @contextmanager
    def phase(self, name: str, lane: str = "target"):
        rng = _nvtx.start_range(message=f"{lane}:{name}") if _nvtx is not None else None
        start = self.now()
        first = self.clock.record() if self.clock is not None else None
        try:
            yield
        finally:
            last = self.clock.record() if self.clock is not None else None
            end = self.now()
            if rng is not None:
                _nvtx.end_range(rng)
            span = Span(name, lane, start, end, start, end)
            with self._lock:
                self.spans.append(span)
                if first is not None:
                    self._pending.append((span, first, last))

    def resolve(self) -> None:
        """Give the phases their device times (waits for their end signals): call once the
        request's work is done. A no-op on a synchronous (CPU) clock."""
        with self._lock:
            pending, self._pending = self._pending, []
        for span, first, last in pending:
            span.start, span.end = first.done_at() - self.origin, last.done_at() - self.origin

    def totals(self) -> dict[str, float]:
        """Seconds per phase name (device time once resolved), summed over spans (lanes may
        overlap, so totals can exceed wall)."""
        return self._sum(lambda s: s.end - s.start)

    def host_totals(self) -> dict[str, float]:
        """Seconds per phase name as the host saw them (launch to return)."""
        return self._sum(lambda s: (s.host_end if s.host_end is not None else s.end)
                         - (s.host_start if s.host_start is not None else s.start))

    def _sum(self, duration) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in self.spans:
            out[s.name] = out.get(s.name, 0.0) + duration(s)
        return {k: round(v, 6) for k, v in out.items()}
