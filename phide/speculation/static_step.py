"""The draft's tree step with static shapes, so a GPU can replay it as a CUDA graph.

A tree step runs the draft on up to `rows` (= topk) frontier candidates; their count, positions,
cache rows and mask change every step, and kernel launches dominate a small-batch step on a GPU.
`StaticStep` keeps every input in a fixed buffer: candidates padded to `rows`, attention over the
whole cache (rows past the valid length masked off). Padding rows write their K/V into one extra
"trash" row at the end of the cache, which only they attend to, so they never touch real state.

On a CPU it runs eagerly: the static-shape twin of the dynamic step, and what the tests compare
against it. On a GPU with `graph=True` the forward is captured once as a CUDA graph (after two
warm-up runs on a side stream, as torch.cuda.graphs requires) and each step copies its inputs into
the buffers and replays the graph on the current stream. The engine makes one per engine, with the
draft's cache, when it is built: capture synchronises the device and must never run inside a hide
window, and it uses thread-local capture mode, so allocations on other threads are not captured.
"""

from __future__ import annotations

import torch

from phide.models.llama import KVCache, LlamaModel


class StaticStep:
    """cache: the draft's KV cache with one spare row at the end (max_len - 1 is the trash row).
    rows: padded batch of one step (the tree's topk)."""

    def __init__(self, model: LlamaModel, cache: KVCache, rows: int, *, graph: bool = False):
        self.model, self.cache, self.rows = model, cache, rows
        device = model.device
        self.trash = cache.max_len - 1
        self.tokens = torch.zeros(1, rows, dtype=torch.int64, device=device)
        self.positions = torch.zeros(1, rows, dtype=torch.int64, device=device)
        self.slots = torch.full((1, rows), self.trash, dtype=torch.int64, device=device)
        self.mask = torch.zeros(1, rows, cache.max_len, dtype=torch.bool, device=device)
        self.mask[0, :, self.trash] = True
        self.graph = None
        self.out: torch.Tensor | None = None
        if graph:
            self._capture()

    def _forward(self) -> torch.Tensor:
        return self.model(self.tokens, positions=self.positions, cache=self.cache, slots=self.slots,
                          attn_mask=self.mask, kv_len=self.cache.max_len)

    def _capture(self) -> None:
        side = torch.cuda.Stream(self.model.device)
        side.wait_stream(torch.cuda.current_stream(self.model.device))
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):  # warm-up: every row of the buffers points at the trash row
                self._forward()
        torch.cuda.current_stream(self.model.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"), torch.inference_mode():
            self.out = self._forward()

    @torch.inference_mode()
    def run(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
            mask: torch.Tensor) -> torch.Tensor:
        """One step, as `LlamaModel.forward` with the dynamic inputs: tokens/positions/slots [1, n],
        mask [1, n, kv_len] (n <= rows). Returns final hidden states [1, n, H]."""
        n, kv_len = tokens.shape[1], mask.shape[2]
        if n > self.rows or kv_len > self.trash:
            raise ValueError(f"static step holds {self.rows} rows over {self.trash} cache rows, got {n} over {kv_len}")
        self.tokens.zero_()
        self.positions.zero_()
        self.slots.fill_(self.trash)
        self.mask.zero_()
        self.mask[0, :, self.trash] = True  # padding rows see only the trash row
        self.tokens[:, :n] = tokens
        self.positions[:, :n] = positions
        self.slots[:, :n] = slots
        self.mask[0, :n, self.trash] = False
        self.mask[:, :n, :kv_len] = mask
        if self.graph is None:
            return self._forward()[:, :n]
        self.graph.replay()
        return self.out[:, :n]
