"""The hide window's two lanes for the engine, one API on both machines.

CPU: the draft lane is a worker thread with `draft_threads` intra-op threads and the target lane
keeps the rest of the cores (`cpu_lanes.cpu_split`). GPU: always a stream per lane
(`cuda_lanes.lanes_for_device`): with `draft_sms` the two streams of a green-context split (the
draft gets `draft_sms` SMs, the target the remainder), without it two ordinary streams (the draft
at the highest priority; kernels of either may take any SM). Never one stream for both: the
draft's kernels would queue behind the target's prefill instead of running beside it.

    lanes = WindowLanes.for_engine(device, draft_threads, draft_sms, cache)
    done = CpuLane("draft", lanes.draft_threads).submit(lambda: run_in(lanes.draft(), ...))
    with lanes.target():
        ...                                  # target preparation and prefill
        window.arm(clock.record())           # signals.py: set when the prefill is DONE
    done.wait(); lanes.join()                # later work on the current stream sees both lanes'
    ...
    lanes.finish_request()                   # the request's end
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from phide.runtime.cpu_lanes import cpu_split, reserved_threads


class WindowLanes:
    def __init__(self, *, target_threads: int = 0, draft_threads: int = 0, cuda_lanes=None):
        self.target_threads, self.draft_threads = target_threads, draft_threads
        self.cuda_lanes = cuda_lanes  # (target CudaLane, draft CudaLane) on a GPU

    @classmethod
    def for_engine(cls, device: torch.device, draft_threads: int, draft_sms: int, cache: dict) -> "WindowLanes":
        """cache: the engine's lanes per draft_sms (0: plain streams), made once per engine and
        split (creating green contexts costs milliseconds)."""
        if device.type == "cuda":
            if draft_sms not in cache:
                from phide.runtime.cuda_lanes import lanes_for_device

                cache[draft_sms] = lanes_for_device(device, draft_sms or None)
            return cls(cuda_lanes=cache[draft_sms])
        target, draft = cpu_split(torch.get_num_threads(), draft_threads)
        return cls(target_threads=target, draft_threads=draft)

    def describe(self) -> str:
        if self.cuda_lanes is not None:
            split = self.cuda_lanes[1].green_split
            if split is not None:
                return f"green contexts: draft {split.draft_sms} SMs, target {split.target_sms}"
            return "streams: draft (high priority), target; no SM split"
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


def side_lane(device: torch.device, draft_sms: int, cache: dict):
    """Where a drafter's work beside the target's goes on a GPU (post-verify overlap): the draft
    lane of the engine's lanes for `draft_sms` (a CudaLane on a green context's stream, or with 0
    a plain stream). Tensors its work reads are marked with its `record`, which a green split
    tracks."""
    return WindowLanes.for_engine(device, 0, draft_sms, cache).cuda_lanes[1]
