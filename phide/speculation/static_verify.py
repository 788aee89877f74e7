"""The target's verify forward at static shapes, bucketed by tree size, so a GPU replays it as a
CUDA graph: one launch for the whole decoder instead of ~10 per layer from the host.

A decode step is a verify of a one-node tree, and a round verifies a tree of up to 64 nodes; both
at batch 1 are memory-bound on the device and host-bound in eager PyTorch. `StaticVerify` owns one
KV cache for the engine (the graphs read fixed addresses) and, per bucket of tree sizes (1, 8,
16, 24, 32, 48, 64 nodes), one packed device buffer that a verify's single upload fills (tokens,
RoPE positions, cache rows, ancestor bitmasks, prefix length, node count, and the parents and
noise positions the walk reads after the forward). A tree of N nodes runs in the smallest bucket
that holds it: the padding nodes see only themselves (attention output zero), write their K/V to
rows past the tree that no real node reads, and their logits are never looked at. Attention runs
over the whole cache: rows past the prefix are invisible to every node, and the tree-attention
kernel stops at the prefix it reads from the buffer.

The graph covers the decoder, the final norm and the LM head (the logits into a fixed buffer); the
choice, the walk and the KV commit run after the replay, since the sampling seed and temperature
are per request. On a CPU the same static forward runs eagerly: the twin of the graph, which tests
compare with the dynamic verify. A graph's kernels keep the context they were captured in: graphs
are captured in the primary context when the engine is built (thread-local capture, on a side
stream, after warm-ups there), and a verify on a green split's stream (`run_eagerly_on`) runs the
same static forward eagerly instead. A tree with no bucket (more than 64 nodes, or too close to
the end of the cache) takes the dynamic path.
"""

from __future__ import annotations

import torch

from phide.models.llama import LlamaModel, TreeAttention
from phide.runtime.transfers import packed_layout, packed_views

BUCKETS = (1, 8, 16, 24, 32, 48, 64)
# The parts of a bucket's upload, in order; all int64 [n] but `base` and `n_nodes` ([1]).
PARTS = ("tokens", "positions", "slots", "ancestors", "parents", "noise_positions", "base", "n_nodes")


class _Bucket:
    """The static buffers of one tree size: one packed device buffer (what a verify uploads into)
    seen as its parts, and per feature capture the output of the graph (or of the eager twin)."""

    def __init__(self, n: int, device):
        self.n = n
        shapes = [(n,)] * 6 + [(1,), (1,)]
        like = [torch.empty(s, dtype=torch.int64) for s in shapes]
        self.offsets, total = packed_layout(like)
        self.buffer = torch.zeros(total, dtype=torch.uint8, device=device)
        self.parts = dict(zip(PARTS, packed_views(self.buffer, like, self.offsets)))
        self.outputs: dict = {}  # capture -> (logits [n, V] fp32, features [n, F])
        self.graphs: dict = {}  # capture -> CUDAGraph


