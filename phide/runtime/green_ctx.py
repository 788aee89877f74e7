"""SM split through CUDA green contexts: the GPU analog of `cpu_lanes.cpu_split`.

The draft gets a few SMs of its own while the target's prefill runs on the rest of the SAME split:
one `cuDevSmResourceSplitByCount(nbGroups=1, minCount=N)` call gives group 0 (draft) and the
remainder (target), each turned into a green context with one NON_BLOCKING stream. Two separate
splits of the whole device could overlap (pytorch/pytorch#195378), and work launched outside a
green context (the primary context, plain torch streams) may use every SM, the draft's included,
so the target must run in the complementary context too.

    with GreenSplit.create(device_index=0, draft_sms=16) as split:   # 16 of 132 SMs on an H100
        split.draft_sms, split.target_sms       # what the driver actually granted (read back)
        split.draft_torch_stream                # torch.cuda.ExternalStream for the draft lane
        split.record(tensor, "draft")           # tensor.record_stream(draft stream), tracked
        ...
        del tensor                              # before close: see below

Tensors marked as used by a green stream (`record`, `CudaLane.record`, `cuda_lanes.hand_over`)
must be freed before the split closes: the caching allocator records an event on every stream a
tensor was recorded on when the tensor is freed, and on a destroyed stream that is a crash. The
split keeps weak references to them, and `close()` refuses (PhideError, nothing destroyed) while
one is alive. Tensors recorded with a bare `tensor.record_stream(...)` are not seen.

The driver sits behind `Driver` so tests can fake it; `CudaBindingsDriver` imports
`cuda.bindings.driver` lazily, so importing this module needs neither a GPU nor cuda-bindings.
Split granularity (minimum SMs per group, SM-count multiple) comes from the driver on CUDA 13
(`minSmPartitionSize`, `smCoscheduledAlignment`), else from the per-architecture table of the
CUDA 12.4-12.6 driver docs (`default_granularity`).
"""

from __future__ import annotations

import gc
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

from phide.errors import PhideError

# Any value below the device's range is clamped to its highest priority by cuGreenCtxStreamCreate
# (lower number = higher priority); the draft is the latency-critical side.
HIGHEST_STREAM_PRIORITY = -1000
LANES = ("draft", "target")


@dataclass(frozen=True)
class SmGranularity:
    """How finely a device's SMs can be split: groups are >= min_partition SMs and a multiple of
    alignment SMs."""

    min_partition: int
    alignment: int


def default_granularity(cc_major: int) -> SmGranularity:
    """Documented split granularity per compute-capability major (CUDA 12.4-12.6 driver docs):
    9.0+ min 8, multiple of 8; 8.x min 4, multiple of 2; 7.x min 2, multiple of 2; 6.x min 1."""
    if cc_major >= 9:
        return SmGranularity(8, 8)
    if cc_major == 8:
        return SmGranularity(4, 2)
    if cc_major == 7:
        return SmGranularity(2, 2)
    return SmGranularity(1, 1)


@dataclass(frozen=True)
class DeviceSmResource:
    """A device's whole SM resource: its SM count, split granularity, and the driver's own handle
    (opaque here; only the driver that made it reads it)."""

    sm_count: int
    granularity: SmGranularity
    raw: Any = None


@dataclass(frozen=True)
class SmSplit:
    """A planned split, in SMs: the draft group (request rounded up to the granularity), the
    target's remainder, and what the caller asked for."""

    draft_sms: int
    target_sms: int
    requested: int


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def plan_sm_split(total_sms: int, requested_draft_sms: int, min_partition: int,
                  alignment: int) -> SmSplit:
    """Round the draft request UP to a legal group (>= min_partition, multiple of alignment) and
    give the target the rest. Refuses requests <= 0 and ones leaving the target < one partition."""
    if min_partition <= 0 or alignment <= 0:
        raise PhideError(f"bad SM split granularity: min {min_partition}, multiple of {alignment}")
    if requested_draft_sms <= 0:
        raise PhideError(f"draft SMs must be positive, got {requested_draft_sms}")
    draft = _round_up(max(requested_draft_sms, min_partition), alignment)
    target = total_sms - draft
    if target < min_partition:
        raise PhideError(
            f"a draft of {requested_draft_sms} SMs (rounded up to {draft}: groups are >= "
            f"{min_partition} SMs, multiples of {alignment}) leaves the target {max(target, 0)} "
            f"of {total_sms} SMs; it needs at least {min_partition}")
    return SmSplit(draft_sms=draft, target_sms=target, requested=requested_draft_sms)


