"""The hide window's two lanes for the engine, one API on both machines.

CPU: the draft lane is a worker thread with `draft_threads` intra-op threads and the target lane
keeps the rest of the cores (`cpu_lanes.cpu_split`). GPU with `draft_sms`: the draft lane's
thread enqueues on the draft stream of a green-context split (`cuda_lanes.lanes_for_device`: the
draft gets `draft_sms` SMs, the target the remainder), the target lane on the target stream. A
GPU without `draft_sms` keeps both on the current stream (kernels from either take every SM).

    lanes = WindowLanes.for_engine(device, spec, splits)
    done = CpuLane("draft", lanes.draft_threads).submit(lambda: run_in(lanes.draft(), ...))
    with lanes.target():
        ...                                  # target preparation and prefill
    done.wait(); lanes.join()                # later work on the current stream sees both lanes'
    ...
    WindowLanes.finish_request(device, draft_sms)   # the request's end
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from phide.runtime.cpu_lanes import cpu_split, reserved_threads


class WindowLanes:
    def __init__(self, *, target_threads: int = 0, draft_threads: int = 0, cuda_lanes=None):
        self.target_threads, self.draft_threads = target_threads, draft_threads
        self.cuda_lanes = cuda_lanes  # (target CudaLane, draft CudaLane) or None

    @classmethod
    def for_engine(cls, device: torch.device, draft_threads: int, draft_sms: int, splits: dict) -> "WindowLanes":
        """splits: the engine's cache of green-context lanes per draft_sms (a split is made once
        per engine and SM count: creating green contexts costs milliseconds)."""
        if device.type == "cpu":
            target, draft = cpu_split(torch.get_num_threads(), draft_threads)
            return cls(target_threads=target, draft_threads=draft)
        if device.type == "cuda" and draft_sms > 0:
            if draft_sms not in splits:
                from phide.runtime.cuda_lanes import lanes_for_device

                splits[draft_sms] = lanes_for_device(device, draft_sms)
            return cls(cuda_lanes=splits[draft_sms])
        return cls()

    def describe(self) -> str:
        if self.cuda_lanes is not None:
            split = self.cuda_lanes[1].green_split
            return f"green contexts: draft {split.draft_sms} SMs, target {split.target_sms}" if split else "streams"
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

    @staticmethod
    def finish_request(device: torch.device, draft_sms: int) -> None:
        """The request's end: its caches were allocated on the lanes' streams but last used on
        the current one; wait for that use before the allocator may hand their memory to the
        next request's lanes (record_stream on every cache tensor would do the same, piecemeal)."""
        if device.type == "cuda" and draft_sms > 0:
            torch.cuda.current_stream(device).synchronize()


def side_stream(device: torch.device, draft_sms: int, splits: dict):
    """Where a drafter's work beside the target's goes on a GPU (post-verify overlap): the draft
    stream of the engine's green-context split with `draft_sms` SMs, or with 0 a plain second
    stream (its kernels may take any SM). Made once per engine (`splits` caches it)."""
    if draft_sms > 0:
        return WindowLanes.for_engine(device, 0, draft_sms, splits).cuda_lanes[1].stream
    key = ("side stream", device.index)
    if key not in splits:
        splits[key] = torch.cuda.Stream(device)
    return splits[key]