class StaticVerify:
    """model: the target; rows: the engine's target cache (prompt + answer + a tree must fit);
    captures: the feature captures verifies ask for (None: the final states; an EAGLE-3 head's
    layer ids); graph: capture CUDA graphs (a GPU)."""

    def __init__(self, model: LlamaModel, rows: int, *, buckets=BUCKETS, captures=(None,), graph: bool = False):
        self.model, self.rows, self.graphed = model, rows, graph
        self.cache = model.new_cache(1, rows)
        self.buckets = {n: _Bucket(n, model.device) for n in sorted(buckets)}
        self.captures = tuple(dict.fromkeys(captures))
        self.replays = 0  # graph replays
        self.eager = 0  # static forwards run eagerly (a CPU, or a green split's stream)
        self._eager_streams: set[int] = set()
        for bucket in self.buckets.values():
            self._reset(bucket)
        if graph:
            self._capture_all()

    # ------------------------------------------------------------------ buckets
    def bucket_for(self, n_nodes: int, length: int) -> _Bucket | None:
        """The smallest bucket holding a tree of n_nodes on top of `length` committed rows whose
        padding rows still fit the cache; None: the dynamic path."""
        for n, bucket in self.buckets.items():
            if n >= n_nodes:
                return bucket if length + n <= self.rows else None
        return None

    def host_parts(self, bucket: _Bucket, layout, produced: int):
        """The upload of one verify in `bucket`'s layout: `layout` (speculation.tree.VerifyLayout)
        is the tree padded to the bucket's size; noise positions are depth + `produced`."""
        if layout.n != bucket.n:
            raise ValueError(f"a layout of {layout.n} nodes for the {bucket.n}-node bucket")
        return [layout.tokens[0], layout.positions[0], layout.slots[0], layout.ancestors()[0], layout.parents[0],
                layout.depths[0] + produced, layout.prefix_lens, layout.n_nodes]

    def _reset(self, bucket: _Bucket) -> None:
        """Valid contents for warm-ups and capture: a tree of padding nodes over an empty prefix."""
        p = bucket.parts
        n = bucket.n
        p["tokens"].zero_()
        p["positions"].zero_()
        p["slots"].copy_(torch.arange(n, device=p["slots"].device))
        p["ancestors"].copy_(torch.tensor([1 << j if j < 63 else -(1 << 63) for j in range(n)]))
        p["parents"].fill_(-1)
        p["base"].zero_()
        p["n_nodes"].fill_(1)

    # ------------------------------------------------------------------ the forward
    def _forward(self, bucket: _Bucket, capture, real: tuple[int, int] | None = None):
        """real: (committed rows, tree nodes) as the host knows them, for the eager twin: attention
        then reads the rows the dynamic verify does (the graph reads the whole cache, where the
        kernel stops at the prefix it reads from the buffer)."""
        p, n = bucket.parts, bucket.n
        kv_len = self.rows if real is None else real[0] + real[1]
        tree = TreeAttention(prefix_len=p["base"], tree_start=p["base"], ancestors=p["ancestors"].view(1, n),
                             n_nodes=p["n_nodes"], padded=real is None or real[1] < n,
                             sees_every_row=real is not None and real[1] == 1)
        with torch.inference_mode():
            out = self.model(p["tokens"].view(1, n), positions=p["positions"].view(1, n), cache=self.cache,
                             slots=p["slots"].view(1, n), attn_mask=None, kv_len=kv_len, tree=tree,
                             capture=capture)
            hidden, features = out if capture else (out, out)
            return self.model.logits(hidden)[0], features[0]

    def _capture_all(self) -> None:
        device = self.model.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        for bucket in self.buckets.values():
            for capture in self.captures:
                with torch.cuda.stream(side):
                    for _ in range(2):  # warm-up on the capture stream, as torch.cuda.graphs requires
                        self._forward(bucket, capture)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                    bucket.outputs[capture] = self._forward(bucket, capture)
                bucket.graphs[capture] = graph
        torch.cuda.synchronize(device)  # the warm-ups wrote the cache: done before any request

    def run_eagerly_on(self, stream) -> None:
        """A green split's stream: its context is not the graphs' (they would run on the whole GPU)."""
        self._eager_streams.add(int(stream.cuda_stream))

    def forget_stream(self, stream) -> None:
        self._eager_streams.discard(int(stream.cuda_stream))

    def run(self, bucket: _Bucket, capture, length: int, n_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward over what the bucket's buffer holds (a tree of n_nodes over `length`
        committed rows): (logits [n, V] fp32, features [n, F]); a graph's are fixed buffers,
        overwritten by the next replay of this bucket."""
        graph = bucket.graphs.get(capture)
        if graph is not None and int(torch.cuda.current_stream(self.model.device).cuda_stream) not in self._eager_streams:
            graph.replay()
            self.replays += 1
            return bucket.outputs[capture]
        self.eager += 1
        return self._forward(bucket, capture, real=(length, n_nodes))