def candidate_draft_sms(total_sms: int, min_partition: int, alignment: int,
                        max_fraction: float = 0.25) -> list[int]:
    """Draft sizes a planner may try: multiples of the smallest legal group, up to max_fraction of
    the device, each leaving the target a legal remainder (132-SM H100: [8, 16, 24, 32])."""
    step = _round_up(min_partition, alignment)
    limit = int(total_sms * max_fraction)
    return [n for n in range(step, limit + 1, step) if total_sms - n >= min_partition]


class Driver(Protocol):
    """The driver calls a green-context split needs. Handles (resources, descriptors, contexts,
    streams) are opaque objects; a stream handle must convert with int() to its CUstream pointer."""

    def device_sm_resource(self, device_index: int) -> DeviceSmResource: ...

    def split_by_count(self, resource: DeviceSmResource, min_count: int) -> tuple[Any, Any]:
        """ONE split: (group 0 of >= min_count SMs, the remainder)."""

    def generate_desc(self, sm_resource: Any) -> Any: ...

    def create_green_context(self, device_index: int, desc: Any) -> Any: ...

    def create_green_stream(self, green_ctx: Any, priority: int) -> Any:
        """A NON_BLOCKING stream whose kernels run on green_ctx's SMs."""

    def green_context_sm_count(self, green_ctx: Any) -> int:
        """SMs the context actually got (may be fewer than asked)."""

    def destroy_stream(self, stream: Any) -> None: ...

    def destroy_green_context(self, green_ctx: Any) -> None: ...


class CudaBindingsDriver:
    """`Driver` over `cuda.bindings.driver` (cuda-python, CUDA >= 12.4 driver). Every call's
    CUresult is checked; a failure raises PhideError naming the call and the error name.
    `bindings` replaces the module (tests)."""

    def __init__(self, bindings: Any = None):
        if bindings is None:
            try:
                from cuda.bindings import driver as bindings
            except ImportError as exc:
                raise PhideError("CUDA green contexts need the cuda-bindings package "
                                 f"(pip install cuda-bindings): {exc}") from exc
        self._drv = bindings
        self._devices: dict[int, Any] = {}  # device index -> CUdevice

    def _call(self, name: str, *args):
        """Run bindings.<name>(*args); return its outputs (None, one value or a tuple)."""
        fn = getattr(self._drv, name, None)
        if fn is None:
            raise PhideError(f"CUDA driver call {name} is missing from cuda.bindings "
                             "(green contexts need CUDA 12.4+ bindings)")
        try:
            err, *outs = fn(*args)
        except PhideError:
            raise
        except Exception as exc:  # e.g. libcuda.so not found: cuda-python raises on first use
            raise PhideError(f"CUDA driver call {name} failed: {exc}") from exc
        if err != self._drv.CUresult.CUDA_SUCCESS:
            raise PhideError(f"CUDA driver call {name} failed: {getattr(err, 'name', err)}")
        if not outs:
            return None
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _device(self, device_index: int):
        if device_index not in self._devices:
            self._call("cuInit", 0)  # no-op when torch already initialised the driver
            self._devices[device_index] = self._call("cuDeviceGet", device_index)
        return self._devices[device_index]

    def device_sm_resource(self, device_index: int) -> DeviceSmResource:
        dev = self._device(device_index)
        raw = self._call("cuDeviceGetDevResource", dev,
                         self._drv.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM)
        # CUDA 13 reports the granularity; older drivers leave the fields 0 (or lack them).
        min_partition = int(getattr(raw.sm, "minSmPartitionSize", 0) or 0)
        alignment = int(getattr(raw.sm, "smCoscheduledAlignment", 0) or 0)
        if min_partition > 0 and alignment > 0:
            granularity = SmGranularity(min_partition, alignment)
        else:
            cc_major = self._drv.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
            major = self._call("cuDeviceGetAttribute", cc_major, dev)
            granularity = default_granularity(int(major))
        return DeviceSmResource(int(raw.sm.smCount), granularity, raw)

    def split_by_count(self, resource: DeviceSmResource, min_count: int) -> tuple[Any, Any]:
        groups, n_groups, remainder = self._call("cuDevSmResourceSplitByCount", 1, resource.raw,
                                                 0, min_count)
        if int(n_groups) < 1:
            raise PhideError(f"cuDevSmResourceSplitByCount made no group of {min_count} SMs "
                             f"out of {resource.sm_count}")
        if remainder is None or int(remainder.sm.smCount) == 0:
            raise PhideError(f"cuDevSmResourceSplitByCount left no SMs for the target after a "
                             f"{min_count}-SM draft group")
        return groups[0], remainder

    def generate_desc(self, sm_resource: Any) -> Any:
        return self._call("cuDevResourceGenerateDesc", [sm_resource], 1)

    def create_green_context(self, device_index: int, desc: Any) -> Any:
        # DEFAULT_STREAM was required by the 12.4 driver and is what torch 2.14 passes.
        return self._call("cuGreenCtxCreate", desc, self._device(device_index),
                          self._drv.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM)

    def create_green_stream(self, green_ctx: Any, priority: int) -> Any:
        return self._call("cuGreenCtxStreamCreate", green_ctx,
                          self._drv.CUstream_flags.CU_STREAM_NON_BLOCKING, priority)

    def green_context_sm_count(self, green_ctx: Any) -> int:
        raw = self._call("cuGreenCtxGetDevResource", green_ctx,
                         self._drv.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM)
        return int(raw.sm.smCount)

    def destroy_stream(self, stream: Any) -> None:
        self._call("cuStreamDestroy", stream)

    def destroy_green_context(self, green_ctx: Any) -> None:
        self._call("cuGreenCtxDestroy", green_ctx)


