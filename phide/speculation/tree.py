"""Draft token trees: structure, masks, positions, and EAGLE-2 style dynamic growth.

A tree has N nodes in topological order; node 0 is the root (the last committed token). Children
of a node appear in ascending index, which phide's builders make descending draft score, so the
verifier tries the draft's favourite first. Padding nodes (index > 0, parent -1) make trees of
different sizes stack into one [B, N] batch.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable

import torch

from phide import ops
from phide.errors import DraftFault
from phide.models.llama import TreeAttention
from phide.ops.reference.tree_attention import MAX_TREE_NODES, ancestor_sets
from phide.runtime.transfers import Transfers


@dataclass
class Tree:
    """tokens [N], parents [N] (parents[0] = -1), plus per-node draft bookkeeping."""

    tokens: list[int]
    parents: list[int]
    scores: list[float] = field(default_factory=list)  # cumulative draft log-prob (root 0)
    draft_slot: list[int] = field(default_factory=list)  # draft KV row of expanded nodes, else -1

    def __post_init__(self):
        n = len(self.tokens)
        if len(self.parents) != n or n == 0 or self.parents[0] != -1:
            raise ValueError("a tree needs N >= 1 nodes with parents[0] == -1")
        for i in range(1, n):
            if not (self.parents[i] == -1 or 0 <= self.parents[i] < i):
                raise ValueError(f"node {i} has parent {self.parents[i]}: not topologically sorted")
        if not self.scores:
            self.scores = [0.0] * n
        if not self.draft_slot:
            self.draft_slot = [-1] * n

    def __len__(self) -> int:
        return len(self.tokens)

    def depths(self) -> list[int]:
        d = [0] * len(self)
        for i in range(1, len(self)):
            d[i] = d[self.parents[i]] + 1 if self.parents[i] >= 0 else 1
        return d

    def max_depth(self) -> int:
        return max(self.depths())


def chain(root: int, drafts: list[int], scores: list[float] | None = None) -> Tree:
    """A chain: root -> drafts[0] -> drafts[1] -> ..."""
    n = len(drafts) + 1
    return Tree(
        tokens=[root, *drafts],
        parents=[-1, *range(n - 1)],
        scores=[0.0, *(scores or [0.0] * (n - 1))],
    )


def best_closed(items, scores, depths, parents, root: int, limit: int) -> list[int]:
    """The best `limit` of `items` (indices into scores / depths / parents) whose parent is `root`
    or kept before them, best first. Ranking (score desc, depth asc, index asc) puts a parent
    before any child even when a child's log-prob rounds to 0, so every prefix of the result is
    ancestor-closed. Shared by TreeGrower.build (candidates) and `subtree` (tree nodes)."""
    ranked: list[int] = []
    kept = {root}
    for i in sorted(items, key=lambda i: (-scores[i], depths[i], i)):
        if len(ranked) >= limit:
            break
        if parents[i] in kept:
            kept.add(i)
            ranked.append(i)
    return ranked


def subtree(tree: Tree, top: int, budget: int) -> tuple[Tree, list[int]]:
    """The subtree under node `top` (which becomes the root), cut to its best `budget` nodes
    (`best_closed`, as TreeGrower.build ranks). Returns (tree, old index of each new node).
    Draft KV slots are dropped (-1)."""
    depth = tree.depths()
    inside = {top}
    for node in range(top + 1, len(tree)):  # parents come before children
        if tree.parents[node] in inside:
            inside.add(node)
    kept = best_closed(inside - {top}, tree.scores, depth, tree.parents, top, budget - 1)
    old = [top] + sorted(kept, key=lambda n: (depth[n], n))
    new_of = {o: i for i, o in enumerate(old)}
    parents = [-1] + [new_of[tree.parents[o]] for o in old[1:]]
    return Tree([tree.tokens[o] for o in old], parents, [tree.scores[o] for o in old]), old


def adopt_subtree(spec_tree: Tree, spec_tokens: list[int], real_tokens: list[int], bonus: int,
                  budget: int) -> tuple[Tree, list[int]] | None:
    """Post-verify overlap's hit test. spec_tree was grown, during a verify, from the leaf of the
    path `spec_tokens` as if the target accepted all of it; the target really accepted
    `real_tokens` and then emitted `bonus`. On the whole path and a bonus among the root's
    children, that child's subtree (`subtree`) is the next round's tree; else None."""
    if list(real_tokens) != list(spec_tokens):
        return None
    child = next((n for n in range(1, len(spec_tree))
                  if spec_tree.parents[n] == 0 and spec_tree.tokens[n] == bonus), None)
    return None if child is None else subtree(spec_tree, child, budget)


def ancestor_mask(parents: list[int]) -> torch.Tensor:
    """[N, N] bool: mask[i, j] = j is i or an ancestor of i (`ancestor_sets`, dense)."""
    n = len(parents)
    sets = ancestor_sets(parents)
    return torch.tensor([[(sets[i] >> j) & 1 == 1 for j in range(n)] for i in range(n)], dtype=torch.bool).view(n, n)


def stack_trees(trees: list[Tree], n: int, pad_token: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad every tree to n nodes and stack: tokens, parents [B, n] int64."""
    tokens = torch.full((len(trees), n), pad_token, dtype=torch.int64)
    parents = torch.full((len(trees), n), -1, dtype=torch.int64)
    for b, t in enumerate(trees):
        if len(t) > n:
            raise ValueError(f"tree {b} has {len(t)} nodes, more than the batch's {n}")
        tokens[b, : len(t)] = torch.tensor(t.tokens)
        parents[b, : len(t)] = torch.tensor(t.parents)
    return tokens, parents


