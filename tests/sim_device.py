"""A simulated asynchronous device for tests: what a GPU does to the host, on a CPU.

On a GPU a launch returns at once and the work completes later; on a CPU it completes before the
call returns, which hides every bug that takes "launched" for "done". Here a stream is a timeline
of busy-until times: `charge(seconds)` queues that much work on the calling thread's current
stream and returns at once; a `SimSignal` recorded after it is set only when the (wall) clock
passes the stream's busy-until time. The engine sees the same interfaces as on a GPU: a device
clock (phide.runtime.signals.DeviceClock: `record()`, `asynchronous`, `origin_host`) and window
lanes (phide.runtime.window_lanes.WindowLanes: `target()`, `draft()`, `join()`, ...).

A host read does not wait for the stream here (a GPU's would): so the draft's host loop may run
ahead of its device work, and a window count taken from host timestamps instead of signals on
the draft's stream is caught even where a step's read would hide it today. The reads themselves
are counted by `HostReads` below.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import torch
import torch.utils._python_dispatch


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


# ---------------------------------------------------------------------------------------------
# Host reads of device data, counted where they happen.

_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "__iter__",
          "__array__", "nonzero", "masked_select", "unique", "unique_consecutive", "equal",
          "_local_scalar_dense", "repeat_interleave"}  # the last ones: shapes that depend on the data


class DeviceTensor(torch.Tensor):
    """A CPU tensor standing for one on the device: what is computed from it stays a DeviceTensor
    (subclass propagation), and every read of its values by the host (`item`, `tolist`, `cpu`,
    `bool(t)`, iteration, and ops whose output shape depends on the data, each a host sync on a
    GPU) is appended to `HostReads.log` while a HostReads is active."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        # (`.to(device)` is not counted: on a CPU the engine's device is the host itself)
        if name in _READS:
            HostReads.note(name, args)
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        if name in ("cpu", "numpy", "tolist"):  # on the host now
            return out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out
        return torch._tensor._convert(out, cls)


class HostReads:
    """Counts host reads of DeviceTensors inside `with HostReads() as reads:`; uploads made by
    phide.runtime.transfers.Transfers are DeviceTensors then (their packed buffer is), so
    everything a request computes from its inputs is one too. Transfers.download's one packed
    read is counted as one read ("download"), the reads of its host result are not."""

    active: "HostReads | None" = None

    def __init__(self):
        self.log: list[str] = []

    @classmethod
    def note(cls, name, args) -> None:
        if cls.active is not None and not getattr(cls.active, "_quiet", False):
            cls.active.log.append(name)

    def __enter__(self):
        from phide.runtime import transfers

        self._saved = (transfers.Transfers.upload, transfers.Transfers.download)
        upload, download = self._saved
        reads = self

        def fake_upload(xfer, *parts):
            return [t.as_subclass(DeviceTensor) for t in upload(xfer, *parts)]

        def fake_download(xfer, *parts):
            reads.log.append("download")
            reads._quiet = True  # the packing inside is the one read just counted
            try:
                return [t.as_subclass(torch.Tensor) for t in download(xfer, *parts)]
            finally:
                reads._quiet = False

        transfers.Transfers.upload, transfers.Transfers.download = fake_upload, fake_download
        HostReads.active = self
        return self

    def __exit__(self, *exc):
        from phide.runtime import transfers

        transfers.Transfers.upload, transfers.Transfers.download = self._saved
        HostReads.active = None
        return False

    def count(self, name: str | None = None) -> int:
        return len(self.log) if name is None else self.log.count(name)


class FakeCuda:
    """torch.cuda's stream and graph API faked the way a device behaves, for code that captures
    CUDA graphs, on a CPU (`with FakeCuda(monkeypatch) as cuda:`).

    A graph capture RECORDS the ATen ops dispatched inside it (a TorchDispatchMode), with the very
    tensors they read and wrote; `replay()` runs that op list again: every op re-reads its inputs'
    current contents and writes into the tensors the capture produced (the fixed addresses a real
    graph writes), in-place ops mutate their captured targets. Python logic inside the capture is
    not replayed, as on a GPU: a step whose result depends on host-side state read at capture
    time replays stale work, and a host read of a device value while capturing raises (CUDA's
    capture refuses it). Counts: `replays`, `captures`; streams carry a `context` ("primary" or a
    green split's) and a `cuda_stream` handle."""

    class Stream:
        def __init__(self, name="side", context="primary"):
            self.name, self.context, self.cuda_stream = name, context, id(self)

        def wait_stream(self, other):
            pass

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.current = FakeCuda.Stream("default")
        self.replays = 0
        self.captures = 0
        fake = self

        class Graph:
            def __init__(self):
                self.ops = None
                self.context = None

            def replay(self):
                fake.replays += 1
                for func, args, kwargs, out in self.ops:
                    result = func(*args, **kwargs)
                    for dst, src in zip(_tensors(out), _tensors(result)):
                        if dst is not src:
                            dst.copy_(src)

        self.Graph = Graph

    def __enter__(self):
        from contextlib import contextmanager

        fake = self
        mp = self.monkeypatch

        @contextmanager
        def stream(s):
            before, fake.current = fake.current, s
            try:
                yield
            finally:
                fake.current = before

        @contextmanager
        def graph(g, stream=None, capture_error_mode="global"):
            assert capture_error_mode == "thread_local", "capture must not catch other threads' allocations"
            g.context = stream.context if stream is not None else fake.current.context
            recorder = _Recorder()
            with fake_stream(stream or fake.current), recorder:
                yield
            g.ops = recorder.ops
            fake.captures += 1

        fake_stream = stream
        mp.setattr(torch.cuda, "Stream", lambda device=None, priority=0: FakeCuda.Stream("side"))
        mp.setattr(torch.cuda, "stream", stream)
        mp.setattr(torch.cuda, "current_stream", lambda device=None: fake.current)
        mp.setattr(torch.cuda, "CUDAGraph", self.Graph)
        mp.setattr(torch.cuda, "graph", graph)
        mp.setattr(torch.cuda, "synchronize", lambda device=None: None)
        return self

    def __exit__(self, *exc):
        return False


def _tensors(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for t in x if isinstance(t, torch.Tensor)]
    return []


class _Recorder(torch.utils._python_dispatch.TorchDispatchMode):
    """The ops of a capture, in order, with their argument and output tensors. Views alias what
    they view (nothing to replay); ops whose schema aliases an output to an input (in-place, out=)
    mutate that input on replay. Composite ops that MAY alias (`to`, `reshape`, `contiguous`:
    a copy when they convert or move) are replayed: a copy made at capture is refreshed."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            raise RuntimeError("operation not permitted when stream is capturing (a host read inside a CUDA graph)")
        out = func(*args, **kwargs)
        if not func.is_view or torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
            self.ops.append((func, args, kwargs, out))
        return out
