"""Tree growth with an EAGLE continuation head (phide.models.eagle: EAGLE-2, phide.models.eagle3:
EAGLE-3; the contract is EagleHead's) for one request.

The head consumes pairs (input embedding of token x_{i+1}, target feature f_i: the final feature,
or for EAGLE-3 the fused low/middle/high layers). Pairs become
known as the target commits tokens: after its prefill (the prompt) and after every verify (the
accepted path's features from that very forward, so the head always drafts from the target's
true features, never from its own guesses for committed tokens). Like DraftRunner, pending pairs
are cached at the start of `grow`, and tree expansions live in scratch rows past `length`.
"""

from __future__ import annotations

import functools
import threading

import torch

from phide.models.llama import LlamaModel
from phide.speculation.drafter import Drafter
from phide.speculation.runners import cache_new_rows
from phide.speculation.tree import Tree, TreeGrower, adopt_subtree


def accepted_pairs(target_runner, tree: Tree, accept_nodes: list[int], bonus: int) -> tuple[list[int], torch.Tensor]:
    """The head's next pairs after a verify: the accepted tokens (root excluded) and the bonus,
    and the target's features [k, H] at the accepted nodes (root included) from that verify
    (gathered on the device: `TargetRunner.accepted_features`)."""
    return [tree.tokens[n] for n in accept_nodes[1:]] + [int(bonus)], target_runner.accepted_features()


