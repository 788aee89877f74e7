"""Per-request model state for speculation: a target that verifies trees and a draft that grows them.

Both keep a static KV cache and `length` = committed rows. The target prefills the prompt minus
its last token, so every round is the same operation: forward [root + tree] in one pass, where
the root is the last committed token (not yet cached). The draft mirrors this with `pending`:
committed tokens it has not cached yet (the root is always the last one).
"""

from __future__ import annotations

import threading

import torch

from phide.models.llama import CAUSAL, LlamaModel
from phide import ops
from phide.speculation.static_step import StaticStep
from phide.speculation.tree import (MAX_TREE_NODES, Tree, TreeGrower, adopt_subtree, tree_attention_layout,
                              verify_layout, verify_rows)


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
    """The target model for one request: prefill, verify a tree, commit the accepted path."""

    def __init__(self, model: LlamaModel, max_len: int):
        self.model = model
        self.cache = model.new_cache(1, max_len)
        self.length = 0
        self.forwards = 0

        self.last_hidden: torch.Tensor | None = None  # [N, H] of the last verify (EAGLE features)
        self.prefill_hidden: torch.Tensor | None = None  # [1, P-1, H], kept by the engine

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor | None = None, embeds: torch.Tensor | None = None) -> torch.Tensor | None:
        """Cache the prompt minus its last token (ids [1,P-1] or embeds [1,P-1,H]); returns the
        final hidden states [1, P-1, H] (the features a continuation head drafts from)."""
        n = (ids if embeds is None else embeds).shape[1]
        if n == 0:
            return None
        pos, mask = causal_inputs(self.length, n, self.model.device)
        hidden = self.model(ids, inputs_embeds=embeds, positions=pos, cache=self.cache, slots=pos,
                            attn_mask=mask, kv_len=self.length + n)
        self.length += n
        self.forwards += 1
        return hidden

    @torch.inference_mode()
    def verify(self, tree: Tree) -> torch.Tensor:
        """Target logits [N, V] for every tree node, in one forward. Trees of up to
        MAX_TREE_NODES nodes are described to the decoder (`ops.tree_attention`: the prefix
        unmasked, the tree under ancestor bitmasks); larger ones take the dense mask."""
        if self.length + len(tree) > self.cache.max_len:
            raise RuntimeError("target KV cache too small for this tree")
        device = self.model.device
        if len(tree) <= MAX_TREE_NODES:
            pos, slots = verify_rows(tree, self.length, device)
            mask, tree_attn = None, tree_attention_layout([tree], [self.length], len(tree), device)
        else:
            (pos, slots, mask), tree_attn = verify_layout(tree, self.length, device), None
        ids = torch.tensor([tree.tokens], dtype=torch.int64, device=device)
        hidden = self.model(ids, positions=pos, cache=self.cache, slots=slots, attn_mask=mask,
                            kv_len=self.length + len(tree), tree=tree_attn)
        self.forwards += 1
        self.last_hidden = hidden[0]
        return self.model.logits(hidden)[0]

    def commit(self, accept_nodes: torch.Tensor, accept_len: int) -> None:
        """Keep the accepted path's KV rows (root first) contiguous after the prefix."""
        base = torch.tensor([self.length], device=self.cache.k.device)
        ops.kv_commit(self.cache.k, self.cache.v, base, accept_nodes.view(1, -1).to(base.device),
                      torch.tensor([accept_len], device=base.device))
        self.length += accept_len + 1


