"""Signals: "the work a lane had queued when this was recorded is done", in the time of the device
that does the work.

On a CPU an op has finished when it returns, so a signal recorded after it is already set
(`HostSignal`). On a GPU an op is only queued when it returns: an `EventSignal` is an event recorded
on the lane's stream, set when the device reaches it (`is_set` is a query, no host sync), and its
time is the device's. The hide window, phase times and "done by then" counts come from signals,
never from the host clock at launch.

    clock = DeviceClock(device)            # one per request: its origin is the request's start
    sig = clock.record()                   # on the calling thread's current stream
    sig.is_set(); sig.wait(); sig.done_at()
    window = Window(); window.arm(sig)     # the draft lane polls window.is_set() between steps
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import torch


class Signal(Protocol):
    def is_set(self) -> bool:
        """Has the work finished? Never blocks."""

    def wait(self) -> None:
        """Block until the work has finished."""

    def done_at(self) -> float:
        """When the work finished, in seconds on the request's clock (perf_counter scale); waits."""


class HostSignal:
    """Work that had finished when the call that queued it returned (a CPU)."""

    def __init__(self, at: float | None = None):
        self.at = time.perf_counter() if at is None else at

    def is_set(self) -> bool:
        return True

    def wait(self) -> None:
        pass

    def done_at(self) -> float:
        return self.at


class EventSignal:
    """A CUDA event recorded on a stream, timed against the clock's origin event."""

    def __init__(self, clock: "DeviceClock", stream=None):
        self.clock = clock
        self.event = torch.cuda.Event(enable_timing=True)
        self.event.record(stream)

    def is_set(self) -> bool:
        return self.event.query()

    def wait(self) -> None:
        self.event.synchronize()

    def done_at(self) -> float:
        self.wait()
        return self.clock.origin_host + self.clock.origin.elapsed_time(self.event) / 1e3


class DeviceClock:
    """Records signals for one request. On a GPU the origin is an event recorded at the request's
    start, placed at the host time of its recording: device times are exact relative to each
    other and approximately aligned with the host clock (the origin completes as soon as the
    stream reaches it, which it does at once when the previous request ended with a host read)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.asynchronous = self.cuda  # a launch returns before the work is done
        self.origin_host = time.perf_counter()
        if self.cuda:
            self.origin = torch.cuda.Event(enable_timing=True)
            self.origin.record()

    def record(self, stream=None) -> Signal:
        """A signal for the work queued so far on `stream` (default: the calling thread's
        current stream)."""
        return EventSignal(self, stream) if self.cuda else HostSignal()


class Window:
    """The hide window: open until the signal it is armed with is set (the target's prefill is
    done, on the device), or until it is closed early (the target lane failed). `is_set` is what
    the draft lane polls between tree steps, like a threading.Event's."""

    def __init__(self):
        self._signal: Signal | None = None
        self._closed = threading.Event()

    def arm(self, signal: Signal) -> None:
        self._signal = signal

    def close(self) -> None:
        """End the window now unless it is armed (the target lane failed before its prefill was
        launched): an armed window ends with its signal."""
        if self._signal is None:
            self._closed.set()

    def is_set(self) -> bool:
        if self._closed.is_set():
            return True
        signal = self._signal
        return signal is not None and signal.is_set()

    def end(self) -> Signal | None:
        """The signal that ended the window (None when it was closed before being armed)."""
        return self._signal
