"""RoPE on a layer's q and k heads and its KV-cache write, one launch (torch twin:
phide.ops.reference.rope.rope_kv_write_torch, same signature and semantics).

After the fused q/k/v GEMM, qkv [B, T, (Hq + 2 Hkv) D] holds each token's q heads, then k, then v.
One program per token (and block of heads): its q heads are rotated into q_out [B, Hq, T, D],
its k heads rotated into k_cache[b, :, slots[b, t]], its v heads copied there into v_cache. Rotate-half RoPE per half:

    lo' = lo * cos_lo - hi * sin_lo        hi' = hi * cos_hi + lo * sin_hi

Each product and sum rounds to the input dtype as the twin's separate ops do, and FMA contraction
is off: kernel and twin agree bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from phide.triton_kernels.launch import Launch
from phide.triton_kernels.rounding import round_to

try:  # guarded: `import phide` (and this module) must work on machines without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on triton-less installs
    triton = None

__all__ = ["RopeConfig", "rope_config", "rope_kv_write_launches", "rope_kv_write_triton"]

if triton is not None:

    # Sizes that change per request (tokens T, cache rows S) and the strides they enter are not
    # specialised on: one compiled variant per model shape (precompile.py builds them up front).
    @triton.jit(do_not_specialize=["T", "S", "s_b", "sc_b", "sk_b", "sk_h", "sv_b", "sv_h"])
    def _rope_kv_write_kernel(
        qkv_ptr,  # [B, T, (Hq + 2 Hkv) * D], unit stride on the last dim
        cos_ptr, sin_ptr,  # [B, T, D]
        slots_ptr,  # [B, T] int64 cache rows, contiguous
        q_ptr,  # [B, Hq, T, D] out, contiguous
        k_ptr, v_ptr,  # [B, Hkv, S, D] one layer's cache (any strides)
        T, S, Hq, Hkv,
        s_b, s_t,  # qkv strides (elements)
        sc_b, sc_t,  # cos/sin strides (the same for both)
        sk_b, sk_h, sk_s, sk_d,
        sv_b, sv_h, sv_s, sv_d,
        D: tl.constexpr,
        BLOCK_HEADS: tl.constexpr,  # heads per program (a power of two)
        BLOCK_HALF: tl.constexpr,  # next_pow2(D // 2)
    ):
        tok = tl.program_id(0).to(tl.int64)  # b * T + t
        b = tok // T
        t = tok % T
        HALF: tl.constexpr = D // 2
        heads = tl.program_id(1) * BLOCK_HEADS + tl.arange(0, BLOCK_HEADS)  # q heads, then k, then v
        j = tl.arange(0, BLOCK_HALF)
        col_ok = (j < HALF)[None, :]
        h64 = heads.to(tl.int64)[:, None]
        ok = (heads < Hq + 2 * Hkv)[:, None] & col_ok
        src = qkv_ptr + b * s_b + t * s_t + h64 * D + j[None, :]
        lo = tl.load(src, mask=ok, other=0.0)
        hi = tl.load(src + HALF, mask=ok, other=0.0)
        dt = q_ptr.dtype.element_ty  # qkv's dtype (q_out is allocated with it)
        # one token's tables, shared by its heads
        cs = cos_ptr + b * sc_b + t * sc_t
        sn = sin_ptr + b * sc_b + t * sc_t
        jm = j < HALF
        c_lo = tl.load(cs + j, mask=jm, other=0.0).to(tl.float32)[None, :]
        c_hi = tl.load(cs + HALF + j, mask=jm, other=0.0).to(tl.float32)[None, :]
        s_lo = tl.load(sn + j, mask=jm, other=0.0).to(tl.float32)[None, :]
        s_hi = tl.load(sn + HALF + j, mask=jm, other=0.0).to(tl.float32)[None, :]
        lo32, hi32 = lo.to(tl.float32), hi.to(tl.float32)
        # the twin's ops: x * cos, rotate_half(x) * sin, their sum; each rounds to the dtype
        out_lo = round_to(round_to(lo32 * c_lo, dt).to(tl.float32) + round_to(-hi32 * s_lo, dt).to(tl.float32), dt)
        out_hi = round_to(round_to(hi32 * c_hi, dt).to(tl.float32) + round_to(lo32 * s_hi, dt).to(tl.float32), dt)

        is_q = (heads < Hq)[:, None] & col_ok
        dst_q = q_ptr + ((b * Hq + h64) * T + t) * D + j[None, :]
        tl.store(dst_q, out_lo, mask=is_q)
        tl.store(dst_q + HALF, out_hi, mask=is_q)

        slot = tl.load(slots_ptr + tok)
        is_k = ((heads >= Hq) & (heads < Hq + Hkv))[:, None] & col_ok
        kt = k_ptr.dtype.element_ty
        dst_k = k_ptr + b * sk_b + (h64 - Hq) * sk_h + slot * sk_s + j[None, :] * sk_d
        tl.store(dst_k, round_to(out_lo.to(tl.float32), kt), mask=is_k)
        tl.store(dst_k + HALF * sk_d, round_to(out_hi.to(tl.float32), kt), mask=is_k)

        is_v = (heads >= Hq + Hkv)[:, None] & ok
        vt = v_ptr.dtype.element_ty
        dst_v = v_ptr + b * sv_b + (h64 - Hq - Hkv) * sv_h + slot * sv_s + j[None, :] * sv_d
        tl.store(dst_v, round_to(lo.to(tl.float32), vt), mask=is_v)
        tl.store(dst_v + HALF * sv_d, round_to(hi.to(tl.float32), vt), mask=is_v)


class RopeConfig(NamedTuple):
    block_heads: int
    block_half: int
    num_warps: int


_TILE = 2048  # heads x half head dim per program: a register tile


def rope_config(n_heads: int, D: int) -> RopeConfig:
    """The launcher's choice for n_heads (q, k and v together) of head dim D (precompile.py calls
    it too): as many heads per program as a tile holds, so a token is one program on small models."""
    half = max(triton.next_power_of_2(D // 2), 1)
    heads = min(triton.next_power_of_2(n_heads), max(1, _TILE // half))
    return RopeConfig(block_heads=heads, block_half=half, num_warps=4 if heads * half >= 1024 else 1)


def rope_kv_write_launches(qkv, cos, sin, k_cache, v_cache, slots, n_heads: int, n_kv_heads: int):
    """(q_out, launches) of rope_kv_write_triton without running them. Works on meta tensors."""
    B, T, width = qkv.shape
    D = cos.shape[-1]
    if width != (n_heads + 2 * n_kv_heads) * D or D % 2:
        raise ValueError(f"qkv width {width} is not (Hq + 2 Hkv) * D for Hq={n_heads}, Hkv={n_kv_heads}, D={D}")
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    cos, sin = cos.expand(B, T, D), sin.expand(B, T, D)
    if cos.stride() != sin.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    slots = slots.to(device=qkv.device, dtype=torch.int64).reshape(B, T).contiguous()
    q_out = torch.empty(B, n_heads, T, D, dtype=qkv.dtype, device=qkv.device)
    if B * T == 0:
        return q_out, []
    heads = n_heads + 2 * n_kv_heads
    cfg = rope_config(heads, D)
    launch = Launch(
        _rope_kv_write_kernel, (B * T, triton.cdiv(heads, cfg.block_heads)),
        (qkv, cos, sin, slots, q_out, k_cache, v_cache, T, k_cache.shape[2], n_heads, n_kv_heads,
         qkv.stride(0), qkv.stride(1), cos.stride(0), cos.stride(1), *k_cache.stride(), *v_cache.stride()),
        dict(D=D, BLOCK_HEADS=cfg.block_heads, BLOCK_HALF=cfg.block_half, num_warps=cfg.num_warps, num_stages=1,
             enable_fp_fusion=False),
    )
    return q_out, [launch]


def rope_kv_write_triton(qkv, cos, sin, k_cache, v_cache, slots, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """Triton twin of rope_kv_write_torch (shapes there); returns q [B, Hq, T, D] rotated."""
    if triton is None:
        raise RuntimeError("rope_kv_write_triton needs triton; use phide.ops.reference.rope")
    q_out, launches = rope_kv_write_launches(qkv, cos, sin, k_cache, v_cache, slots, n_heads, n_kv_heads)
    for launch in launches:
        launch()
    return q_out
