"""Fake (meta) implementations of the compiled ops in `phide._C`, for FakeTensor tracing
(torch.compile, torch.export) and `torch.library.opcheck`.

Imported by the module init of `phide._C` (csrc/bindings.cpp) right after its schemas are
registered, and again (a no-op) by `phide._ext`. Only torch may be imported here.
"""

from __future__ import annotations

import torch


def _tree_outputs(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch._check(tokens.dim() == 2, lambda: f"tokens must be [B, N], got {tuple(tokens.shape)}")
    B, N = tokens.shape
    accept_nodes = tokens.new_empty((B, N), dtype=torch.int64)
    out_tokens = tokens.new_empty((B, N), dtype=torch.int64)
    accept_len = tokens.new_empty((B,), dtype=torch.int64)
    return accept_nodes, out_tokens, accept_len


@torch.library.register_fake("phide::accept_path")
def _accept_path_fake(tokens, parents, target_choice):
    torch._check(parents.shape == tokens.shape, lambda: "parents must match tokens [B, N]")
    torch._check(target_choice.shape == tokens.shape, lambda: "target_choice must match [B, N]")
    return _tree_outputs(tokens)



@torch.library.register_fake("phide::rms_norm")
def _rms_norm_fake(x, weight, eps):
    return x.new_empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype))


@torch.library.register_fake("phide::add_rms_norm")
def _add_rms_norm_fake(x, residual, weight, eps):
    torch._check(residual.shape == x.shape, lambda: "residual must match x's shape")
    return x.new_empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype)), torch.empty_like(x)


@torch.library.register_fake("phide::rope_kv_write")
def _rope_kv_write_fake(qkv, cos, sin, k_cache, v_cache, slots, n_heads, n_kv_heads):
    B, T, _ = qkv.shape
    return qkv.new_empty((B, n_heads, T, cos.shape[-1]))
