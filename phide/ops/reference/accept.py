"""The greedy tree acceptance walk: the torch twin.

`tree_accept_greedy_torch` is the reference semantics for the C++/CUDA walk
(`csrc/tree_accept.h`) and the CPU path when the extension is missing. `phide.ops` dispatches
between them.

Tree layout (per request b, fixed node count N so batches stack):
  tokens  [B, N] int64  node 0 is the root: the last committed token, not yet in the target cache
  parents [B, N] int64  parents[b, 0] = -1; parents[b, i] < i (topological order); a node i > 0
                        with parent -1 is padding and is never visited
Children of a node are visited in ascending node index (= descending draft score for phide's
tree builders).

Outputs:
  accept_nodes [B, N] int64  accepted path, root first, -1 padded
  out_tokens   [B, N] int64  accepted draft tokens, then the bonus token, -1 padded
  accept_len   [B]    int64  number of accepted draft tokens (bonus excluded)

The walk serves greedy and sampled decoding alike: `target_choice` is the target's argmax per
node, or, when sampling, its Gumbel-max sample with hash noise keyed by the seed, the output
position and the token (`phide.ops.gumbel_choices`). A child is then accepted exactly when its
token is the one the target draws, so the emitted tokens are those target-only decoding would
produce with the same seed.
"""

from __future__ import annotations

import torch

__all__ = [
    "children_lists",
    "tree_accept_greedy_torch",
]


def children_lists(parents_row: list[int]) -> list[list[int]]:
    """Children of each node in ascending index; padding nodes (parent -1, index > 0) dropped."""
    n = len(parents_row)
    kids: list[list[int]] = [[] for _ in range(n)]
    for i in range(1, n):
        p = parents_row[i]
        if p < 0:
            continue
        if p >= i:
            raise ValueError(f"tree is not topologically sorted: parent[{i}] = {p}")
        kids[p].append(i)
    return kids


def _empty_outputs(B: int, N: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    accept_nodes = torch.full((B, N), -1, dtype=torch.int64, device=device)
    out_tokens = torch.full((B, N), -1, dtype=torch.int64, device=device)
    accept_len = torch.zeros(B, dtype=torch.int64, device=device)
    return accept_nodes, out_tokens, accept_len


def tree_accept_greedy_torch(
    tokens: torch.Tensor, parents: torch.Tensor, target_choice: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy walk: accept a child while its token equals the target's choice at its parent.

    tokens, parents, target_choice: [B, N] int64 (target_choice[b, i] = the target's choice after
    node i: its argmax, or its Gumbel-max sample).
    """
    B, N = tokens.shape
    accept_nodes, out_tokens, accept_len = _empty_outputs(B, N, tokens.device)
    tok = tokens.tolist()
    par = parents.tolist()
    choice = target_choice.tolist()
    for b in range(B):
        kids = children_lists(par[b])
        last, n = 0, 0
        accept_nodes[b, 0] = 0
        while True:
            want = choice[b][last]
            nxt = next((c for c in kids[last] if tok[b][c] == want), -1)
            if nxt < 0:
                break
            n += 1
            accept_nodes[b, n] = nxt
            out_tokens[b, n - 1] = tok[b][nxt]
            last = nxt
        out_tokens[b, n] = choice[b][last]
        accept_len[b] = n
    return accept_nodes, out_tokens, accept_len
