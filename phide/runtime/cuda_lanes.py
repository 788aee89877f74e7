"""CUDA lanes: `cpu_lanes.CpuLane`'s API over CUDA streams, so one scheduler drives both.

A lane is a stream; a signal is a CUDA event recorded after the lane's work. CUDA launches are
asynchronous, so `submit` runs fn on the calling thread (no worker thread): fn only *enqueues*
kernels on the lane's stream and returns at once, and the two lanes' kernels overlap on the GPU.

    target, draft = lanes_for_device(0, draft_sms=16)   # green contexts: draft owns 16 SMs
    done = draft.submit(draft_step, tokens)             # enqueued on the draft stream
    prefill = target.submit(target_prefill, inputs)     # enqueued on the target stream
    tree = done.wait()        # the CURRENT stream waits for the draft's event (no host sync)
    hand_over(tree, draft, target)                      # target stream may now read `tree`
    tree = done.synchronize() # or: block the host until the draft's work has finished
    del tree, done            # tensors recorded on a green lane (signals hold results too)
                              # are freed before the split closes
    target.green_split.close()

Differences from CpuLane: `wait()` orders streams instead of blocking the host, and its timeout
is ignored (a device-side wait cannot time out); fn's exceptions are raised when fn *enqueues*,
so they are captured and re-raised by wait()/synchronize() as CpuLane does, but errors inside
kernels surface later, at some synchronizing call. Importing this module needs no GPU: torch.cuda
is only touched when a lane is made or used.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from phide.errors import PhideError
from phide.runtime.green_ctx import HIGHEST_STREAM_PRIORITY, Driver, GreenSplit


class CudaSignal:
    """Marks the end of one submitted item on a lane's stream; carries fn's return value (tensors
    that are valid once the event has fired) or the exception fn raised while enqueuing."""

    def __init__(self, event, device: torch.device, result=None, error: Exception | None = None):
        self._event = event  # torch.cuda.Event recorded on the lane's stream after fn's work
        self._device = device
        self._result, self._error = result, error

    @property
    def event(self):
        return self._event

    @property
    def error(self) -> Exception | None:
        return self._error

    def done(self) -> bool:
        """Whether the GPU has finished the item (non-blocking event query)."""
        return self._error is not None or self._event.query()

    def wait(self, timeout: float | None = None):
        """Make the *current* stream (of the lane's device) wait for the item, without blocking
        the host; returns fn's result, re-raises its exception. `timeout`: CpuLane parity only."""
        if self._error is not None:
            raise self._error
        self._event.wait(torch.cuda.current_stream(self._device))
        return self._result

    def synchronize(self):
        """Block the host until the item has run on the GPU; returns the result / re-raises."""
        if self._error is not None:
            raise self._error
        self._event.synchronize()
        return self._result


class CudaLane:
    """Work submitted here is enqueued on `stream` (a torch.cuda.Stream or ExternalStream).

    wait_for_caller: before fn, the lane's stream waits for what the caller's current stream has
    enqueued so far (e.g. input tensors being prepared), as CpuLane's fn sees all earlier host
    work. It waits only for work already enqueued, so it cannot stall behind the other lane.
    owner: kept alive with the lane (the GreenSplit whose stream this is)."""

    def __init__(self, name: str, stream, *, wait_for_caller: bool = True, owner=None):
        self.name, self.stream = name, stream
        self.wait_for_caller = wait_for_caller
        self.owner = owner

    @property
    def device(self) -> torch.device:
        return self.stream.device

    @property
    def green_split(self) -> GreenSplit | None:
        """The GreenSplit that owns this lane's stream, or None for an ordinary stream."""
        return self.owner if isinstance(self.owner, GreenSplit) else None

    def record(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mark `tensor`'s memory as in use by this lane's stream (`tensor.record_stream`): the
        caching allocator will not hand it out again before the work enqueued here so far is
        done. On a green split's stream the split tracks the tensor, and `close()` refuses while
        it is alive (its free would record an event on the destroyed stream). Returns tensor."""
        split = self.green_split
        if split is None:
            tensor.record_stream(self.stream)
            return tensor
        if split.closed:
            raise PhideError(f"{self!r}: its GreenSplit is closed; nothing may be recorded on it")
        lane = split.lane_of(self.stream)
        if lane is None:
            raise PhideError(f"{self!r}: its stream is not one of {split!r}'s streams")
        split.record(tensor, lane)
        return tensor

    def submit(self, fn, *args, **kwargs) -> CudaSignal:
        caller = torch.cuda.current_stream(self.device)
        if self.wait_for_caller and caller != self.stream:
            self.stream.wait_stream(caller)
        result, error = None, None
        with torch.cuda.stream(self.stream):
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # handed to whoever waits on the signal, as in CpuLane
                error = exc
        return CudaSignal(self.stream.record_event(), self.device, result, error)

    def __repr__(self) -> str:
        return f"CudaLane({self.name!r}, {self.stream!r})"


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return [t for t in value if isinstance(t, torch.Tensor)]
    raise TypeError(f"hand_over takes a tensor or an iterable of tensors, got {type(value)}")


def hand_over(tensor, from_lane: CudaLane, to_lane: CudaLane):
    """Let `to_lane` read tensor(s) produced on `from_lane`: the consumer stream waits for an event
    recorded now on the producer stream, and each tensor's memory is marked as in use by the
    consumer stream (`to_lane.record`), so the caching allocator will not hand it out again while
    the consumer may still read it; on a green split the tensors must be freed before it closes.
    Returns `tensor` unchanged."""
    tensors = _tensors(tensor)
    event = from_lane.stream.record_event()
    to_lane.stream.wait_event(event)
    for t in tensors:
        to_lane.record(t)
    return tensor


def _device_index(device) -> int:
    if device is None:
        return torch.cuda.current_device()
    if isinstance(device, int):
        return device
    device = torch.device(device)
    if device.type != "cuda":
        raise PhideError(f"CUDA lanes need a cuda device, got {device}")
    return device.index if device.index is not None else torch.cuda.current_device()


def lanes_for_device(device=None, draft_sms: int | None = None, *,
                     driver: Driver | None = None) -> tuple[CudaLane, CudaLane]:
    """(target_lane, draft_lane) on `device` (index, "cuda:N", torch.device; None = current).

    draft_sms given: a GreenSplit (draft_sms rounded up to the device's granularity, target gets
    the remainder of the same split); both lanes hold it (`lane.green_split`), close it with
    `lane.green_split.close()` once both lanes' work is finished and the tensors recorded on
    them (`CudaLane.record`, `hand_over`) are freed.
    draft_sms None: two ordinary streams, draft at the highest priority. NO SM isolation then:
    both run in the primary context and either may occupy every SM; priority only affects which
    blocks are scheduled next, never preempts running ones."""
    index = _device_index(device)
    if draft_sms is None:
        target = torch.cuda.Stream(device=index, priority=0)
        draft = torch.cuda.Stream(device=index, priority=HIGHEST_STREAM_PRIORITY)  # clamped
        return CudaLane("target", target), CudaLane("draft", draft)
    split = GreenSplit.create(index, draft_sms, driver)
    try:
        return (CudaLane("target", split.target_torch_stream, owner=split),
                CudaLane("draft", split.draft_torch_stream, owner=split))
    except BaseException:
        split.close()  # no lane will own it
        raise
