"""KV commit after verification: keep the accepted path of the draft tree, in place.

KV cache layout: k_cache, v_cache [L, B, H, S, D] (layers, batch, kv heads, slots, head_dim).
The verify pass wrote the KV of tree node j of request b at slot `base[b] + j`. After
verification the accepted path (root first) must sit contiguously at `base[b] + 0 .. accept_len`:
node `accept_nodes[b, i]` moves to slot `base[b] + i`.

The moves are done in place, so they race: for a path like [0, 2, 3] the move 3 -> 2 overwrites
the source of 2 -> 1 unless every source is read before any destination is written.
Advanced-index assignment does exactly that: the right-hand side gather
materialises a temporary holding all sources, then one scatter stores it. All layers move at
once; there is no host sync (no boolean masks, no .item()), so this is graph-capturable.
"""

from __future__ import annotations

import torch

__all__ = ["gather_rows_", "commit_accepted_path"]


def gather_rows_(
    cache: torch.Tensor, b_idx: torch.Tensor, src_slots: torch.Tensor, dst_slots: torch.Tensor
) -> torch.Tensor:
    """cache[:, b_idx[m], :, dst_slots[m]] = old cache[:, b_idx[m], :, src_slots[m]] for every m.

    cache [L, B, H, S, D]; b_idx, src_slots, dst_slots: int64 index tensors of one shape (any
    rank). All sources are gathered into a temporary before any store, so overlapping src/dst
    sets are safe. The (b, dst) pairs must be distinct, or be duplicates that carry equal values.
    Returns `cache` (modified in place).
    """
    cache[:, b_idx, :, dst_slots] = cache[:, b_idx, :, src_slots]
    return cache


def commit_accepted_path(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    base: torch.Tensor,
    accept_nodes: torch.Tensor,
    accept_len: torch.Tensor,
) -> None:
    """Move the accepted path of every request to the front of its tree slots, in place.

    k_cache, v_cache: [L, B, H, S, D] (may be the same shape and dtype or differ in D/dtype).
    base: [B] int64, slot of tree node 0 (the root) of request b.
    accept_nodes: [B, W] int64, accepted node ids, root first (accept_nodes[b, 0] == 0), -1 padded.
    accept_len: [B] int64, accepted drafts; the path is accept_nodes[b, 0 .. accept_len[b]].

    For i <= accept_len[b]: slot base[b] + i <- slot base[b] + accept_nodes[b, i]. Slots
    base[b] + i for i > accept_len[b] (the rest of the tree) keep whatever they hold; the caller
    masks them by sequence length. Requires base[b] + W <= S (the tree's own slots).
    """
    B, W = accept_nodes.shape
    device = accept_nodes.device
    steps = torch.arange(W, dtype=torch.int64, device=device).unsqueeze(0)  # [1, W]
    on_path = steps <= accept_len.to(device=device, dtype=torch.int64).unsqueeze(1)  # [B, W]
    rel_src = torch.where(on_path, accept_nodes.to(torch.int64), steps)  # off-path: identity
    base_col = base.to(device=device, dtype=torch.int64).unsqueeze(1)
    src = base_col + rel_src
    dst = base_col + steps.expand(B, W)
    b_idx = torch.arange(B, dtype=torch.int64, device=device).unsqueeze(1).expand(B, W)
    gather_rows_(k_cache, b_idx, src, dst)
    gather_rows_(v_cache, b_idx, src, dst)
