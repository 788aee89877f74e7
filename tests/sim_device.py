"""A simulated asynchronous device for tests: what a GPU does to the host, on a CPU.

On a GPU a launch returns at once and the work completes later; on a CPU it completes before the
call returns, which hides every bug that takes "launched" for "done". Here a stream is a timeline
of busy-until times: `charge(seconds)` queues that much work on the calling thread's current
stream and returns at once; a `SimSignal` recorded after it is set only when the (wall) clock
passes the stream's busy-until time. The engine sees the same interfaces as on a GPU: a device
clock (phide.runtime.signals.DeviceClock: `record()`, `asynchronous`, `origin_host`) and window
lanes (phide.runtime.window_lanes.WindowLanes: `target()`, `draft()`, `join()`, ...).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import torch


class SimDevice:
    def __init__(self):
        self.busy_until: dict[str, float] = {}
        self._local = threading.local()

    def current(self) -> str:
        return getattr(self._local, "stream", "default")

    @contextmanager
    def stream(self, name: str):
        before = self.current()
        self._local.stream = name
        try:
            yield
        finally:
            self._local.stream = before

    def charge(self, seconds: float) -> None:
        """Queue `seconds` of work on the current stream; returns at once (an asynchronous launch)."""
        name = self.current()
        self.busy_until[name] = max(self.busy_until.get(name, 0.0), time.perf_counter()) + seconds

    def done_time(self, name: str | None = None) -> float:
        """When the work queued so far on the stream ends (now, if it is idle)."""
        return max(self.busy_until.get(name or self.current(), 0.0), time.perf_counter())


class SimSignal:
    def __init__(self, at: float):
        self.at = at

    def is_set(self) -> bool:
        return time.perf_counter() >= self.at

    def wait(self) -> None:
        time.sleep(max(0.0, self.at - time.perf_counter()))

    def done_at(self) -> float:
        self.wait()
        return self.at


class SimClock:
    asynchronous = True

    def __init__(self, device: SimDevice):
        self.device = device
        self.origin_host = time.perf_counter()

    def record(self, stream=None) -> SimSignal:
        return SimSignal(self.device.done_time(stream))


class SimLanes:
    """WindowLanes' interface over two simulated streams ("target", "draft")."""

    draft_threads = target_threads = 0
    cuda_lanes = None

    def __init__(self, device: SimDevice):
        self.device = device

    def describe(self) -> str:
        return "simulated streams: draft, target"

    def target(self):
        return self.device.stream("target")

    def draft(self):
        return self.device.stream("draft")

    def join(self) -> None:
        """The current stream waits for both lanes (what the rounds read is done by then)."""
        dev = self.device
        dev.busy_until[dev.current()] = max(dev.done_time("target"), dev.done_time("draft"))

    def finish_request(self) -> None:
        pass


class ModelStandIn(torch.nn.Module):
    """A model stand-in for tests: every attribute but `forward` is the wrapped model's."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0
        self.cfg = inner.cfg

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


class AsyncPrefill(ModelStandIn):
    """A model whose prefill (its first forward) is an asynchronous launch of `seconds` of device
    work: the call returns at once (its result is already computed, as a GPU's would be by the
    time anything reads it) and the stream stays busy for `seconds`."""

    def __init__(self, inner, device: SimDevice, seconds: float):
        super().__init__(inner)
        self.sim, self.seconds = device, seconds

    def forward(self, *a, **kw):
        self.calls += 1
        out = self.inner(*a, **kw)
        if self.calls == 1:
            self.sim.charge(self.seconds)
        return out
