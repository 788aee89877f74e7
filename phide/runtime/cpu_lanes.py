"""CPU lanes: the CPU analog of an SM partition.

A lane is a place where work runs with reserved resources; a signal says that work is done. On a
CPU the resource is intra-op threads: PyTorch's intra-op thread count is per calling thread
(OpenMP's nthreads ICV), so a worker thread that sets its own count and a main thread that lowers
its count while the worker runs split the cores between them (e.g. 1 + 1 of 2 cores).

    lane = CpuLane("draft", threads=1)
    done = lane.submit(fn, *args)           # runs fn on the lane's thread with 1 intra-op thread
    with reserved_threads(1):               # the calling thread keeps 1 thread meanwhile
        ...                                 # target work
    result = done.wait()                    # re-raises fn's exception on the caller

`threads=0` leaves the count alone (PyTorch's default: all cores, for every thread).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch


class Signal:
    """Set when a lane's work item finishes; carries its result or exception."""

    def __init__(self):
        self._event = threading.Event()
        self._result = None
        self._error: BaseException | None = None

    def _finish(self, result=None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._event.set()

    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None):
        """Block until done (or timeout: raises TimeoutError); returns the result, re-raises the error."""
        if not self._event.wait(timeout):
            raise TimeoutError("lane work did not finish in time")
        if self._error is not None:
            raise self._error
        return self._result

    @property
    def error(self) -> BaseException | None:
        return self._error


@contextmanager
def reserved_threads(n: int):
    """Run the block with n intra-op threads on the calling thread (0: unchanged); restores after."""
    with ThreadShare(n) as share:
        share.lower()
        yield


class ThreadShare:
    """The calling thread's intra-op threads, lowered to `n` (0: unchanged) while a lane works
    beside it (`lower`) and back at `restore` (idempotent; `with` restores on exit). Unlike
    `reserved_threads` the two ends can sit in different places of a loop."""

    def __init__(self, n: int):
        self.n = n
        self._before: int | None = None

    def lower(self) -> None:
        if self.n > 0 and self._before is None:
            self._before = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def restore(self) -> None:
        if self._before is not None:
            torch.set_num_threads(self._before)
            self._before = None

    def __enter__(self) -> "ThreadShare":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


class CpuLane:
    """One daemon worker thread per submitted item (a request's draft lane lives for one window;
    thread start is ~0.1 ms), running with `threads` intra-op threads."""

    def __init__(self, name: str, threads: int = 0):
        self.name, self.threads = name, int(threads)

    def submit(self, fn, *args, **kwargs) -> Signal:
        signal = Signal()

        def run():
            try:
                with reserved_threads(self.threads):
                    signal._finish(fn(*args, **kwargs))
            except BaseException as exc:  # handed to whoever waits on the signal
                signal._finish(error=exc)

        threading.Thread(target=run, name=f"phide-{self.name}-lane", daemon=True).start()
        return signal


def cpu_split(total: int, draft_threads: int) -> tuple[int, int]:
    """(target threads, draft threads) for a window in which the draft reserves `draft_threads`
    of `total` cores; the target keeps the rest (at least 1). draft_threads=0: no split (0, 0)."""
    if draft_threads <= 0:
        return 0, 0
    draft = min(draft_threads, max(total - 1, 1))
    return max(total - draft, 1), draft
