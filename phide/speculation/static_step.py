"""The draft's tree step with static shapes, so a GPU can replay it as a CUDA graph.

A tree step runs the draft on up to `rows` (= topk) frontier candidates; their count, positions,
cache rows and mask change every step, and kernel launches dominate a small-batch step on a GPU.
`StaticStep` keeps every input in a fixed buffer: candidates padded to `rows`, attention over the
whole cache (rows past the valid length masked off). Padding rows write their K/V into one extra
"trash" row at the end of the cache, which only they attend to, so they never touch real state.

On a CPU it runs eagerly: the static-shape twin of the dynamic step, and what the tests compare
against it. On a GPU with `graph=True` the forward is captured as a CUDA graph (after two warm-up
runs on the capture stream, as torch.cuda.graphs requires) and each step copies its inputs into
the buffers and replays a graph. A graph's kernels keep the context they were captured in, so
one graph cannot serve every lane: the engine captures one in the primary context when it is
built (every plain stream) and one per green-context split on that split's draft stream when the
split is made (`capture_on`); `run` replays the one captured for the current stream's context,
and runs eagerly on a green stream it has no graph for. Capture synchronises the device and must
never run inside a hide window; it uses thread-local capture mode, so allocations on other
threads are not captured.
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
        self.trash_row = cache.max_len - 1  # where padding rows write (only they attend to it)
        self.capacity = self.trash_row  # rows a request may use: all but the trash row
        self.tokens = torch.zeros(1, rows, dtype=torch.int64, device=device)
        self.positions = torch.zeros(1, rows, dtype=torch.int64, device=device)
        self.slots = torch.full((1, rows), self.trash_row, dtype=torch.int64, device=device)
        self.mask = torch.zeros(1, rows, cache.max_len, dtype=torch.bool, device=device)
        self.mask[0, :, self.trash_row] = True
        # context key -> (graph, its output buffer); key None: the primary context
        self.graphs: dict = {}
        self._stream_keys: dict[int, object] = {}  # raw stream handle -> its green split's key
        self.replays: dict = {}  # context key -> replays (eager steps on a green stream: "eager")
        if graph:
            side = torch.cuda.Stream(model.device)
            self._capture(None, side)

    @property
    def graphed(self) -> bool:
        return None in self.graphs

    def _forward(self) -> torch.Tensor:
        return self.model(self.tokens, positions=self.positions, cache=self.cache, slots=self.slots,
                          attn_mask=self.mask, kv_len=self.cache.max_len)

    def _capture(self, key, stream) -> None:
        """Warm up and capture on `stream` (a plain side stream for the primary context, a split's
        draft stream for its green context): the graph's kernels run in that stream's context."""
        device = self.model.device
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # warm-up: every row of the buffers points at the trash row
                self._forward()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"), torch.inference_mode():
            out = self._forward()
        self.graphs[key] = (graph, out)

    def capture_on(self, key, stream) -> None:
        """A graph for the green context `stream` (a split's draft stream) belongs to, replayed
        whenever a step runs on that stream. Outside any request's window (it synchronises)."""
        self._stream_keys[int(stream.cuda_stream)] = key
        if self.graphed:  # graph=False: eager everywhere
            self._capture(key, stream)

    def drop(self, key) -> None:
        """Forget the graph of a split that is being closed (before its streams are destroyed)."""
        self.graphs.pop(key, None)
        self._stream_keys = {h: k for h, k in self._stream_keys.items() if k != key}

    def _graph_here(self):
        """The (graph, out) for the current stream's context; None: run eagerly."""
        if not self.graphs:
            return None
        handle = int(torch.cuda.current_stream(self.model.device).cuda_stream)
        key = self._stream_keys.get(handle)  # None: a plain stream, the primary context
        found = self.graphs.get(key)
        counted = key if found is not None else "eager"
        self.replays[counted] = self.replays.get(counted, 0) + 1
        return found

    @torch.inference_mode()
    def run(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
            mask: torch.Tensor) -> torch.Tensor:
        """One step, as `LlamaModel.forward` with the dynamic inputs: tokens/positions/slots [1, n],
        mask [1, n, kv_len] (n <= rows). Returns final hidden states [1, n, H]."""
        n, kv_len = tokens.shape[1], mask.shape[2]
        if n > self.rows or kv_len > self.capacity:
            raise ValueError(f"static step holds {self.rows} rows over {self.capacity} cache rows, got {n} over {kv_len}")
        self.tokens.zero_()
        self.positions.zero_()
        self.slots.fill_(self.trash_row)
        self.mask.zero_()
        self.mask[0, :, self.trash_row] = True  # padding rows see only the trash row
        self.tokens[:, :n] = tokens
        self.positions[:, :n] = positions
        self.slots[:, :n] = slots
        self.mask[0, :n, self.trash_row] = False
        self.mask[:, :n, :kv_len] = mask
        found = self._graph_here()
        if found is None:
            return self._forward()[:, :n]
        graph, out = found
        graph.replay()
        return out[:, :n]
