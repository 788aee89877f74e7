"""The hide window's two lanes for the engine, one API on both machines.

CPU: the draft lane is a worker thread with `draft_threads` intra-op threads and the target lane
keeps the rest of the cores (`cpu_lanes.cpu_split`). GPU: always a stream per lane
(`cuda_lanes.lanes_for_device`): with `draft_sms` the two streams of a green-context split (the
draft gets `draft_sms` SMs, the target the remainder), without it two ordinary streams (the draft
at the highest priority; kernels of either may take any SM). Never one stream for both: the
draft's kernels would queue behind the target's prefill instead of running beside it.

    lanes = WindowLanes.for_engine(engine.lane_splits, draft_threads, draft_sms)
    done = CpuLane("draft", lanes.draft_threads).submit(lambda: run_in(lanes.draft(), ...))
    with lanes.target():
        ...                                  # target preparation and prefill
        window.arm(clock.record())           # signals.py: set when the prefill is DONE
    done.wait(); lanes.join()                # later work on the current stream sees both lanes'
    ...
    lanes.finish_request()                   # the request's end (in a `finally`)

The engine's splits live in one `LaneSplits`: made on first use, at most MAX_SPLITS of them
(least recently used closed first), and a split the driver refuses (MPS, some MIG/vGPU setups, a
driver/cuda-bindings mismatch) is remembered once: later requests get plain streams and
`describe()` says why, never an exception.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from contextlib import nullcontext

import torch

from phide.runtime.cpu_lanes import cpu_split, reserved_threads


MAX_SPLITS = 3  # lane splits an engine keeps (each: two streams, green contexts, a graph step)


class LaneSplits:
    """The engine's CUDA lanes per draft_sms (0: plain streams), made once each (green contexts
    cost milliseconds to create): an LRU of at most `max_splits`, the evicted split closed after
    the device has drained. `make(device, draft_sms or None)` is `cuda_lanes.lanes_for_device`
    (tests inject a fake); `on_new(draft_sms, lanes)` / `on_evict(draft_sms, lanes)` let the
    engine capture and drop what it keeps per split (the draft's graph step)."""

    def __init__(self, device, *, make=None, on_new=None, on_evict=None, max_splits: int = MAX_SPLITS):
        self.device = torch.device(device)
        self._make, self.on_new, self.on_evict = make, on_new, on_evict
        self.max_splits = max_splits
        self._lanes: OrderedDict = OrderedDict()
        self._unclosed: list = []  # evicted splits whose close() refused (tensors still recorded)
        self.failed: str | None = None  # why a green split could not be made (tried once)
        self.attempts = 0  # green splits asked of the driver

    def get(self, draft_sms: int):
        """(target, draft) CudaLanes for `draft_sms`, and the reason when they are not the split
        asked for (plain streams after a refused split), else None."""
        note = None
        if draft_sms and self.failed is not None:
            draft_sms, note = 0, self.failed
        if draft_sms not in self._lanes:
            make = self._make
            if make is None:
                from phide.runtime.cuda_lanes import lanes_for_device as make
            try:
                if draft_sms:
                    self.attempts += 1
                lanes = make(self.device, draft_sms or None)
            except Exception as exc:
                if not draft_sms:
                    raise  # plain streams failing is no split problem: a broken device
                self.failed = note = f"no SM split ({type(exc).__name__}: {exc})"
                warnings.warn(f"phide: {note}; the draft lane runs on a plain stream", RuntimeWarning, stacklevel=2)
                return self.get(0)[0], note
            self._lanes[draft_sms] = lanes
            self._evict()
            if self.on_new is not None:
                self.on_new(draft_sms, lanes)
        self._lanes.move_to_end(draft_sms)
        return self._lanes[draft_sms], note

    def __contains__(self, draft_sms: int) -> bool:
        return draft_sms in self._lanes

    def _evict(self) -> None:
        while len(self._lanes) > self.max_splits:
            sms, lanes = self._lanes.popitem(last=False)
            if self.on_evict is not None:
                self.on_evict(sms, lanes)
            split = lanes[1].green_split
            if split is not None:
                torch.cuda.synchronize(self.device)  # nothing may still run on its streams
                self._unclosed.append(split)
        still = []
        for split in self._unclosed:
            try:
                split.close()
            except Exception:  # tensors recorded on it are still alive: retried at the next eviction
                still.append(split)
        self._unclosed = still


class WindowLanes:
    def __init__(self, *, target_threads: int = 0, draft_threads: int = 0, cuda_lanes=None, note=None):
        self.target_threads, self.draft_threads = target_threads, draft_threads
        self.cuda_lanes = cuda_lanes  # (target CudaLane, draft CudaLane) on a GPU
        self.note = note  # why the lanes are not the split asked for (a refused split), or None

    @classmethod
    def for_engine(cls, splits: LaneSplits, draft_threads: int, draft_sms: int) -> "WindowLanes":
        """splits: the engine's lanes per draft_sms, on its device (`LaneSplits`; on a CPU the
        lanes are a thread split instead)."""
        if splits.device.type == "cuda":
            lanes, note = splits.get(draft_sms)
            return cls(cuda_lanes=lanes, note=note)
        target, draft = cpu_split(torch.get_num_threads(), draft_threads)
        return cls(target_threads=target, draft_threads=draft)

    def describe(self) -> str:
        if self.cuda_lanes is not None:
            split = self.cuda_lanes[1].green_split
            if split is not None:
                return f"green contexts: draft {split.draft_sms} SMs, target {split.target_sms}"
            return "streams: draft (high priority), target; " + (self.note or "no SM split")
        if self.draft_threads:
            return f"threads: draft {self.draft_threads}, target {self.target_threads}"
        return "shared"

    def target(self):
        """Context for the target lane's work on the calling thread."""
        if self.cuda_lanes is not None:
            return torch.cuda.stream(self.cuda_lanes[0].stream)
        return reserved_threads(self.target_threads)

    def draft(self):
        """Context for the draft lane's work (entered on the draft lane's thread)."""
        if self.cuda_lanes is not None:
            return torch.cuda.stream(self.cuda_lanes[1].stream)
        return nullcontext()

    def join(self) -> None:
        """After both lanes' host work has ended: the current stream waits for what they enqueued,
        so the rounds that follow (on the current stream) read finished caches and features."""
        if self.cuda_lanes is not None:
            current = torch.cuda.current_stream(self.cuda_lanes[0].device)
            for lane in self.cuda_lanes:
                current.wait_stream(lane.stream)

    def finish_request(self) -> None:
        """The request's end: its caches were allocated on the lanes' streams but last used on
        the current one; wait for that use before the allocator may hand their memory to the
        next request's lanes (record_stream on every cache tensor would do the same, piecemeal)."""
        if self.cuda_lanes is not None:
            torch.cuda.current_stream(self.cuda_lanes[0].device).synchronize()


def side_lane(splits: LaneSplits, draft_sms: int):
    """Where a drafter's work beside the target's goes on a GPU (post-verify overlap): the draft
    lane of the engine's lanes for `draft_sms` (a CudaLane on a green context's stream, or with 0
    a plain stream). Tensors its work reads are marked with its `record`, which a green split
    tracks."""
    return WindowLanes.for_engine(splits, 0, draft_sms).cuda_lanes[1]
