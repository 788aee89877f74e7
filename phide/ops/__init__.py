"""The one dispatch point between torch twins and compiled kernels.

Every op has a pure-torch twin (the CPU fallback and the test reference). PHIDE_OPS selects the
backend: `auto` (default: the compiled op when the extension is loaded and registered for the
tensor's device, the Triton kernel for CUDA tensors where there is one, else the twin), `torch`
(always the twin), `cpp` (the compiled op or an error), `triton` (the Triton kernels where one
exists, e.g. under TRITON_INTERPRET=1 on a CPU; the other ops as in `auto`).
"""

from __future__ import annotations

import os

import torch

from phide._ext import load_extension
from phide.ops.reference import accept as _twin

_BACKENDS = ("auto", "torch", "cpp", "triton")


def backend() -> str:
    choice = os.environ.get("PHIDE_OPS", "auto").strip().lower() or "auto"
    if choice not in _BACKENDS:
        raise ValueError(f"PHIDE_OPS={choice!r}: expected one of {', '.join(_BACKENDS)}")
    return choice


def _use_compiled(*tensors: torch.Tensor) -> bool:
    choice = backend()  # "triton": the acceptance walk has no Triton kernel, so as in "auto"
    if choice == "torch":
        return False
    loaded = load_extension()
    if choice == "cpp":
        if not loaded:
            raise RuntimeError("PHIDE_OPS=cpp but the compiled extension phide._C is not available")
        return True
    if not loaded:
        return False
    device = tensors[0].device.type
    if device == "cpu":
        return True
    return device == "cuda" and torch._C._dispatch_has_kernel_for_dispatch_key(
        "phide::tree_accept_greedy", "CUDA"
    )


def tree_accept_greedy(tokens, parents, target_choice):
    """Greedy tree walk. See `phide.ops.reference.accept.tree_accept_greedy_torch` for shapes."""
    if _use_compiled(tokens):
        return torch.ops.phide.tree_accept_greedy(
            tokens.contiguous(), parents.contiguous(), target_choice.contiguous()
        )
    return _twin.tree_accept_greedy_torch(tokens, parents, target_choice)


def _use_triton(t: torch.Tensor) -> bool:
    return _use_triton_on(t.device.type)


def _use_triton_on(device_type: str) -> bool:
    choice = backend()
    if choice == "triton":
        return True
    return choice == "auto" and device_type == "cuda" and _triton_available()


def prepare_kernels(device, dtype, head_dim: int, n_heads: int, n_kv_heads: int, vocab: int,
                    **variants) -> list:
    """At engine load: compile (or load from Triton's cache) every Triton kernel variant the
    engine will launch on `device` for these model shapes, so no request waits for a compile
    (phide.triton_kernels.precompile; it runs nothing off a GPU). Returns the variants: none when
    this backend launches no Triton kernel there (a CPU without PHIDE_OPS=triton). variants: as
    `kernel_variants` (topk, draft_vocab, shared_vocab, head)."""
    if not _use_triton_on(torch.device(device).type):
        return []
    from phide.triton_kernels.precompile import precompile

    return precompile(device, dtype, head_dim, n_heads, n_kv_heads, vocab, **variants)


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401  (availability probe)
    except ImportError:
        return False
    return True


def gumbel_choices(logits, temperature: float, seed: int, positions):
    """The target's choice per tree node: argmax (T = 0) or its Gumbel-max sample with hash noise
    keyed by (seed, output position). See `phide.ops.reference.hash_noise.gumbel_choices_torch`."""
    if _use_triton(logits):
        from phide.triton_kernels.gumbel_verify import gumbel_choices_triton

        return gumbel_choices_triton(logits, temperature, seed, positions)
    from phide.ops.reference.hash_noise import gumbel_choices_torch

    return gumbel_choices_torch(logits, temperature, seed, positions)


def kv_commit(k_cache, v_cache, base, accept_nodes, accept_len):
    """Move each request's accepted path to its committed slots, race-free, every layer at once.
    See `phide.ops.reference.kv_commit.commit_accepted_path` for shapes."""
    if _use_triton(k_cache):
        from phide.triton_kernels.kv_commit import kv_commit_triton

        return kv_commit_triton(k_cache, v_cache, base, accept_nodes, accept_len)
    from phide.ops.reference.kv_commit import commit_accepted_path

    return commit_accepted_path(k_cache, v_cache, base, accept_nodes, accept_len)


_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def tree_attention(q, k_cache, v_cache, prefix_len, tree_start, ancestors, n_nodes, scale=None):
    """Tree-verify attention: every tree node over the committed prefix plus its ancestors in the
    tree, padding nodes zero. q [B, Hq, N, D], k_cache/v_cache [B, Hkv, S, D] (one layer),
    prefix_len/tree_start/n_nodes [B], ancestors [B, N] int64 bitmasks (so N <= 64; larger trees
    go through the decoder's dense mask). See `phide.ops.reference.tree_attention.tree_attention_torch`."""
    if _use_triton(q) and q.dtype in _KERNEL_DTYPES and k_cache.dtype == q.dtype:
        from phide.triton_kernels.tree_attention import MAX_HEAD_DIM, tree_attention_triton

        if q.shape[-1] <= MAX_HEAD_DIM:
            return tree_attention_triton(q, k_cache, v_cache, prefix_len, tree_start, ancestors, n_nodes, scale)
    from phide.ops.reference.tree_attention import tree_attention_torch

    return tree_attention_torch(q, k_cache, v_cache, prefix_len, tree_start, ancestors, n_nodes, scale)


def tree_topk(logits, parent_scores, k: int):
    """Draft tree step: per row the top-k tokens (ties: lower id first), their cumulative
    log-probs (parent score + log-softmax) and the row's log-sum-exp. logits [..., V],
    parent_scores [...] -> tokens [..., k] int64, scores [..., k] fp32, row_lse [...] fp32.
    See `phide.ops.reference.tree_topk.tree_topk_torch`."""
    if _use_triton(logits) and logits.dtype in _KERNEL_DTYPES:
        from phide.triton_kernels.tree_topk import MAX_K, tree_topk_triton

        if k <= MAX_K:
            return tree_topk_triton(logits, parent_scores, k)
    from phide.ops.reference.tree_topk import tree_topk_torch

    return tree_topk_torch(logits, parent_scores, k)


def causal_attention(q, k, v):
    """Causal attention of a prefill: q [B, Hq, T, D] over k, v [B, Hkv, T, D] (rows 0..T-1, GQA
    when Hq > Hkv). flash-attn when installed (`pip install phide[gpu]`) for half-precision CUDA
    tensors, else torch SDPA's fused causal path (flash / memory-efficient / cuDNN as torch
    picks), which is also the reference."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _flash_attn() is not None:
        # flash-attn takes [B, T, H, D] and handles GQA itself
        out = _flash_attn()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
        return out.transpose(1, 2)
    from phide.ops.reference.causal_attention import causal_attention_torch

    return causal_attention_torch(q, k, v)


def _flash_attn():
    """flash_attn_func, or None when flash-attn is not installed (imported once)."""
    global _FLASH
    if _FLASH is False:
        try:
            from flash_attn import flash_attn_func
        except ImportError:
            flash_attn_func = None
        _FLASH = flash_attn_func
    return _FLASH


_FLASH = False  # not looked up yet
