"""Draft tree step: top-k children of each frontier row and their cumulative log-probs (torch
twin: phide.ops.reference.tree_topk.tree_topk_torch, same signature and semantics, documented there).

One program per row streams the vocabulary once in BLOCK_V chunks. Per lane it keeps a running
max and rescaled sum of exp (the online log-sum-exp), and per row a running top-K list in
registers: a chunk whose best logit beats the list's last entry (or any chunk while the list is
not full) is merged into it by K selections over (list + chunk), each taking the best remaining
(value desc, token id asc). The list only holds ids of earlier chunks, all lower than the
chunk's, so equal values resolve to the list. Neither softmax nor log-probs ([rows, V]) are
ever materialised: the kernel reads the logits once and writes rows x (2K + 1) values.
Selection compares fp32 upcasts of the logits (exact), so tokens are bit-identical to the
twin's; scores differ only by the rounding of the sum of exp.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from phide.triton_kernels.launch import Launch

try:  # guarded: `import phide` (and this module) must work on machines without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on triton-less installs
    triton = None

__all__ = ["MAX_K", "TopkConfig", "topk_config", "tree_topk_launches", "tree_topk_triton"]

MAX_K = 64  # the list lives in registers and each chunk costs K selections
_MAX_BLOCK_V = 2048

if triton is not None:
    _NO_TOKEN = tl.constexpr(2**31 - 1)  # marks an empty list slot; above every token id

    @triton.jit
    def _tree_topk_kernel(
        logits_ptr,  # [R, V] float (fp32/fp16/bf16), unit stride along V
        parent_ptr,  # [R] fp32, cumulative log-prob of each row's node
        tokens_ptr,  # [R, K] int64 out, best first
        scores_ptr,  # [R, K] fp32 out, parent + token log-prob
        lse_ptr,  # [R] fp32 out, log-sum-exp (NaN if the row holds a NaN)
        stride_r,  # row stride of logits, in elements
        V,
        K: tl.constexpr,
        K_PAD: tl.constexpr,  # next_pow2(K)
        BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * stride_r
        lanes = tl.arange(0, BLOCK_V)
        slots = tl.arange(0, K_PAD)
        top_v = tl.full([K_PAD], float("-inf"), tl.float32)
        top_i = tl.full([K_PAD], _NO_TOKEN, tl.int32)
        m_lane = tl.full([BLOCK_V], float("-inf"), tl.float32)
        s_lane = tl.zeros([BLOCK_V], tl.float32)
        nan_seen = tl.zeros([BLOCK_V], tl.int32)
        for start in range(0, V, BLOCK_V):
            offs = start + lanes
            valid = offs < V
            x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
            is_nan = x != x
            nan_seen = nan_seen | is_nan.to(tl.int32)
            x = tl.where(is_nan, float("-inf"), x)

            # Online sum of exp per lane; m_safe avoids exp(-inf - -inf) on all -inf lanes.
            m_new = tl.maximum(m_lane, x)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            s_lane = s_lane * tl.exp(m_lane - m_safe) + tl.exp(x - m_safe)
            m_lane = m_new

            # Merge the chunk into the list, unless the list is full and the chunk's best does not
            # beat its last entry (an equal value loses: the chunk's ids are higher). That skips
            # the K selections for most chunks of a long row.
            last_v = tl.max(tl.where(slots == K - 1, top_v, float("-inf")), axis=0)
            last_i = tl.max(tl.where(slots == K - 1, top_i, 0), axis=0)
            if (last_i == _NO_TOKEN) | (tl.max(x, axis=0) > last_v):
                # An id of _NO_TOKEN means "nothing available", which keeps -inf candidates
                # (rows with fewer than K finite logits) selectable in id order.
                free_x = valid
                free_t = top_i != _NO_TOKEN
                new_v = tl.full([K_PAD], float("-inf"), tl.float32)
                new_i = tl.full([K_PAD], _NO_TOKEN, tl.int32)
                for r in tl.static_range(K):
                    xv = tl.max(tl.where(free_x, x, float("-inf")), axis=0)
                    xi = tl.min(tl.where(free_x & (x == xv), offs, _NO_TOKEN), axis=0)
                    tv = tl.max(tl.where(free_t, top_v, float("-inf")), axis=0)
                    ti = tl.min(tl.where(free_t & (top_v == tv), top_i, _NO_TOKEN), axis=0)
                    from_list = (tv > xv) | ((tv == xv) & (ti < xi))
                    best_v = tl.where(from_list, tv, xv)
                    best_i = tl.where(from_list, ti, xi)
                    new_v = tl.where(slots == r, best_v, new_v)
                    new_i = tl.where(slots == r, best_i, new_i)
                    free_x = free_x & (offs != best_i)
                    free_t = free_t & (top_i != best_i)
                top_v = new_v
                top_i = new_i

        m = tl.max(m_lane, axis=0)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        log_sum = tl.log(tl.sum(s_lane * tl.exp(m_lane - m_safe), axis=0))
        lse = tl.where(tl.max(nan_seen, axis=0) > 0, float("nan"), m + log_sum)
        tl.store(lse_ptr + row, lse)
        logp = tl.where(top_v == float("-inf"), float("-inf"), (top_v - m) - log_sum)
        out = row * K + slots
        keep = slots < K
        tl.store(tokens_ptr + out, top_i.to(tl.int64), mask=keep)
        tl.store(scores_ptr + out, tl.load(parent_ptr + row) + logp, mask=keep)


class TopkConfig(NamedTuple):
    block_v: int  # vocabulary lanes per loop step
    num_warps: int
    num_stages: int


def topk_config(V: int, k: int) -> TopkConfig:
    """The launcher's choices for rows of V logits and k children: a pure function of shapes
    (precompile.py and the tests call it too)."""
    block_v = min(_MAX_BLOCK_V, triton.next_power_of_2(V))
    return TopkConfig(block_v=block_v, num_warps=8 if block_v >= 2048 else 4, num_stages=3)


def tree_topk_launches(logits: torch.Tensor, parent_scores: torch.Tensor, k: int):
    """(tokens, scores, row_lse, launches) of tree_topk_triton without running the launches
    (arguments as there); the outputs are filled once they have run. Works on meta tensors."""
    lead, V = logits.shape[:-1], logits.shape[-1]
    if not 1 <= k <= min(V, MAX_K):
        raise ValueError(f"k must be in [1, min(V={V}, {MAX_K})], got {k}")
    if parent_scores.shape != lead:
        raise ValueError(f"parent_scores must be {tuple(lead)}, got {tuple(parent_scores.shape)}")
    dev = logits.device
    rows = logits.reshape(-1, V)  # a view when the leading dims are collapsible
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    R = rows.shape[0]
    tokens = torch.empty(R, k, dtype=torch.int64, device=dev)
    scores = torch.empty(R, k, dtype=torch.float32, device=dev)
    row_lse = torch.empty(R, dtype=torch.float32, device=dev)
    launches = []
    if R:
        parents = parent_scores.to(device=dev, dtype=torch.float32).reshape(-1).contiguous()
        cfg = topk_config(V, k)
        launches.append(Launch(
            _tree_topk_kernel, (R,),
            (rows, parents, tokens, scores, row_lse, rows.stride(0), V),
            dict(K=k, K_PAD=triton.next_power_of_2(k), BLOCK_V=cfg.block_v, num_warps=cfg.num_warps,
                 num_stages=cfg.num_stages),
        ))
    return tokens.view(*lead, k), scores.view(*lead, k), row_lse.view(lead), launches


def tree_topk_triton(
    logits: torch.Tensor, parent_scores: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton twin of tree_topk_torch: logits [..., V] (fp32/fp16/bf16), parent_scores [...],
    1 <= k <= min(V, MAX_K) -> tokens [..., k] int64, scores [..., k] fp32, row_lse [...] fp32.
    One launch, no host sync."""
    if triton is None:
        raise RuntimeError("tree_topk_triton needs triton; use tree_topk_torch")
    tokens, scores, row_lse, launches = tree_topk_launches(logits, parent_scores, k)
    for launch in launches:
        launch()
    return tokens, scores, row_lse
