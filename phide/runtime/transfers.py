"""Host <-> device traffic of a request's small tensors (token ids, positions, cache rows, tree
masks; top-k results, acceptance outcomes), in one place, packed and counted.

On a GPU every host-to-device copy costs a launch and every device-to-host read a host sync that
stalls the lane until its queue drains, which is exactly the overlap the hide window and the draft
loop are built for. So a verify uploads its tree's index arrays in ONE packed, pinned,
non-blocking copy and reads its outcome back in ONE packed read, and a draft step reads its
top-k back in one. Arrays of any dtype travel together as bytes and come back as views, each
part 16-byte aligned: Triton specialises a kernel on whether each pointer is 16-byte aligned, so
a view at another offset than the precompiled variants' inputs would compile a new kernel inside
a request (tests/test_precompile_coverage.py). A scalar a kernel reads is its own part. On a CPU there is no copy to save, but the same calls run and count, so tests
can check the budgets on a machine without a GPU.

    up = Transfers(device)
    tok, pos, mask = up.upload(tokens, positions, mask)        # host tensors/lists -> device
    n, path = up.download(n_dev, path_dev)                     # device tensors -> host tensors
    up.h2d, up.d2h                                             # copies / reads so far
"""

from __future__ import annotations

import threading

import torch

_ALIGN = 16  # every part starts 16-byte aligned: legal int64 views, and the pointer alignment Triton compiled for


def _as_cpu(x) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=torch.int64)
    return t.detach().contiguous()


def packed_layout(tensors: list[torch.Tensor]) -> tuple[list[int], int]:
    offsets, total = [], 0
    for t in tensors:
        offsets.append(total)
        total += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
    return offsets, total


def packed_views(buf: torch.Tensor, tensors: list[torch.Tensor], offsets: list[int]) -> list[torch.Tensor]:
    """`buf` (uint8, one packed copy) seen as the parts: each a view of its dtype and shape."""
    out = []
    for t, off in zip(tensors, offsets):
        n = t.numel() * t.element_size()
        out.append(buf[off:off + n].view(t.dtype).view(t.shape))
    return out


class Transfers:
    """Packed, counted transfers between the host and `device` (thread-safe counters: the draft
    lane and the target lane share one per request)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda"
        self.h2d = 0  # packed host-to-device copies
        self.d2h = 0  # packed device-to-host reads (each one a host sync on a GPU)
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def upload(self, *parts) -> list[torch.Tensor]:
        """Host tensors or int lists -> device tensors of the same dtypes and shapes, in ONE copy
        (from pinned memory, non-blocking on a GPU)."""
        host = [_as_cpu(p) for p in parts]
        offsets, total = packed_layout(host)
        buf = torch.empty(total, dtype=torch.uint8, pin_memory=self.pinned)
        for t, off in zip(host, offsets):
            n = t.numel() * t.element_size()
            if n:
                buf[off:off + n] = t.reshape(-1).view(torch.uint8)
        self._count("h2d")
        dev = buf if self.device.type == "cpu" else buf.to(self.device, non_blocking=True)
        return packed_views(dev, host, offsets)

    def upload_into(self, buffer: torch.Tensor, offsets: list[int], *parts) -> None:
        """Host parts -> the device buffer `buffer` (uint8), laid out at `offsets` (packed_layout of
        parts of these shapes and dtypes), in ONE copy: what a static-shape step (a CUDA graph
        reading fixed addresses) uploads into."""
        host = [_as_cpu(p) for p in parts]
        laid, total = packed_layout(host)
        if laid != list(offsets) or total > buffer.numel():
            raise ValueError("upload_into: the parts do not have the buffer's layout")
        staging = torch.empty(buffer.numel(), dtype=torch.uint8, pin_memory=self.pinned)
        for t, off in zip(host, offsets):
            n = t.numel() * t.element_size()
            if n:
                staging[off:off + n] = t.reshape(-1).view(torch.uint8)
        self._count("h2d")
        buffer.copy_(staging, non_blocking=self.pinned)

    def download(self, *parts: torch.Tensor) -> list[torch.Tensor]:
        """Device tensors -> host tensors of the same dtypes and shapes, in ONE read (the only
        host sync it costs)."""
        parts = [p.detach().contiguous() for p in parts]
        offsets, total = packed_layout(parts)
        buf = torch.zeros(total, dtype=torch.uint8, device=parts[0].device if parts else self.device)
        for t, off in zip(parts, offsets):
            n = t.numel() * t.element_size()
            if n:
                buf[off:off + n] = t.reshape(-1).view(torch.uint8)
        host = buf.cpu() if buf.device.type != "cpu" else buf
        self._count("d2h")
        return packed_views(host, parts, offsets)