@dataclass
class VerifyLayout:
    """B trees verified in one forward, each padded to n nodes (padding: token 0, parent -1, seen
    by nobody, seeing only itself): request b's node j sits at cache row prefix_lens[b] + j after
    its prefix_lens[b] committed rows, at position prefix_lens[b] + depth. Host tensors; the one
    place a tree's visibility (`ancestor_sets`: the whole prefix, then ancestors-or-self) becomes
    model inputs, for the engine's verifies and the batched path alike."""

    tokens: torch.Tensor       # [B, n] int64
    parents: torch.Tensor      # [B, n] int64
    depths: torch.Tensor       # [B, n] int64 (padding: 0)
    positions: torch.Tensor    # [B, n] int64
    slots: torch.Tensor        # [B, n] int64
    prefix_lens: torch.Tensor  # [B] int64
    n_nodes: torch.Tensor      # [B] int64
    sets: list                 # per request, ancestor_sets of its padded parents

    @property
    def n(self) -> int:
        return self.tokens.shape[1]

    def ancestors(self) -> torch.Tensor:
        """[B, n] int64 bitmasks (n <= MAX_TREE_NODES): what `ops.tree_attention` reads."""
        if self.n > MAX_TREE_NODES:
            raise ValueError(f"{self.n} nodes: structured tree attention holds at most {MAX_TREE_NODES}")
        return torch.tensor([[b - (1 << 64) if b >= 1 << 63 else b for b in sets] for sets in self.sets],
                            dtype=torch.int64)

    def mask(self) -> torch.Tensor:
        """[B, n, max(prefix) + n] bool: the dense mask (trees past MAX_TREE_NODES, references)."""
        B, n = self.tokens.shape
        kv_len = int(self.prefix_lens.max()) + n
        mask = torch.zeros(B, n, kv_len, dtype=torch.bool)
        for b, sets in enumerate(self.sets):
            plen = int(self.prefix_lens[b])
            mask[b, :, :plen] = True
            mask[b, :, plen: plen + n] = torch.tensor([[(s >> j) & 1 == 1 for j in range(n)] for s in sets])
        return mask

    def tree_attention(self, device="cpu") -> TreeAttention:
        """The structured form for `LlamaModel.forward(tree=...)` (no dense mask read)."""
        lens = self.prefix_lens.to(device)
        return TreeAttention(prefix_len=lens, tree_start=lens, ancestors=self.ancestors().to(device),
                             n_nodes=self.n_nodes.to(device))


