"""Per-request model state for speculation: a target that verifies trees and a draft that grows them.

Both keep a static KV cache and `length` = committed rows. The target prefills the prompt minus
its last token, so every round is the same operation: forward [root + tree] in one pass, where
the root is the last committed token (not yet cached). The draft mirrors this with `pending`:
committed tokens it has not cached yet (the root is always the last one).
"""

from __future__ import annotations

import threading

import torch

from phide import ops
from phide.models.llama import CAUSAL, LlamaModel, TreeAttention
from phide.runtime.transfers import Transfers
from phide.speculation.drafter import Drafter
from phide.speculation.static_step import StaticStep
from phide.speculation.static_verify import StaticVerify
from phide.speculation.tree import MAX_TREE_NODES, Tree, TreeGrower, VerifyLayout, adopt_subtree, tree_layout


def cache_new_rows(forward, cache, start: int, n: int, device, *inputs, **kwargs):
    """The one prefill step of every runner: run `forward` (a model or a head) over `n` new rows
    cached after `start` committed ones, causally (positions and cache slots start..start+n-1;
    each row sees every committed row and the new rows up to itself). Returns its output."""
    pos, mask = causal_inputs(start, n, device)
    return forward(*inputs, positions=pos, cache=cache, slots=pos, attn_mask=mask, kv_len=start + n, **kwargs)


def causal_inputs(start: int, n: int, device):
    """positions/slots [1,n] = start..start+n-1 and the causal mask [1, n, start+n]; from row 0
    the mask is CAUSAL (the fused causal attention path, no mask tensor)."""
    pos = torch.arange(start, start + n, device=device).unsqueeze(0)
    if start == 0:
        return pos, CAUSAL
    mask = torch.ones(n, start + n, dtype=torch.bool, device=device)
    mask[:, start:] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    return pos, mask.unsqueeze(0)


