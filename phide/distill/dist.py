"""torch.distributed for `phide distill` under torchrun (one process: all of it is a no-op).

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; `init()` then joins the process group (NCCL on
GPUs, gloo on a CPU). Every rank holds the frozen target (replicated) and a share of the
samples; the head is wrapped in DistributedDataParallel, which averages its gradients.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str) -> str:
    """Join the process group when launched by torchrun; on GPUs each rank makes its LOCAL_RANK
    card the current one, so "cuda" means this rank's card everywhere after."""
    if not launched() or tdist.is_initialized():
        return device
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        tdist.init_process_group("nccl", device_id=torch.device("cuda", local))
        return "cuda"
    tdist.init_process_group("gloo")
    return device


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if active() else 0


def world_size() -> int:
    return tdist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        tdist.barrier()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: list[float], device="cpu") -> list[float]:
    """Element-wise sum over the ranks (logging: the global loss of a step)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


def shutdown() -> None:
    if active():
        tdist.destroy_process_group()