def tree_layout(trees: list[Tree], prefix_lens: list[int], n: int | None = None) -> VerifyLayout:
    """The VerifyLayout of `trees` (n: nodes per request, default the largest tree)."""
    n = max(len(t) for t in trees) if n is None else n
    tokens, parents = stack_trees(trees, n)
    depths = torch.zeros(len(trees), n, dtype=torch.int64)
    for b, t in enumerate(trees):
        depths[b, : len(t)] = torch.tensor(t.depths())
    lens = torch.tensor(prefix_lens, dtype=torch.int64)
    return VerifyLayout(tokens=tokens, parents=parents, depths=depths, positions=lens[:, None] + depths,
                        slots=lens[:, None] + torch.arange(n, dtype=torch.int64)[None, :], prefix_lens=lens,
                        n_nodes=torch.tensor([len(t) for t in trees], dtype=torch.int64),
                        sets=[ancestor_sets(row.tolist()) for row in parents])


@dataclass
class _Candidate:
    token: int
    score: float
    parent: int  # index into the candidate list, -1 for the root
    depth: int
    slot: int = -1  # draft KV row once expanded


# expand(frontier) -> logits [F, V] of the next token after each frontier candidate (any
# monotone shift per row is fine, e.g. log-probs: the grower normalises them itself).
ExpandFn = Callable[[list[int]], torch.Tensor]