class EagleRunner(Drafter):
    kind = "head"
    can_grow_ahead = True  # post-verify overlap: grow_assuming / settle (phide.speculation.overlap)

    def __init__(self, head, target_lm: LlamaModel, target_runner, max_len: int):
        self.head, self.lm, self.target = head, target_lm, target_runner
        self.vocab = target_lm.cfg.vocab_size  # the head proposes in the target's vocabulary
        self.cache = head.new_cache(max_len)
        self.length = 0
        self.forwards = 0
        self._embeds: list[torch.Tensor] = []  # pending pairs, [k, H] chunks
        self._feats: list[torch.Tensor] = []
        self.root_token: int | None = None
        # Post-verify overlap (phide.speculation.overlap): the head's output at each expanded node of
        # the last grown tree (its own guess of the target's feature there), and `grow_assuming`'s
        # (state before, speculated tokens, tree, its node outputs) until `settle`.
        self._node_hidden: dict[int, torch.Tensor] = {}
        self._assumed = None

    def add_prompt(self, input_embeds: torch.Tensor, prefill_hidden: torch.Tensor | None, last_token: int) -> None:
        """Pairs of the prompt: input_embeds [P, H] (the target's input embeddings), prefill_hidden
        [P-1, H] (the target's features for all but the last prompt token)."""
        if prefill_hidden is not None and prefill_hidden.shape[0]:
            self._embeds.append(input_embeds[1:])
            self._feats.append(prefill_hidden)
        self.root_token = int(last_token)

    @torch.inference_mode()
    def grow(self, *, budget: int, topk: int, max_depth: int, max_expansions: int,
             stop=None, on_step=None) -> Tree:
        """Cache the pending pairs, then grow a tree (as DraftRunner.grow)."""
        device = self.head.device
        if not self._embeds:  # no features yet (a one-token prompt): nothing to draft from
            self._node_hidden = {}
            return Tree([self.root_token], [-1])
        # Pending features: the target's (final, or its fused layers for EAGLE-3) and, after a
        # grow_assuming, the head's own outputs; each chunk as the state the layer reads.
        e = torch.cat(self._embeds).unsqueeze(0)
        f = torch.cat([self.head.feature_state(x) for x in self._feats]).unsqueeze(0)
        self._embeds, self._feats = [], []
        n = e.shape[1]
        out = cache_new_rows(self.head, self.cache, self.length, n, device, e, f)
        self.forwards += 1
        self.length += n
        base = self.length
        root_hidden = out[0, -1]
        grower = TreeGrower(self.root_token, self._logits(root_hidden), topk=topk, max_depth=max_depth,
                            transfers=self.target.transfers)
        hidden_of: dict[int, torch.Tensor] = {}  # head output at each expanded candidate

        def expand(chosen: list[int]) -> torch.Tensor:
            toks, pos, slots, m, kv_len = grower.expansion_inputs(chosen, base)
            feats = torch.stack([hidden_of.get(grower.cands[ci].parent, root_hidden) for ci in chosen])
            h = self.head(self.lm.embed_tokens(toks[0]).unsqueeze(0), feats.unsqueeze(0), positions=pos,
                          cache=self.cache, slots=slots, attn_mask=m, kv_len=kv_len)[0]
            self.forwards += 1
            for row, ci in enumerate(chosen):
                hidden_of[ci] = h[row]
            return self._logits(h)

        grower.grow(expand, max_expansions=min(max_expansions, self.cache.max_len - base), stop=stop, on_step=on_step)
        tree = grower.build(budget)
        self._node_hidden = {node: root_hidden if ci == -1 else hidden_of[ci]
                             for node, ci in enumerate(grower.built) if ci == -1 or ci in hidden_of}
        return tree

    @torch.inference_mode()
    def grow_assuming(self, path: list[int], tokens: list[int], stop: threading.Event | None = None,
                      record=None, **grow_kwargs) -> Tree:
        """Grow a tree rooted at the leaf of `path` (nodes of the last grown tree, root first;
        `tokens`: theirs after the root) as if the target accepted the whole path: the root's
        children are the head's guesses of the target's bonus token, and `settle` adopts the
        subtree under the real one. The path's pairs take the head's own outputs as features
        (what `phide.distill.head.head_rollout` trains it for). `record`: the side lane's
        `CudaLane.record` (post-verify overlap), which marks the pending pairs as in use there."""
        before = (self.length, list(self._embeds), list(self._feats), self.root_token)
        if record is None and self.head.device.type == "cuda":  # called directly: the current stream
            record = functools.partial(torch.Tensor.record_stream, stream=torch.cuda.current_stream(self.head.device))
        if record is not None:
            # The pending pairs were made on the target's stream and are consumed here, maybe on
            # a side stream: their memory must not be reused before this stream is done with it.
            for t in self._embeds + self._feats:
                record(t)
        self.queue(tokens, torch.stack([self._node_hidden[n] for n in path[:-1]]))
        tree = self.grow(stop=stop, **grow_kwargs)
        self._assumed = (before, list(tokens), tree, self._node_hidden)
        return tree

    def settle(self, tree: Tree, accept_nodes: list[int], bonus: int, budget: int) -> Tree | None:
        """After `grow_assuming`, with the target's real outcome: forget the speculation's cached
        rows, queue the real pairs (`accepted_pairs`; their rows are recomputed at the next growth)
        and return the speculative tree's subtree under the bonus when it guessed right
        (phide.speculation.tree.adopt_subtree), else None."""
        tokens, feats = accepted_pairs(self.target, tree, accept_nodes, bonus)
        (self.length, embeds, feats_before, self.root_token), spec_tokens, spec_tree, node_hidden = self._assumed
        self._embeds, self._feats = list(embeds), list(feats_before)
        self._assumed = None
        self.queue(tokens, feats)
        found = adopt_subtree(spec_tree, spec_tokens, tokens[:-1], tokens[-1], budget)
        if found is None:
            return None
        tree, old = found
        self._node_hidden = {new: node_hidden[o] for new, o in enumerate(old) if o in node_hidden}
        return tree

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # The target's vocabulary (EAGLE-2: its LM head; EAGLE-3: the head's own, ids outside its
        # draft vocabulary at -inf); the tree grower normalises (ops.tree_topk).
        return self.head.logits(hidden, self.lm)

    def commit(self, tree: Tree, accept_nodes: list[int], bonus: int) -> None:
        """Queue the accepted path's pairs: features from the target's verify forward of this tree."""
        self.queue(*accepted_pairs(self.target, tree, accept_nodes, bonus))

    def queue(self, tokens: list[int], feats: torch.Tensor) -> None:
        """Pairs (embedding of tokens[i], feats[i]) [k, H]; the last token becomes the root."""
        with torch.inference_mode():
            emb = self.lm.embed_tokens(self.target.transfers.upload(torch.tensor(tokens, dtype=torch.int64))[0])
        self._embeds.append(emb.to(self.head.device))
        self._feats.append(feats.to(self.head.device))
        self.root_token = int(tokens[-1])
