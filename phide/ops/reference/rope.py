"""RoPE on q and k and the layer's KV-cache write, torch twin: the CPU path of `ops.rope_kv_write`
and the reference of phide.triton_kernels.rope_kv_write (same signature and semantics).

After the fused q/k/v projection a layer holds qkv [B, T, (Hq + 2 Hkv) D]. This rotates the q and
k heads (transformers' rotate-half RoPE: x * cos + rotate_half(x) * sin, elementwise, so the
kernel and this twin agree bit for bit), writes the rotated k and the v heads into the layer's
cache at each token's slot, and returns the rotated q [B, Hq, T, D] for attention.
"""

from __future__ import annotations

import torch

__all__ = ["rotate_half", "rope_kv_write_torch"]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_kv_write_torch(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                        v_cache: torch.Tensor, slots: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """qkv [B, T, (Hq + 2 Hkv) D] (q heads, then k, then v); cos, sin [B, T, D] (rope_cos_sin);
    k_cache, v_cache [B, Hkv, S, D] (one layer, written in place: row slots[b, t] of request b
    gets token t's rotated k and its v); slots [B, T] int64. Returns q [B, Hq, T, D] rotated."""
    B, T, _ = qkv.shape
    D = cos.shape[-1]
    heads = qkv.view(B, T, n_heads + 2 * n_kv_heads, D)
    qk = heads[:, :, : n_heads + n_kv_heads]
    c, s = cos.unsqueeze(2), sin.unsqueeze(2)  # [B, T, 1, D]: every head of a token
    rotated = qk * c + rotate_half(qk) * s  # q and k heads in one pass
    k = rotated[:, :, n_heads:].to(k_cache.dtype)
    v = heads[:, :, n_heads + n_kv_heads:].to(v_cache.dtype)
    if B == 1:  # one request: a row copy along the slot dim (no batch index to build)
        k_cache[0].index_copy_(1, slots[0], k[0].transpose(0, 1))
        v_cache[0].index_copy_(1, slots[0], v[0].transpose(0, 1))
    else:
        b_idx = torch.arange(B, device=qkv.device).unsqueeze(1).expand(B, T)
        # Advanced indices around a slice put the indexed dims first: [B, T, Hkv, D].
        k_cache[b_idx, :, slots] = k
        v_cache[b_idx, :, slots] = v
    return rotated[:, :, :n_heads].transpose(1, 2)