class TargetRunner:
    """The target model for one request: prefill, then rounds of `verify` (one forward over a
    tree, the acceptance walk and the KV commit, all on the device)."""

    def __init__(self, model: LlamaModel, max_len: int, transfers: Transfers | None = None,
                 capture: tuple[int, ...] | None = None, static: StaticVerify | None = None):
        """capture: the layers whose input states an EAGLE-3 head fuses (LlamaModel.forward's
        `capture`); then the features kept are those [.., len(capture) * H], else the final ones.
        static: the engine's static-shape verify (its cache, at least max_len rows, is this
        request's; trees with a bucket run there, as a CUDA graph on a GPU)."""
        self.model = model
        if static is not None and static.rows < max_len:
            raise ValueError(f"the static verify's cache holds {static.rows} rows, the request needs {max_len}")
        self.static = static
        self.cache = static.cache if static is not None else model.new_cache(1, max_len)
        self.transfers = transfers or Transfers(model.device)
        self.capture = tuple(capture) if capture else None
        self.length = 0
        self.forwards = 0

        self.last_features: torch.Tensor | None = None  # [N, F] of the last verify (what the head reads)
        self.last_path: torch.Tensor | None = None  # [n_acc + 1] accepted nodes of the last verify (device)
        self.prefill_features: torch.Tensor | None = None  # [1, P-1, F], kept by the engine

    @torch.inference_mode()
    def prefill(self, ids: list[int] | None = None, embeds: torch.Tensor | None = None) -> torch.Tensor | None:
        """Cache the prompt minus its last token (ids: P-1 token ids, or embeds [1,P-1,H]);
        returns the features a continuation head drafts from [1, P-1, F]: the final hidden
        states, or with `capture` the captured layers' (taken in the same forward)."""
        n = len(ids) if embeds is None else embeds.shape[1]
        if n == 0:
            return None
        ids_dev = None if embeds is not None else self.transfers.upload(torch.tensor([ids], dtype=torch.int64))[0]
        out = cache_new_rows(self.model, self.cache, self.length, n, self.model.device, ids_dev, inputs_embeds=embeds,
                             capture=self.capture)
        self.length += n
        self.forwards += 1
        return out[1] if self.capture else out

    @torch.inference_mode()
    def verify(self, tree: Tree, temperature: float, seed: int, produced: int) -> tuple[int, list[int], list[int]]:
        """Verify `tree` (its root: the last committed token) in one forward, walk it, and commit
        the accepted path's KV rows. Returns (accepted drafts n, the accepted path's nodes root
        first [n + 1], the emitted tokens: the accepted drafts, then the bonus [n + 1]).

        Each node's choice is the target's argmax (greedy) or its Gumbel-max sample with noise
        keyed by (seed, the output position the node predicts; `produced` tokens are out
        already), so sampled tokens are exactly target-only sampling's with the same seed,
        whatever the draft proposed; a child is accepted iff it equals its parent's choice.
        Host traffic: ONE packed upload of the tree (tokens, positions, cache rows, parents,
        ancestor bitmasks, noise positions) and ONE packed read of the outcome; the walk
        (`ops.accept_path`: the CUDA kernel on a GPU) and the commit run on the device.
        Trees of up to MAX_TREE_NODES nodes are described to the decoder (`ops.tree_attention`);
        larger ones take the dense mask."""
        N = len(tree)
        if self.length + N > self.cache.max_len:
            raise RuntimeError("target KV cache too small for this tree")
        bucket = self.static.bucket_for(N, self.length) if self.static is not None else None
        # The tree as model inputs (padded to the bucket's size on the static path)
        layout = tree_layout([tree], [self.length], bucket.n if bucket is not None else N)
        width = int(layout.depths.max()) + 1  # the longest path the walk can accept: the commit moves no more
        if bucket is not None:  # static shapes: the graph (or its eager twin) over the bucket's buffer
            self.transfers.upload_into(bucket.buffer, bucket.offsets, *self.static.host_parts(bucket, layout, produced))
            logits, features = self.static.run(bucket, self.capture, self.length, N)
            p = bucket.parts
            tokens, parents, noise_pos, base = p["tokens"][:N], p["parents"][:N], p["noise_positions"][:N], p["base"]
            logits, features = logits[:N], features[:N]
        else:
            tokens, parents, noise_pos, base, logits, features = self._forward_dynamic(layout, produced)
        self.forwards += 1
        self.last_features = features
        choice = ops.gumbel_choices(logits, temperature, seed, noise_pos)
        nodes, out, n_acc = ops.accept_path(tokens.view(1, N), parents.view(1, N), choice.view(1, N))
        ops.kv_commit(self.cache.k, self.cache.v, base, nodes[:, :width], n_acc)
        n_host, path, emitted = self.transfers.download(n_acc, nodes[0, :width], out[0, : width + 1])
        n = int(n_host[0])
        self.last_path = nodes[0, : n + 1]
        self.length += n + 1
        return n, path[: n + 1].tolist(), emitted[: n + 1].tolist()

    def _forward_dynamic(self, layout: VerifyLayout, produced: int):
        """The verify forward at the tree's own shape: (tokens, parents, noise positions, base,
        logits [N, V] fp32, features [N, F]), the index arrays on the device from one upload."""
        N = layout.n
        structured = N <= MAX_TREE_NODES
        host = [layout.tokens[0], layout.positions[0], layout.slots[0], layout.parents[0], layout.depths[0] + produced,
                layout.prefix_lens, layout.n_nodes, layout.ancestors()[0] if structured else layout.mask()]
        # base and n_nodes are parts of their own: each kernel pointer is 16-byte aligned (Transfers)
        tokens, pos, slots, parents, noise_pos, base, n_nodes, visible = self.transfers.upload(*host)
        if structured:
            mask = None
            tree_attn = TreeAttention(prefix_len=base, tree_start=base, ancestors=visible.view(1, N), n_nodes=n_nodes,
                                      padded=False, sees_every_row=N == 1)
        else:
            mask, tree_attn = visible, None  # [1, N, prefix + N] bool
        out = self.model(tokens.view(1, N), positions=pos.view(1, N), cache=self.cache, slots=slots.view(1, N),
                         attn_mask=mask, kv_len=self.length + N, tree=tree_attn, capture=self.capture)
        hidden, features = out if self.capture else (out, out)
        return tokens, parents, noise_pos, base, self.model.logits(hidden)[0], features[0]

    def accepted_features(self) -> torch.Tensor:
        """The target's features [n + 1, F] at the last verify's accepted nodes (root first), on
        the device (no transfer): final hidden states, or the captured layers' states."""
        return self.last_features.index_select(0, self.last_path)


