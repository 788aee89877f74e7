"""A process lane: work that runs in its own worker process, with its own cores and its own GIL.

Thread lanes (phide.runtime.cpu_lanes) split the cores, but not the interpreter: small models are
bound by Python dispatch, and two lanes that each dispatch hundreds of tiny ops take turns on the
GIL instead of running side by side. A process lane hosts a *service* object in a worker process
(the CPU analog of a second device), so its work really runs beside the caller's:

    lane = ProcessLane("phide.spec.remote_head:HeadService", init_data, threads=1, name="head")
    reply = lane.submit("grow", budget=24)   # returns at once; the worker runs service.grow(...)
    ...                                      # the caller works meanwhile
    tree = reply.wait()                      # the result, or LaneError with the worker's error
    lane.cancel.set()                        # work that polls `cancel` stops at its next step

The worker is a fresh interpreter (`_worker_main`) talking over a socket
pair: unlike multiprocessing's spawn it never re-runs the caller's main script, and unlike fork it
inherits no half-held lock or thread pool. The service is built in the worker as
`Service(cancel, *init_data)`. Messages are pickled over that private socket; send plain values and
numpy arrays (weights included), not tensors. Replies come back in request order. Each reply
carries the worker's perf_counter start/end of the call, so a Timeline can show the lane's work
(Linux's perf_counter is the system-wide monotonic clock).
"""

from __future__ import annotations

import collections
import importlib
import mmap
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from multiprocessing.connection import Connection

from phide.errors import DraftFault


class SharedFlag:
    """A one-byte flag shared by two processes through a memory-mapped file: threading.Event's
    set / clear / is_set, cheap enough to poll at every draft step."""

    def __init__(self, path: str | None = None):
        if path is None:
            fd, path = tempfile.mkstemp(prefix="phide-lane-flag-")
            os.write(fd, b"\0")
        else:
            fd = os.open(path, os.O_RDWR)
        self.path = path
        self._map = mmap.mmap(fd, 1)
        os.close(fd)

    def set(self) -> None:
        self._map[0] = 1

    def clear(self) -> None:
        self._map[0] = 0

    def is_set(self) -> bool:
        return self._map[0] == 1


class LaneError(DraftFault):
    """The worker raised, or died. A draft-side failure: the engine drops the drafter."""


class RemoteSignal:
    """One request's reply. `span`: (start, end) perf_counter of the call in the worker."""

    def __init__(self, lane: "ProcessLane", posted: bool = False):
        self._lane = lane
        self.posted = posted  # nobody waits on it: its error is raised at whatever wait comes next
        self._reply = None
        self.span: tuple[float, float] | None = None

    def done(self) -> bool:
        return self._reply is not None

    def wait(self, timeout: float | None = None):
        """Block until the worker answered (timeout: raises TimeoutError); returns the result,
        raises LaneError with the worker's error."""
        self._lane._receive_until(self, timeout)
        status, value = self._reply
        if status == "err":
            raise LaneError(value)
        return value


def _send(conn: Connection, obj) -> None:
    conn.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection):
    # Only ever from the other end of this lane's private socket pair (our own process).
    return pickle.loads(conn.recv_bytes())  # noqa: S301


def _serve(conn: Connection, cancel: SharedFlag) -> None:
    """The worker's loop: the first message builds the service; then one reply per request, in
    order; None (or the caller closing the socket) ends it."""
    try:
        target, args = _recv(conn)
        module, _, name = target.partition(":")
        service = getattr(importlib.import_module(module), name)(cancel, *args)
        _send(conn, ("ok", None, 0.0, 0.0))
    except Exception as exc:  # reported to the caller as the lane's start-up error
        _send(conn, ("err", f"{type(exc).__name__}: {exc}", 0.0, 0.0))
        return
    while True:
        try:
            msg = _recv(conn)
        except (EOFError, OSError):  # the caller is gone
            return
        if msg is None:
            return
        method, a, kw = msg
        start = time.perf_counter()
        try:
            reply = ("ok", getattr(service, method)(*a, **kw))
        except Exception as exc:  # every error goes back to the caller; the worker lives on
            reply = ("err", f"{type(exc).__name__}: {exc}")
        _send(conn, reply + (start, time.perf_counter()))


