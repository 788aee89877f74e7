"""Tree growth with the EAGLE continuation head (phide.models.eagle) for one request.

The head consumes pairs (input embedding of token x_{i+1}, target feature f_i). Pairs become
known as the target commits tokens: after its prefill (the prompt) and after every verify (the
accepted path's features from that very forward, so the head always drafts from the target's
true features, never from its own guesses for committed tokens). Like DraftRunner, pending pairs
are cached at the start of `grow`, and tree expansions live in scratch rows past `length`.
"""

from __future__ import annotations

import threading

import torch

from phide.models.eagle import EagleHead
from phide.models.llama import LlamaModel
from phide.spec.runners import causal_inputs
from phide.spec.tree import Tree, TreeGrower, TreePrice


class EagleRunner:
    def __init__(self, head: EagleHead, target_lm: LlamaModel, target_runner, max_len: int):
        self.head, self.lm, self.target = head, target_lm, target_runner
        self.cache = head.new_cache(max_len)
        self.length = 0
        self.forwards = 0
        self._embeds: list[torch.Tensor] = []  # pending pairs, [k, H] chunks
        self._feats: list[torch.Tensor] = []
        self.root_token: int | None = None

    def add_prompt(self, input_embeds: torch.Tensor, prefill_hidden: torch.Tensor | None, last_token: int) -> None:
        """Pairs of the prompt: input_embeds [P, H] (the target's input embeddings), prefill_hidden
        [P-1, H] (the target's features for all but the last prompt token)."""
        if prefill_hidden is not None and prefill_hidden.shape[0]:
            self._embeds.append(input_embeds[1:])
            self._feats.append(prefill_hidden)
        self.root_token = int(last_token)

    @torch.inference_mode()
    def grow(self, *, budget: int, topk: int, max_depth: int, max_expansions: int,
             stop: threading.Event | None = None, log: list | None = None, price: TreePrice | None = None) -> Tree:
        """Cache the pending pairs, then grow a tree (as DraftRunner.grow; `price`: `TreePrice`)."""
        device = self.head.device
        if not self._embeds:  # no features yet (a one-token prompt): nothing to draft from
            return Tree([self.root_token], [-1])
        e, f = torch.cat(self._embeds).unsqueeze(0), torch.cat(self._feats).unsqueeze(0)
        self._embeds, self._feats = [], []
        n = e.shape[1]
        pos, mask = causal_inputs(self.length, n, device)
        out = self.head(e, f, positions=pos, cache=self.cache, slots=pos, attn_mask=mask, kv_len=self.length + n)
        self.forwards += 1
        self.length += n
        base = self.length
        root_hidden = out[0, -1]
        grower = TreeGrower(self.root_token, self._logits(root_hidden), topk=topk, max_depth=max_depth)
        hidden_of: dict[int, torch.Tensor] = {}  # head output at each expanded candidate

        def expand(chosen: list[int]) -> torch.Tensor:
            pos, slots, m, kv_len = grower.expansion_inputs(chosen, base, device)
            toks = torch.tensor([grower.cands[ci].token for ci in chosen], device=device)
            feats = torch.stack([hidden_of.get(grower.cands[ci].parent, root_hidden) for ci in chosen])
            h = self.head(self.lm.embed_tokens(toks).unsqueeze(0), feats.unsqueeze(0), positions=pos,
                          cache=self.cache, slots=slots, attn_mask=m, kv_len=kv_len)[0]
            self.forwards += 1
            for row, ci in enumerate(chosen):
                hidden_of[ci] = h[row]
            return self._logits(h)

        grower.grow(expand, max_expansions=min(max_expansions, self.cache.max_len - base), stop=stop, log=log,
                    price=price)
        return grower.build(budget, price=price)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.logits(hidden)  # the tree grower normalises (ops.tree_topk)

    def commit(self, tree: Tree, accept_nodes: list[int], bonus: int) -> None:
        """Queue the accepted path's pairs: features from the target's verify forward of this tree."""
        feats = self.target.last_hidden[torch.tensor(accept_nodes, device=self.target.last_hidden.device)]
        nxt = [tree.tokens[n] for n in accept_nodes[1:]] + [int(bonus)]
        with torch.inference_mode():
            emb = self.lm.embed_tokens(torch.tensor(nxt, device=self.lm.device))
        self._embeds.append(emb.to(self.head.device))
        self._feats.append(feats.to(self.head.device))
        self.root_token = int(bonus)
