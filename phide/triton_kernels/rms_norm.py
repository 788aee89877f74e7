"""RMSNorm, optionally fused with the residual add before it: one program per row (torch twin:
phide.ops.reference.rms_norm, same signatures and semantics).

    plain:  out = weight * (x / sqrt(mean(x^2) + eps))            (x in fp32, cast back, then scaled)
    fused:  summed = residual + x; out = rms_norm(summed)          (returns both)

A decoder layer's two norms each follow a residual add, so the fused form is one read of both rows
and one write of each result instead of an add, five norm ops and their round trips through HBM.
Every elementwise step rounds where the twin does (the sum in the input dtype, the normalised row
cast back before the weight) and FMA contraction is off, so only the mean's summation order can
differ from the twin (well under an ulp of the scale factor; tests/test_triton_kernels.py).
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

__all__ = ["NormConfig", "norm_config", "rms_norm_launches", "rms_norm_triton"]

MAX_HIDDEN = 16384  # one row is one register tile

if triton is not None:

    @triton.jit(do_not_specialize=["n_rows"])
    def _rms_norm_kernel(
        x_ptr,  # [R, H] rows (row stride sx, unit column stride)
        res_ptr,  # [R, H] residual rows (read when HAS_RESIDUAL)
        w_ptr,  # [H] weight
        out_ptr,  # [R, H] normalised rows, contiguous
        sum_ptr,  # [R, H] residual + x, contiguous (written when HAS_RESIDUAL)
        n_rows, H, eps,
        sx, sr,  # row strides of x and the residual (elements)
        HAS_RESIDUAL: tl.constexpr,
        BLOCK_H: tl.constexpr,  # next_pow2(H)
    ):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK_H)
        ok = offs < H
        x = tl.load(x_ptr + row * sx + offs, mask=ok, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(res_ptr + row * sr + offs, mask=ok, other=0.0)
            x = round_to(r.to(tl.float32) + x.to(tl.float32), sum_ptr.dtype.element_ty)  # the add rounds to x's dtype
            tl.store(sum_ptr + row * H + offs, x, mask=ok)
        h = x.to(tl.float32)
        inv = tl.rsqrt(tl.sum(h * h, axis=0) / H + eps)
        normed = round_to(h * inv, x_ptr.dtype.element_ty)  # cast back before the weight, as the twin
        w = tl.load(w_ptr + offs, mask=ok, other=0.0)
        out = w.to(tl.float32) * normed.to(tl.float32)
        tl.store(out_ptr + row * H + offs, round_to(out, out_ptr.dtype.element_ty), mask=ok)


class NormConfig(NamedTuple):
    block_h: int
    num_warps: int


def norm_config(H: int) -> NormConfig:
    """The launcher's choice for hidden size H (a pure function of it: precompile.py calls it)."""
    block = triton.next_power_of_2(H)
    return NormConfig(block_h=block, num_warps=max(1, min(16, block // 256)))


def rms_norm_launches(x, weight, eps: float, residual=None):
    """(out, summed or None, launches) of rms_norm_triton without running them. Works on meta
    tensors (precompile.py)."""
    H = x.shape[-1]
    if H > MAX_HIDDEN:
        raise ValueError(f"hidden size {H} exceeds MAX_HIDDEN={MAX_HIDDEN}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    rows = x.reshape(-1, H)  # a view for the decoder's [B, T, H] activations
    out_dtype = torch.promote_types(weight.dtype, x.dtype)
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    summed = None
    res_rows = rows
    if residual is not None:
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError("residual must match x's shape and dtype")
        res_rows = (residual if residual.stride(-1) == 1 else residual.contiguous()).reshape(-1, H)
        summed = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    R = rows.shape[0]
    if R == 0:
        return out, summed, []
    cfg = norm_config(H)
    launch = Launch(
        _rms_norm_kernel, (R,),
        (rows, res_rows, weight, out, summed if summed is not None else out, R, H, float(eps),
         rows.stride(0), res_rows.stride(0)),
        dict(HAS_RESIDUAL=residual is not None, BLOCK_H=cfg.block_h, num_warps=cfg.num_warps, num_stages=1,
             enable_fp_fusion=False),
    )
    return out, summed, [launch]


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """Triton twin of rms_norm_torch (residual None) or add_rms_norm_torch (then returns
    (normed, summed)). x, residual [..., H] (unit column stride), weight [H]."""
    if triton is None:
        raise RuntimeError("rms_norm_triton needs triton; use phide.ops.reference.rms_norm")
    out, summed, launches = rms_norm_launches(x, weight, eps, residual)
    for launch in launches:
        launch()
    return out if residual is None else (out, summed)