def _worker_main(argv: list[str]) -> None:
    fd, flag_path, threads = int(argv[0]), argv[1], int(argv[2])
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    _serve(Connection(fd), SharedFlag(flag_path))


_WORKER = "import sys; from phide.runtime.process_lane import _worker_main; _worker_main(sys.argv[1:])"


def _shutdown(conn: Connection, process: subprocess.Popen) -> None:
    try:
        _send(conn, None)
    except (OSError, ValueError):
        pass
    try:
        process.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=2.0)
    conn.close()


class ProcessLane:
    """A worker process with `threads` intra-op threads (0: PyTorch's default) hosting a
    service. Start-up (interpreter + torch import) takes about a second, so owners keep one lane
    for many requests. `close()` (or garbage collection, or interpreter exit) stops the worker."""

    def __init__(self, service: str, *init_data, threads: int = 1, name: str = "draft",
                 start_timeout: float = 120.0):
        """service: "module:Class", built in the worker as Class(cancel, *init_data)."""
        self.name, self.threads = name, int(threads)
        self.cancel = SharedFlag()
        mine, theirs = socket.socketpair()
        env = dict(os.environ)
        # The worker must import what this process imports (e.g. a source checkout on sys.path),
        # and start with its own thread count (the pool is sized at torch's first use).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        if self.threads > 0:
            env["OMP_NUM_THREADS"] = str(self.threads)
        try:
            # stdout goes to our stderr: a stray print in the worker must not corrupt our output.
            self._process = subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(theirs.fileno()), self.cancel.path, str(self.threads)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=2, env=env)
        except OSError as exc:
            mine.close()
            os.unlink(self.cancel.path)
            raise LaneError(f"cannot start the {name} lane's worker process ({exc})") from exc
        finally:
            theirs.close()
        self._conn = Connection(mine.detach())
        self._pending: collections.deque[RemoteSignal] = collections.deque()
        self._finalizer = weakref.finalize(self, _shutdown, self._conn, self._process)
        started = RemoteSignal(self)
        self._pending.append(started)
        try:
            _send(self._conn, (service, init_data))
            started.wait(start_timeout)
        except BaseException:
            self.close()
            raise
        finally:
            os.unlink(self.cancel.path)  # both sides have it mapped; the file is not needed

    def alive(self) -> bool:
        return self._finalizer.alive and self._process.poll() is None

    def submit(self, method: str, *args, **kwargs) -> RemoteSignal:
        """Ask the worker to run service.method(*args, **kwargs); returns its reply's signal."""
        return self._send(RemoteSignal(self), method, args, kwargs)

    def post(self, method: str, *args, **kwargs) -> None:
        """As submit, for a call whose result nobody needs: an error it raises in the worker is
        raised by the next wait on this lane (or by `sync`)."""
        self._send(RemoteSignal(self, posted=True), method, args, kwargs)

    def sync(self, timeout: float | None = None) -> None:
        """Wait for every request sent so far (raises a posted request's error)."""
        if self._pending:
            self._pending[-1].wait(timeout)

    def _send(self, signal: RemoteSignal, method: str, args, kwargs) -> RemoteSignal:
        if not self.alive():
            raise LaneError(f"the {self.name} lane's worker process is not running")
        try:
            _send(self._conn, (method, args, kwargs))
        except (OSError, ValueError) as exc:
            raise LaneError(f"the {self.name} lane's worker process is gone ({exc})") from exc
        self._pending.append(signal)
        return signal

    def call(self, method: str, *args, **kwargs):
        return self.submit(method, *args, **kwargs).wait()

    def _receive_until(self, signal: RemoteSignal, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not signal.done():
            if deadline is not None and not self._conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"the {self.name} lane did not answer in time")
            try:
                status, value, start, end = _recv(self._conn)
            except (EOFError, OSError) as exc:
                self.close()
                for pending in self._pending:  # nothing more will come: fail every waiter
                    pending._reply = ("err", f"the {self.name} lane's worker process died")
                self._pending.clear()
                if signal.done():
                    return
                raise LaneError(f"the {self.name} lane's worker process died") from exc
            head = self._pending.popleft()
            head._reply, head.span = (status, value), (start, end)
            if head.posted and status == "err" and head is not signal:
                raise LaneError(value)

    def close(self) -> None:
        self._finalizer()