class TreeGrower:
    """EAGLE-2 dynamic tree: expand the top-k of each frontier by cumulative log-prob, keep the
    best `budget` nodes overall. Growth is incremental (`step`) so a caller can stop it at any
    time (the end of the target's prefill) and still get a valid tree.

    `expand(ids)` receives candidate indices (into `self.cands`; -1 never passed) whose ancestors
    were all expanded before, runs the draft on them, and returns [F, V] logits. The caller
    records each expanded candidate's KV slot via `cands[i].slot`.

    Children come from `ops.tree_topk` (Triton or its torch twin): the top-k tokens of each
    row's log-softmax, ties to the lower token id, scored by cumulative log-prob (fp32).
    """

    def __init__(self, root_token: int, root_logits: torch.Tensor, *, topk: int, max_depth: int,
                 transfers: Transfers | None = None):
        self.root_token = root_token
        self.topk = max(1, topk)
        self.max_depth = max_depth
        self.transfers = transfers or Transfers(root_logits.device)
        self.cands: list[_Candidate] = []
        self.frontier: list[int] = []
        self.expanded = 0
        self._parent_scores: torch.Tensor | None = None  # the expanding candidates' scores, on the device
        self._add_children([-1], root_logits.unsqueeze(0))

    def _add_children(self, parents: list[int], logits: torch.Tensor, parent_scores: torch.Tensor | None = None):
        """Children of `parents` (candidate indices, -1 = the root) from their logits [F, V] and
        their cumulative scores [F] on the device (the root's: zeros). ONE read of the top-k."""
        depths = [self.cands[p].depth if p >= 0 else 0 for p in parents]
        if min(depths) + 1 > self.max_depth:
            return
        if parent_scores is None:
            parent_scores = torch.zeros(len(parents), dtype=torch.float32, device=logits.device)
        k = min(self.topk, logits.shape[-1])
        tokens, scores, row_lse = ops.tree_topk(logits, parent_scores, k)
        tokens, scores, finite = self.transfers.download(tokens, scores, torch.isfinite(row_lse).all().view(1))
        if not bool(finite[0]):
            raise DraftFault("draft produced NaN or all -inf log-probs")
        for p, depth, toks, vals in zip(parents, depths, tokens.tolist(), scores.tolist()):
            if depth + 1 > self.max_depth:
                continue
            new = []
            for t, v in zip(toks, vals):
                if v == float("-inf"):
                    continue
                self.cands.append(_Candidate(t, v, p, depth + 1))
                new.append(len(self.cands) - 1)
            if depth + 1 < self.max_depth:  # nodes at max depth are never expanded
                self.frontier.extend(new)

    def can_grow(self) -> bool:
        return bool(self.frontier)

    def next_frontier(self) -> list[int]:
        """The top-k frontier candidates by score (ties: shallower, then older first)."""
        best = heapq.nsmallest(
            self.topk, self.frontier, key=lambda i: (-self.cands[i].score, self.cands[i].depth, i)
        )
        return sorted(best)

    def step(self, expand: ExpandFn) -> int:
        """Expand one frontier; returns how many nodes were expanded (0 when done)."""
        if not self.frontier:
            return 0
        chosen = self.next_frontier()
        # Only the newest level stays on the frontier (EAGLE-2 expands level by level).
        self.frontier = []
        self._parent_scores = None
        logits = expand(chosen)
        scores = self._parent_scores  # uploaded with the expansion's inputs (expansion_inputs)
        if scores is None:  # an expand that did not ask for its inputs (tests): upload them now
            scores = self.transfers.upload(torch.tensor([self.cands[ci].score for ci in chosen],
                                                        dtype=torch.float32))[0].to(logits.device)
        self._add_children(chosen, logits, scores)
        self.expanded += len(chosen)
        return len(chosen)

    def expansion_inputs(self, chosen: list[int], base: int):
        """Assign KV slots to the `chosen` candidates (scratch rows after the `base` committed rows,
        in expansion order) and build their inputs on the device in ONE packed upload: tokens
        [1,F], positions [1,F] (base - 1 + depth), slots [1,F] and the mask [1, F, kv_len] (all
        committed rows, then each node's expanded ancestors and itself); the chosen candidates'
        scores travel with them (for their children). Returns (tokens, positions, slots, mask,
        kv_len)."""
        first = base + self.expanded
        for k, ci in enumerate(chosen):
            self.cands[ci].slot = first + k
        kv_len = first + len(chosen)
        mask = torch.zeros(1, len(chosen), kv_len, dtype=torch.bool)
        mask[0, :, :base] = True
        for row, ci in enumerate(chosen):
            for anc in self.ancestors(ci):
                mask[0, row, self.cands[anc].slot] = True
        tokens = torch.tensor([[self.cands[ci].token for ci in chosen]], dtype=torch.int64)
        positions = torch.tensor([[base - 1 + self.cands[ci].depth for ci in chosen]], dtype=torch.int64)
        slots = torch.arange(first, kv_len, dtype=torch.int64).unsqueeze(0)
        scores = torch.tensor([self.cands[ci].score for ci in chosen], dtype=torch.float32)
        tokens, positions, slots, mask, self._parent_scores = self.transfers.upload(tokens, positions, slots, mask,
                                                                                    scores)
        return tokens, positions, slots, mask, kv_len

    def grow(self, expand: ExpandFn, *, max_expansions: int, stop=None, on_step=None) -> None:
        """Step until the frontier is exhausted, `stop` (anything with `is_set()`: a
        threading.Event, the hide window) is set, or the next step would pass `max_expansions`
        expanded nodes. `on_step(candidates)` is called now and after every step (the engine
        records a device signal there: when the step's work is really done)."""
        if on_step is not None:
            on_step(len(self.cands))
        while self.can_grow() and not (stop is not None and stop.is_set()):
            if self.expanded + min(self.topk, len(self.frontier)) > max_expansions:
                break
            self.step(expand)
            if on_step is not None:
                on_step(len(self.cands))

    def ancestors(self, ci: int) -> list[int]:
        out = []
        while ci >= 0:
            out.append(ci)
            ci = self.cands[ci].parent
        return out[::-1]

    def build(self, budget: int, root_slot: int = -1) -> Tree:
        """Keep the best `budget - 1` candidates (`best_closed`: every prefix ancestor-closed) and
        return them as a Tree."""
        kept = best_closed(range(len(self.cands)), [c.score for c in self.cands], [c.depth for c in self.cands],
                           [c.parent for c in self.cands], -1, budget - 1)
        # Topological order: by depth, then creation order (= draft preference among siblings).
        nodes = sorted(kept, key=lambda i: (self.cands[i].depth, i))
        self.built = [-1] + nodes  # candidate index of each tree node (-1: the root)
        index = {ci: k + 1 for k, ci in enumerate(nodes)}
        tokens, parents, scores, slots = [self.root_token], [-1], [0.0], [root_slot]
        for ci in nodes:
            c = self.cands[ci]
            tokens.append(c.token)
            parents.append(0 if c.parent == -1 else index[c.parent])
            scores.append(c.score)
            slots.append(c.slot)
        return Tree(tokens, parents, scores, slots)
