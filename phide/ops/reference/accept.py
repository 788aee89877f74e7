"""Verification of draft trees and chains: the torch twins.

These functions are the reference semantics for the C++ acceptance walk (`csrc/tree_accept.h`)
and the CPU path when the extension is missing. `phide.ops` dispatches between them.

Tree layout (per request b, fixed node count N so batches stack):
  tokens  [B, N] int64  node 0 is the root: the last committed token, not yet in the target cache
  parents [B, N] int64  parents[b, 0] = -1; parents[b, i] < i (topological order); a node i > 0
                        with parent -1 is padding and is never visited
Children of a node are visited in ascending node index (= descending draft score for phide's
tree builders).

Outputs (same for every verifier):
  accept_nodes [B, N] int64  accepted path, root first, -1 padded
  out_tokens   [B, N] int64  accepted draft tokens, then the bonus token, -1 padded
  accept_len   [B]    int64  number of accepted draft tokens (bonus excluded)

Lossless stochastic verification of a tree whose proposals are a deterministic function of the
context (top-k children, distinct siblings) needs only the target's probabilities: one coin per
level, siblings tested in order against accumulated target mass (accept the first with
u < acc and p > 0), and when all are rejected the correction is drawn from the target row with
the rejected siblings removed. Accumulations are done in float64 so the C++ walk can reproduce
the twin bit for bit.
"""

from __future__ import annotations

import torch

__all__ = [
    "children_lists",
    "tree_accept_greedy_torch",
    "tree_accept_stochastic_torch",
    "sample_residual_torch",
    "chain_accept_leviathan",
    "target_probs",
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

    tokens, parents, target_choice: [B, N] int64 (target_choice[b, i] = target argmax after node i).
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


def sample_residual_torch(probs_row: torch.Tensor, rejected: list[int], coin: float) -> int:
    """Inverse-CDF sample of `probs_row` with the `rejected` tokens zeroed.

    Half-open buckets: the first index whose float64 running sum exceeds coin * total, so a
    zero-mass token is never returned, not even at coin 0. Falls back to the last index with
    positive residual mass (rounding), then to the row's argmax (no mass left at all).
    """
    r = probs_row.to(torch.float64).clone()
    V = r.numel()
    for x in rejected:
        if 0 <= x < V:
            r[x] = 0.0
    r = torch.clamp(r, min=0.0)
    # Sequential float64 running sum: identical to the C++ loop, element by element.
    cum = torch.cumsum(r, dim=0)
    total = float(cum[-1])
    if not total > 0.0:
        return int(torch.argmax(probs_row))
    threshold = float(coin) * total
    over = torch.nonzero(cum > threshold)
    if over.numel() > 0:
        return int(over[0, 0])
    return int(torch.nonzero(r > 0)[-1, 0])


def tree_accept_stochastic_torch(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    target_probs: torch.Tensor,
    coins: torch.Tensor,
    final_coins: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lossless target-only stochastic walk (SGLang/EAGLE style, see module docstring).

    tokens, parents: [B, N] int64; target_probs: [B, N, V] float (row i = target distribution
    after node i, temperature applied); coins: [B, N] float in [0, 1), coins[b, i] decides the
    level below node i; final_coins: [B] float in [0, 1) for the correction / bonus draw.
    """
    B, N = tokens.shape
    V = target_probs.shape[-1]
    accept_nodes, out_tokens, accept_len = _empty_outputs(B, N, tokens.device)
    tok = tokens.tolist()
    par = parents.tolist()
    u = coins.to(torch.float64).tolist()
    probs64 = target_probs.to(torch.float64)
    for b in range(B):
        kids = children_lists(par[b])
        last, n = 0, 0
        accept_nodes[b, 0] = 0
        rejected: list[int] = []
        while True:
            rejected = []
            acc = 0.0
            chosen = -1
            for c in kids[last]:
                x = tok[b][c]
                if x < 0 or x >= V or x in rejected:
                    continue  # invalid id or duplicate sibling: carries no mass of its own
                px = float(probs64[b, last, x])
                acc += px
                if px > 0.0 and u[b][last] < acc:
                    chosen = c
                    break
                rejected.append(x)
            if chosen < 0:
                break
            n += 1
            accept_nodes[b, n] = chosen
            out_tokens[b, n - 1] = tok[b][chosen]
            last = chosen
        out_tokens[b, n] = sample_residual_torch(target_probs[b, last], rejected, float(final_coins[b]))
        accept_len[b] = n
    return accept_nodes, out_tokens, accept_len


def chain_accept_leviathan(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    coins: torch.Tensor,
    final_coins: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Leviathan et al. speculative sampling for a chain whose tokens were SAMPLED from draft_probs.

    draft_tokens [B, K] int64; draft_probs [B, K, V] (q at each drafted position, exactly the
    distribution the tokens were drawn from); target_probs [B, K+1, V]; coins [B, K];
    final_coins [B]. Accept x_i when u_i * q(x_i) < p(x_i); at the first rejection draw from
    norm(max(p - q, 0)); if all K pass, the bonus is drawn from p_K.
    Returns out_tokens [B, K+1] (accepted, then the correction/bonus, -1 padded) and accept_len [B].
    """
    B, K = draft_tokens.shape
    out_tokens = torch.full((B, K + 1), -1, dtype=torch.int64, device=draft_tokens.device)
    accept_len = torch.zeros(B, dtype=torch.int64, device=draft_tokens.device)
    p64 = target_probs.to(torch.float64)
    q64 = draft_probs.to(torch.float64)
    for b in range(B):
        n = 0
        residual = None
        for i in range(K):
            x = int(draft_tokens[b, i])
            p, q = float(p64[b, i, x]), float(q64[b, i, x])
            if float(coins[b, i]) * q < p:
                out_tokens[b, n] = x
                n += 1
                continue
            residual = torch.clamp(p64[b, i] - q64[b, i], min=0.0)
            if not float(residual.sum()) > 0.0:
                residual = p64[b, i]
            break
        if residual is None:
            residual = p64[b, K]
        out_tokens[b, n] = sample_residual_torch(residual, [], float(final_coins[b]))
        accept_len[b] = n
    return out_tokens, accept_len


def target_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature softmax in float32; NaN logits fail closed (become -inf, never sampled)."""
    x = logits.float()
    x = torch.where(torch.isnan(x), torch.full_like(x, float("-inf")), x)
    return torch.softmax(x / temperature, dim=-1)
