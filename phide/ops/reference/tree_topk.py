"""Draft tree step, torch twin: the CPU path of `ops.tree_topk` and the reference of
phide.triton_kernels.tree_topk (same signature and semantics).

For every frontier row (any leading shape, e.g. [B, F] requests x frontier nodes) over the
vocabulary V, the k children a tree grower adds (phide.speculation.tree.TreeGrower):

    tokens[r, :]  the k largest logits of row r, best first; ties: lower token id first
    scores[r, j]  parent_scores[r] + log_softmax(logits[r])[tokens[r, j]]   (cumulative log-prob)
    row_lse[r]    log-sum-exp of row r

Selection runs on the raw logits (upcast to fp32, which is exact), not on log-probs: log_softmax
is monotone, but its rounding can merge two different logits into one log-prob and reorder a
tie, so selecting on logits makes the twin and the kernel pick bit-identical tokens. The log-prob
of a token is (x - max) - log(sum(exp(x - max))), torch.log_softmax's own formula.

Non-finite input: NaN logits count as -inf for selection and normalisation, and make row_lse NaN;
a row without any finite logit has row_lse -inf, and +inf logits make it non-finite too. A
non-finite row_lse therefore marks a row the draft must not be trusted with (the grower raises a
DraftFault). Tokens whose logit is -inf get score -inf (a row with fewer than k finite logits).
"""

from __future__ import annotations

import torch

__all__ = ["tree_topk_torch"]


def tree_topk_torch(
    logits: torch.Tensor, parent_scores: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [..., V] (any float dtype and strides), parent_scores [...] (cumulative log-prob of
    each row's node), 1 <= k <= V -> tokens [..., k] int64, scores [..., k] fp32, row_lse [...]
    fp32 (see the module doc)."""
    V = logits.shape[-1]
    if not 1 <= k <= V:
        raise ValueError(f"k must be in [1, V={V}], got {k}")
    x = logits.float()
    nan = torch.isnan(x)
    x = torch.where(nan, float("-inf"), x)
    # Ties go to the lower id, which torch.topk does not promise, and a stable sort of whole rows
    # costs ~50x a topk on a CPU. So: every logit above the k-th largest value, then the lowest
    # ids among those equal to it (exactly k picks), then the k picks ordered by value, ties by id.
    kth = torch.topk(x, k, dim=-1).values[..., -1:]
    above = x > kth
    tied = x == kth
    picked = above | (tied & (tied.cumsum(dim=-1) <= k - above.sum(dim=-1, keepdim=True)))
    ids = torch.arange(V, device=x.device)
    tokens = V - torch.topk(torch.where(picked, V - ids, 0), k, dim=-1).values  # ascending ids
    vals, order = torch.sort(x.gather(-1, tokens), dim=-1, descending=True, stable=True)
    tokens = tokens.gather(-1, order)
    m = x.amax(dim=-1, keepdim=True)
    m_safe = torch.where(m == float("-inf"), 0.0, m)  # an all -inf row: exp(-inf) = 0, no NaN
    log_sum = torch.log(torch.exp(x - m_safe).sum(dim=-1, keepdim=True))
    logp = torch.where(vals == float("-inf"), float("-inf"), (vals - m) - log_sum)
    scores = parent_scores.to(device=x.device, dtype=torch.float32).unsqueeze(-1) + logp
    row_lse = (m + log_sum).squeeze(-1)
    row_lse = torch.where(nan.any(dim=-1), float("nan"), row_lse)
    return tokens, scores, row_lse