class DraftRunner:
    """The draft model for one request: grows EAGLE-2 trees from its committed state.

    vocab_limit: draft proposals are restricted to ids < vocab_limit (the vocabulary shared with
    the target), so every drafted id is one the target can take.
    adapter: optional distilled output adapter (`phide.models.draft_adapter`): its `logits(hidden)`
    replaces the draft's own LM head.
    """

    can_grow_ahead = True  # post-verify overlap: grow_assuming / settle (phide.speculation.overlap)

    def __init__(self, model: LlamaModel, max_len: int, vocab_limit: int, adapter=None, *,
                 static_rows: int = 0, graph: bool = False):
        """static_rows > 0: tree steps of up to that many candidates run with static shapes
        (`phide.speculation.static_step`; captured as a CUDA graph with graph=True on a GPU)."""
        self.model = model
        self.head = adapter if adapter is not None else model
        self.capacity = max_len  # usable cache rows (a static step adds one trash row past them)
        self.cache = model.new_cache(1, max_len + (1 if static_rows else 0))
        self.static = StaticStep(model, self.cache, static_rows, graph=graph) if static_rows else None
        self.length = 0
        self.pending: list[int] = []
        self.vocab_limit = vocab_limit
        self.forwards = 0
        self._assumed = None  # `grow_assuming`'s (state before, speculated tokens, tree) until `settle`

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor | None = None, embeds: torch.Tensor | None = None,
                last_token: int | None = None) -> None:
        """Cache the prompt minus its last token; that token becomes the first root."""
        n = (ids if embeds is None else embeds).shape[1]
        if n:
            pos, mask = causal_inputs(0, n, self.model.device)
            self.model(ids, inputs_embeds=embeds, positions=pos, cache=self.cache, slots=pos,
                       attn_mask=mask, kv_len=n)
            self.forwards += 1
        self.length = n
        self.pending = [] if last_token is None else [int(last_token)]

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # The tree grower normalises (ops.tree_topk), over the shared vocabulary only.
        return self.head.logits(hidden)[..., : self.vocab_limit]

    @torch.inference_mode()
    def grow(self, *, budget: int, topk: int, max_depth: int, max_expansions: int,
             stop=None, on_step=None) -> Tree:
        """Cache the pending tokens, then grow a tree until `stop` is set, the frontier is
        exhausted, or `max_expansions` nodes were run through the draft. Returns <= budget nodes.
        `on_step(candidates so far)` is called after every step (see TreeGrower.grow).
        """
        device = self.model.device
        n = len(self.pending)
        pos, mask = causal_inputs(self.length, n, device)
        ids = torch.tensor([self.pending], dtype=torch.int64, device=device)
        hidden = self.model(ids, positions=pos, cache=self.cache, slots=pos, attn_mask=mask,
                            kv_len=self.length + n)
        self.forwards += 1
        self.length += n
        root_token, root_slot = self.pending[-1], self.length - 1
        self.pending = []
        grower = TreeGrower(root_token, self._logits(hidden[0, -1]), topk=topk, max_depth=max_depth)
        base = self.length

        def expand(chosen: list[int]) -> torch.Tensor:
            pos, slots, mask, kv_len = grower.expansion_inputs(chosen, base, device)
            tok = torch.tensor([[grower.cands[ci].token for ci in chosen]], device=device)
            if self.static is not None and len(chosen) <= self.static.rows:
                h = self.static.run(tok, pos, slots, mask)
            else:
                h = self.model(tok, positions=pos, cache=self.cache, slots=slots, attn_mask=mask, kv_len=kv_len)
            self.forwards += 1
            return self._logits(h[0])

        grower.grow(expand, max_expansions=min(max_expansions, self.capacity - base), stop=stop, on_step=on_step)
        return grower.build(budget, root_slot)

    def grow_assuming(self, path: list[int], tokens: list[int], stop: threading.Event | None = None,
                  **grow_kwargs) -> Tree:
        """Grow a tree rooted at the leaf of `path` (nodes of the last grown tree, root first;
        `tokens`: theirs after the root) as if the target accepted the whole path: the path is
        cached like committed tokens, and `settle` adopts the subtree under the real bonus."""
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
        if src:
            k, v = self.cache.k, self.cache.v
            dst = torch.arange(self.length, self.length + len(src), device=k.device)
            src_t = torch.tensor(src, device=k.device)
            k[:, :, :, dst] = k[:, :, :, src_t].clone()
            v[:, :, :, dst] = v[:, :, :, src_t].clone()
            self.length += len(src)
        self.pending = self.pending + [tree.tokens[n] for n in path[len(src):]] + [int(bonus)]
