"""RMSNorm, torch twin: the CPU path of `ops.rms_norm` / `ops.add_rms_norm` and the reference of
phide.triton_kernels.rms_norm (same signatures and semantics).

Numerics are transformers' LlamaRMSNorm: the row is normalised in fp32, cast back to the input's
dtype, then scaled by the weight (in the weight's dtype). The fused form first adds the residual
stream in the input's dtype (the decoder's `x + sublayer(x)`), then normalises the sum: one read
and one write of the row instead of three.
"""

from __future__ import annotations

import torch

__all__ = ["rms_norm_torch", "add_rms_norm_torch"]


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., H] -> weight * (x / sqrt(mean(x^2) + eps)), [..., H] (weight [H])."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm_torch(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual [..., H] (same dtype) -> (rms_norm(residual + x), residual + x)."""
    summed = residual + x
    return rms_norm_torch(summed, weight, eps), summed