class DraftRunner(Drafter):
    """The draft model for one request: grows EAGLE-2 trees from its committed state.

    vocab_limit: draft proposals are restricted to ids < vocab_limit (the vocabulary shared with
    the target), so every drafted id is one the target can take.
    adapter: optional distilled output adapter (`phide.models.draft_adapter`): its `logits(hidden)`
    replaces the draft's own LM head.
    """

    kind = "draft"
    can_grow_ahead = True  # post-verify overlap: grow_assuming / settle (phide.speculation.overlap)

    def __init__(self, model: LlamaModel, max_len: int, vocab_limit: int, adapter=None, *,
                 static: StaticStep | None = None, transfers: Transfers | None = None):
        """static: the engine's static-shape tree step (`phide.speculation.static_step`, a CUDA
        graph on a GPU): tree steps of up to `static.rows` candidates run through it, over its
        cache (which then is this runner's, `static.capacity` usable rows >= max_len); else a cache
        of max_len rows for this request and dynamic steps."""
        self.model = model
        self.transfers = transfers or Transfers(model.device)
        self.output = adapter if adapter is not None else model  # what turns hidden states into logits
        if static is not None and static.capacity < max_len:
            raise ValueError(f"the static step's cache holds {static.capacity} rows, this request needs {max_len}")
        self.static = static
        self.cache = static.cache if static is not None else model.new_cache(1, max_len)
        self.capacity = static.capacity if static is not None else max_len  # usable rows
        self.length = 0
        self.pending: list[int] = []
        self.vocab = vocab_limit
        self.forwards = 0
        self._assumed = None  # `grow_assuming`'s (state before, speculated tokens, tree) until `settle`

    @torch.inference_mode()
    def prefill(self, ids: list[int] | None = None, embeds: torch.Tensor | None = None,
                last_token: int | None = None) -> None:
        """Cache the prompt minus its last token (ids, or embeds [1, n, H]); that token becomes
        the first root."""
        n = len(ids) if embeds is None else embeds.shape[1]
        if n:
            ids_dev = None if embeds is not None else self.transfers.upload(torch.tensor([ids], dtype=torch.int64))[0]
            cache_new_rows(self.model, self.cache, 0, n, self.model.device, ids_dev, inputs_embeds=embeds)
            self.forwards += 1
        self.length = n
        self.pending = [] if last_token is None else [int(last_token)]

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # The tree grower normalises (ops.tree_topk), over the shared vocabulary only.
        return self.output.logits(hidden)[..., : self.vocab]

    def can_follow(self, token: int) -> bool:
        return token < self.vocab

    @torch.inference_mode()
    def grow(self, *, budget: int, topk: int, max_depth: int, max_expansions: int,
             stop=None, on_step=None) -> Tree:
        """Cache the pending tokens, then grow a tree until `stop` is set, the frontier is
        exhausted, or `max_expansions` nodes were run through the draft. Returns <= budget nodes.
        `on_step(candidates so far)` is called after every step (see TreeGrower.grow).
        """
        device = self.model.device
        n = len(self.pending)
        ids = self.transfers.upload(torch.tensor([self.pending], dtype=torch.int64))[0]
        hidden = cache_new_rows(self.model, self.cache, self.length, n, device, ids)
        self.forwards += 1
        self.length += n
        root_token, root_slot = self.pending[-1], self.length - 1
        self.pending = []
        grower = TreeGrower(root_token, self._logits(hidden[0, -1]), topk=topk, max_depth=max_depth,
                            transfers=self.transfers)
        base = self.length

        def expand(chosen: list[int]) -> torch.Tensor:
            tok, pos, slots, mask, kv_len = grower.expansion_inputs(chosen, base)
            if self.static is not None and len(chosen) <= self.static.rows:
                h = self.static.run(tok, pos, slots, mask)
            else:
                h = self.model(tok, positions=pos, cache=self.cache, slots=slots, attn_mask=mask, kv_len=kv_len)
            self.forwards += 1
            return self._logits(h[0])

        grower.grow(expand, max_expansions=min(max_expansions, self.capacity - base), stop=stop, on_step=on_step)
        return grower.build(budget, root_slot)

    def grow_assuming(self, path: list[int], tokens: list[int], stop: threading.Event | None = None,
                      record=None, **grow_kwargs) -> Tree:
        """Grow a tree rooted at the leaf of `path` (nodes of the last grown tree, root first;
        `tokens`: theirs after the root) as if the target accepted the whole path: the path is
        cached like committed tokens, and `settle` adopts the subtree under the real bonus.
        `record` (a side lane's, as EagleRunner takes it) has nothing to mark: what is pending
        here are token ids on the host, and the cache is the draft's own."""
        before = (self.length, list(self.pending))
        self.pending = self.pending + [int(t) for t in tokens]
        tree = self.grow(stop=stop, **grow_kwargs)
        self._assumed = (before, list(tokens), tree)
        return tree

    def settle(self, tree: Tree, accept_nodes: list[int], bonus: int, budget: int) -> Tree | None:
        """After `grow_assuming`: rewind and make the real outcome pending (its KV rows are
        recomputed at the next growth: the speculative run reused the scratch rows a normal
        commit copies from). Returns the next tree when the speculation guessed right."""
        (self.length, pending), tokens, spec_tree = self._assumed
        self._assumed = None
        real = [tree.tokens[n] for n in accept_nodes[1:]]
        self.pending = pending + real + [int(bonus)]
        found = adopt_subtree(spec_tree, tokens, real, bonus, budget)
        return None if found is None else found[0]

    def commit(self, tree: Tree, accept_nodes: list[int], bonus: int) -> None:
        """Keep the draft KV of the accepted path's leading expanded nodes; the rest of the path
        and the bonus token become pending (cached by the next `grow`)."""
        path = accept_nodes[1:]
        src = []
        for node in path:
            # Rows are only where a grow left them when nothing is pending (after a `settle`
            # the pending tokens are cached first, over the old scratch rows).
            if self.pending or tree.draft_slot[node] < 0:
                break
            src.append(tree.draft_slot[node])
        if src:  # the target's commit: the tree's root sits at row length - 1, node i moves next to it
            root = self.length - 1
            nodes, n_acc, base = self.transfers.upload(torch.tensor([[0, *(r - root for r in src)]]),
                                                       torch.tensor([len(src)]), torch.tensor([root]))
            ops.kv_commit(self.cache.k, self.cache.v, base, nodes, n_acc)
            self.length += len(src)
        self.pending = self.pending + [tree.tokens[n] for n in path[len(src):]] + [int(bonus)]