def _activate_primary_context(device_index: int) -> None:
    """cuGreenCtxCreate retains the device's primary context; having it live first (torch shares
    it) avoids an init/teardown per green context, as the driver docs advise."""
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.zeros(1, device=f"cuda:{device_index}")  # first allocation creates the context


class GreenSplit:
    """A device's SMs split once into a draft green context and a target green context, one stream
    each. Create with `GreenSplit.create`; close (or use as a context manager) after the work on
    both streams has finished and the tensors recorded on them (`record`) are freed: streams are
    destroyed before their contexts."""

    def __init__(self, device_index: int, plan: SmSplit, driver: Driver):
        self.device_index = device_index
        self.plan = plan  # what was asked (rounded); draft_sms/target_sms are what was granted
        self.draft_sms = 0
        self.target_sms = 0
        self.draft_context = self.target_context = None
        self.draft_stream = self.target_stream = None  # raw CUstream handles
        self._driver = driver
        self._torch_streams: dict[str, Any] = {}
        # lane -> {id(tensor): weakref}: tensors recorded on the lane's stream through `record`.
        # No weakref callbacks (they could run mid-iteration from a GC): dead ones are pruned.
        self._recorded: dict[str, dict[int, weakref.ref]] = {lane: {} for lane in LANES}
        self._prune_at = dict.fromkeys(LANES, 64)
        self._closed = False

    @classmethod
    def create(cls, device_index: int, draft_sms: int, driver: Driver | None = None, *,
               draft_priority: int = HIGHEST_STREAM_PRIORITY,
               target_priority: int = 0) -> GreenSplit:
        """Split `device_index`'s SMs: `draft_sms` (rounded up to the device's granularity) for the
        draft, the remainder for the target. Warns when the driver grants fewer SMs than planned."""
        if driver is None:
            driver = CudaBindingsDriver()
            _activate_primary_context(device_index)
        device = driver.device_sm_resource(device_index)
        gran = device.granularity
        plan = plan_sm_split(device.sm_count, draft_sms, gran.min_partition, gran.alignment)
        split = cls(device_index, plan, driver)
        try:
            draft_group, remainder = driver.split_by_count(device, plan.draft_sms)  # the ONE split
            split._open_lane("draft", draft_group, draft_priority)
            split._open_lane("target", remainder, target_priority)
        except BaseException:
            split._teardown(quiet=True)  # the original error is the one worth reporting
            raise
        if split.draft_sms < plan.draft_sms or split.target_sms < plan.target_sms:
            warnings.warn(
                f"green contexts on cuda:{device_index} got {split.draft_sms} draft + "
                f"{split.target_sms} target SMs; planned {plan.draft_sms} + {plan.target_sms}",
                RuntimeWarning, stacklevel=2)
        return split

    def _open_lane(self, lane: str, sm_resource: Any, priority: int) -> None:
        """Green context + stream for `lane` ("draft"/"target"), then its real SM count. Each handle
        is stored as soon as it exists, so a failure part-way still tears it down."""
        desc = self._driver.generate_desc(sm_resource)
        ctx = self._driver.create_green_context(self.device_index, desc)
        setattr(self, f"{lane}_context", ctx)
        setattr(self, f"{lane}_stream", self._driver.create_green_stream(ctx, priority))
        setattr(self, f"{lane}_sms", self._driver.green_context_sm_count(ctx))

    @property
    def shortfall(self) -> tuple[int, int]:
        """(draft, target) SMs granted fewer than planned; (0, 0) when the driver gave all."""
        return (max(self.plan.draft_sms - self.draft_sms, 0),
                max(self.plan.target_sms - self.target_sms, 0))

    @property
    def closed(self) -> bool:
        return self._closed

    def _torch_stream(self, lane: str):
        if self._closed:
            raise PhideError("GreenSplit is closed")
        if lane not in self._torch_streams:
            import torch
            if not torch.cuda.is_available():
                raise PhideError("torch streams for green contexts need torch with CUDA")
            handle = self.draft_stream if lane == "draft" else self.target_stream
            # ExternalStream does not own the stream: close() destroys it.
            self._torch_streams[lane] = torch.cuda.ExternalStream(int(handle),
                                                                  device=self.device_index)
        return self._torch_streams[lane]

    @property
    def draft_torch_stream(self):
        """torch.cuda.ExternalStream over the draft's green stream (made on first use)."""
        return self._torch_stream("draft")

    @property
    def target_torch_stream(self):
        """torch.cuda.ExternalStream over the target's green stream (made on first use)."""
        return self._torch_stream("target")

    def lane_of(self, stream) -> str | None:
        """"draft" / "target" when `stream` is one of this split's torch streams, else None."""
        for lane, own in self._torch_streams.items():
            if own is stream:
                return lane
        return None

    def record(self, tensor, lane: str) -> None:
        """`tensor.record_stream` on `lane`'s ("draft" / "target") green stream: the caching
        allocator will not reuse the tensor's memory before the work enqueued there so far is
        done. The split tracks the tensor (weakly): close() refuses while it is alive."""
        if lane not in LANES:
            raise PhideError(f"GreenSplit lanes are {LANES}, got {lane!r}")
        tensor.record_stream(self._torch_stream(lane))  # refuses on a closed split
        refs = self._recorded[lane]
        old = refs.get(id(tensor))
        if old is not None and old() is tensor:
            return
        if len(refs) >= self._prune_at[lane]:  # drop the dead now and then (amortised)
            for key in [k for k, ref in refs.items() if ref() is None]:
                del refs[key]
            self._prune_at[lane] = max(64, 2 * len(refs))
        refs[id(tensor)] = weakref.ref(tensor)  # replaces a dead tensor's entry under a reused id

    def recorded_tensors(self) -> dict[str, int]:
        """Per lane, how many tensors recorded through `record` are still alive."""
        return {lane: sum(ref() is not None for ref in list(refs.values()))
                for lane, refs in self._recorded.items()}

    def _still_recorded(self) -> str | None:
        """Why close() must refuse (tensors recorded on a green stream alive), or None."""
        counts = self.recorded_tensors()
        if any(counts.values()):
            gc.collect()  # the ones only reference cycles kept
            counts = self.recorded_tensors()
        if not any(counts.values()):
            return None
        parts = [f"{n} tensor{'s are' if n > 1 else ' is'} still recorded on the {lane} stream"
                 for lane, n in counts.items() if n]
        return (" and ".join(parts) + "; free them (del) before closing the split (the caching "
                "allocator records their frees on those streams, which close() destroys)")

    def _teardown(self, quiet: bool) -> list[str]:
        """Destroy streams, then contexts, trying every one; returns the failures' messages."""
        self._closed = True
        self._torch_streams.clear()
        failures: list[str] = []
        steps = [("draft_stream", self._driver.destroy_stream),
                 ("target_stream", self._driver.destroy_stream),
                 ("draft_context", self._driver.destroy_green_context),
                 ("target_context", self._driver.destroy_green_context)]
        for attr, destroy in steps:
            handle = getattr(self, attr)
            if handle is None:
                continue
            setattr(self, attr, None)
            try:
                destroy(handle)
            except Exception as exc:  # keep going: later handles must still be released
                failures.append(f"{attr}: {exc}")
        if failures and not quiet:
            raise PhideError("GreenSplit teardown failed: " + "; ".join(failures))
        return failures

    def close(self) -> None:
        """Destroy both streams, then both contexts. Idempotent. Refuses with PhideError, and
        destroys nothing, while tensors recorded on either stream through `record` are alive."""
        if self._closed:
            return
        why = self._still_recorded()
        if why is not None:
            raise PhideError(f"GreenSplit.close(): {why}")
        self._teardown(quiet=False)

    def __enter__(self) -> GreenSplit:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self._closed:
            # The error's traceback may hold the very tensors that keep the split open: leave it
            # open (its streams and contexts leak) rather than hide the error behind close()'s.
            why = self._still_recorded()
            if why is not None:
                warnings.warn(f"GreenSplit left open after an error: {why}", RuntimeWarning,
                              stacklevel=2)
                return
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"GreenSplit(cuda:{self.device_index}, draft={self.draft_sms} SMs, "
                f"target={self.target_sms} SMs, {state})")
