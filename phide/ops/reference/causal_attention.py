"""Causal prefill attention, torch reference: the CPU path of `ops.causal_attention` and the
reference for its flash-attn path (same signature and semantics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["causal_attention_torch"]


def causal_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B, Hq, T, D], k / v [B, Hkv, T, D] (Hq a multiple of Hkv) -> [B, Hq, T, D]: row t sees
    rows 0..t. SDPA's is_causal path: no mask tensor, so torch may pick its fused kernels."""
    if k.shape[2] != q.shape[2]:
        raise ValueError(f"causal attention over rows 0..T-1 needs as many keys as queries, "
                         f"got {k.shape[2]} keys for {q.shape[2]} queries")
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
