"""Tree-verify attention, torch twin: the CPU path of `ops.tree_attention` and the reference of
phide.triton_kernels.tree_attention (same signature and semantics).

One verify forward runs the N tree nodes of each request over its one-layer KV cache. Cache row
s is visible to node i of request b iff

    s < prefix_len[b]                                            (the committed prefix: every node)
    s == tree_start[b] + j, j < N, bit j of ancestors[b, i] set   (the node's ancestors and itself)

`ancestors` is one int64 bitmask per node (bit 63 is the sign bit), so a tree has at most
MAX_TREE_NODES = 64 nodes. Requests may hold trees of different sizes padded to N: nodes
i >= n_nodes[b] are padding and their output is zero (it never touches real nodes' outputs).

The twin builds that visibility as a dense boolean mask and calls torch SDPA, exactly as the
decoder's dense-mask path does, so on the CPU both paths give bit-identical results.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from phide.formats import MAX_TREE_NODES  # one int64 ancestor bitmask per node

__all__ = ["MAX_TREE_NODES", "ancestor_sets", "ancestor_bits", "tree_visibility", "tree_masks",
           "tree_attention_torch"]


def ancestor_sets(parents: list[int]) -> list[int]:
    """THE visibility rule of a tree: per node, the set of nodes it sees (itself and its
    ancestors) as a Python int bitset (bit j = node j, any tree size); `parents` is topologically
    sorted with -1 for the root and for padding nodes (which see only themselves)."""
    sets: list[int] = []
    for i, p in enumerate(parents):
        sets.append((sets[p] if p >= 0 else 0) | (1 << i))
    return sets


def ancestor_bits(parents: list[int]) -> list[int]:
    """`ancestor_sets` as the kernels read them: signed int64 bitmasks (a set bit 63 makes the
    mask negative), so at most MAX_TREE_NODES nodes."""
    if len(parents) > MAX_TREE_NODES:
        raise ValueError(f"{len(parents)} nodes: ancestor bitmasks hold at most {MAX_TREE_NODES}")
    return [b - (1 << 64) if b >= 1 << 63 else b for b in ancestor_sets(parents)]


def tree_visibility(prefix_len, tree_start, ancestors, kv_len: int) -> torch.Tensor:
    """Dense mask [B, N, kv_len] bool (True = attend) for cache rows [0, kv_len).

    prefix_len, tree_start: [B] int; ancestors: [B, N] int64 bitmasks (see the module doc)."""
    device = ancestors.device
    cols = torch.arange(kv_len, device=device)
    prefix = cols[None, :] < prefix_len.to(device).view(-1, 1)  # [B, kv_len]
    rel = cols[None, :] - tree_start.to(device).view(-1, 1)  # row's node index in the tree
    n = ancestors.shape[1]
    in_tree = (rel >= 0) & (rel < n)
    # Arithmetic right shift keeps bit 63 usable: (negative >> 63) & 1 == 1.
    bit = (ancestors.to(torch.int64)[:, :, None] >> rel.clamp(0, 63)[:, None, :]) & 1
    return prefix[:, None, :] | (in_tree[:, None, :] & (bit != 0))


def tree_masks(prefix_len, tree_start, ancestors, n_nodes, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(visibility [B, N, kv_len] bool, padding [B, N] bool: node i >= n_nodes[b]): everything
    the twin builds from the tree alone, once for all the layers of a forward."""
    nodes = torch.arange(ancestors.shape[1], device=ancestors.device)[None, :]
    padding = nodes >= n_nodes.to(ancestors.device).view(-1, 1)
    return tree_visibility(prefix_len, tree_start, ancestors, kv_len), padding


def tree_attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    prefix_len: torch.Tensor,
    tree_start: torch.Tensor,
    ancestors: torch.Tensor,
    n_nodes: torch.Tensor,
    scale: float | None = None,
    visibility: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Attention of every tree node over its visible cache rows.

    q: [B, Hq, N, D] (RoPE applied); k_cache, v_cache: [B, Hkv, S, D], one layer with the tree's
    own rows already written (Hq a multiple of Hkv: query head h reads KV head h // (Hq / Hkv));
    prefix_len, tree_start, n_nodes: [B] int; ancestors: [B, N] int64 bitmasks;
    scale: None = 1 / sqrt(D) (as SDPA); visibility: `tree_masks(...)` for these rows, when
    precomputed (one forward's layers share it), either part None when the caller knows it
    changes nothing (every row visible; no padding node). Returns [B, Hq, N, D] in q's dtype
    (laid out [B, N, Hq, D] in memory, as the kernel writes it), zero for padding nodes. Requires tree_start[b] + n_nodes[b] <= S.
    """
    B, Hq, N, D = q.shape
    if N > MAX_TREE_NODES:
        raise ValueError(f"{N} tree nodes: the ancestor bitmask holds at most {MAX_TREE_NODES}")
    Hkv, S = k_cache.shape[1], k_cache.shape[2]
    mask, padding = visibility if visibility is not None else tree_masks(prefix_len, tree_start, ancestors, n_nodes, S)
    out = F.scaled_dot_product_attention(
        q, k_cache, v_cache, attn_mask=None if mask is None else mask.unsqueeze(1), scale=scale,
        enable_gqa=Hq != Hkv
    )
    # a fill, not a multiply: a padding row with nothing visible is NaN inside SDPA.
    out = out if padding is None else out.masked_fill(padding[:, None, :, None], 0.0)
    # the kernel's layout, [B, N, Hq, D] in memory (the decoder reads each node's heads together)
    return out.transpose(1, 2).contiguous().transpose(1, 2) if N > 1 else out
