"""The one dispatch point between torch twins and compiled kernels.

Every op has a pure-torch twin (the CPU fallback and the test reference). PHIDE_OPS selects the
backend: `auto` (default: the compiled op when the extension is loaded and registered for the
tensor's device, the Triton kernel for CUDA tensors where there is one, else the twin), `torch`
(always the twin), `cpp` (the compiled op or an error), `triton` (the Triton kernels where one
exists, e.g. under TRITON_INTERPRET=1 on a CPU; the other ops as in `auto`).
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import torch

from phide._ext import load_extension
from phide.ops.reference import accept as _twin

_BACKENDS = ("auto", "torch", "cpp", "triton")

# The ops that are ONE kernel launch on the GPU path (a Triton or CUDA kernel there; a torch twin
# on a CPU). phide.ops.launch_count counts each call of these once, whatever its twin dispatches.
ONE_KERNEL_OPS = ("accept_path", "gumbel_choices", "kv_commit", "tree_attention", "tree_topk",
                  "causal_attention", "rms_norm", "add_rms_norm", "rope_kv_write")


_chosen: str | None = None  # the backend in force (choose_backend); None: not chosen yet


def choose_backend(name: str | None = None) -> str:
    """Choose the backend for every op from now on: `name`, or PHIDE_OPS (default auto). An
    engine chooses once when it is built; ops called before any choice read PHIDE_OPS then."""
    global _chosen
    choice = (name if name is not None else os.environ.get("PHIDE_OPS", "auto")).strip().lower() or "auto"
    if choice not in _BACKENDS:
        raise ValueError(f"PHIDE_OPS={choice!r}: expected one of {', '.join(_BACKENDS)}")
    _chosen = choice
    return choice


def backend() -> str:
    """The backend in force (no environment read per op call)."""
    return _chosen if _chosen is not None else choose_backend()


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
        "phide::accept_path", "CUDA"
    )


def accept_path(tokens, parents, target_choice):
    """The acceptance walk over a verified tree: from the root, follow the child equal to its
    parent's target choice (the argmax, or the Gumbel-max sample: `gumbel_choices`) while there is
    one. See `phide.ops.reference.accept.accept_path_torch` for shapes."""
    if _use_compiled(tokens):
        return torch.ops.phide.accept_path(
            tokens.contiguous(), parents.contiguous(), target_choice.contiguous()
        )
    return _twin.accept_path_torch(tokens, parents, target_choice)


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
    `kernel_variants` (topk, draft_vocab, shared_vocab, head, decoders)."""
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


def tree_attention_uses_kernel(device_type: str, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether `tree_attention` runs the Triton kernel for q and a cache of `dtype` and head dim."""
    if not (_use_triton_on(device_type) and dtype in _KERNEL_DTYPES):
        return False
    from phide.triton_kernels.tree_attention import MAX_HEAD_DIM

    return head_dim <= MAX_HEAD_DIM


def tree_attention_masks(tree, kv_len: int):
    """The torch twin's (visibility [B, N, kv_len], real nodes [B, N]) for a TreeAttention: what
    one forward builds once and every layer's `tree_attention(..., visibility=)` reads."""
    from phide.ops.reference.tree_attention import tree_masks

    return tree_masks(tree.prefix_len, tree.tree_start, tree.ancestors, tree.n_nodes, kv_len)


def tree_attention(q, k_cache, v_cache, prefix_len, tree_start, ancestors, n_nodes, scale=None, *,
                   visibility=None):
    """Tree-verify attention: every tree node over the committed prefix plus its ancestors in the
    tree, padding nodes zero. q [B, Hq, N, D], k_cache/v_cache [B, Hkv, S, D] (one layer),
    prefix_len/tree_start/n_nodes [B], ancestors [B, N] int64 bitmasks (so N <= 64; larger trees
    go through the decoder's dense mask). visibility: the twin's masks for these rows
    (`tree_attention_masks`), when built once for all layers. See
    `phide.ops.reference.tree_attention.tree_attention_torch`."""
    if tree_attention_uses_kernel(q.device.type, q.dtype, q.shape[-1]) and k_cache.dtype == q.dtype:
        from phide.triton_kernels.tree_attention import tree_attention_triton

        return tree_attention_triton(q, k_cache, v_cache, prefix_len, tree_start, ancestors, n_nodes, scale)
    from phide.ops.reference.tree_attention import tree_attention_torch

    return tree_attention_torch(q, k_cache, v_cache, prefix_len, tree_start, ancestors, n_nodes, scale,
                                visibility=visibility)


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


def _no_grad_wanted(*tensors) -> bool:
    """The Triton kernels have no backward: they run only where autograd records nothing."""
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors)


def _cpu_composite(name: str, *tensors) -> bool:
    """The compiled CPU op (csrc/decoder_cpu.cpp: the twin's ATen calls composed in C++, the same
    numbers with one crossing from Python) for CPU tensors where autograd records nothing."""
    return (tensors[0].device.type == "cpu" and backend() != "torch" and _no_grad_wanted(*tensors)
            and load_extension() and hasattr(torch.ops.phide, name))


def rms_norm(x, weight, eps: float):
    """transformers' LlamaRMSNorm of x [..., H] with weight [H]. See
    `phide.ops.reference.rms_norm.rms_norm_torch`."""
    if _use_triton(x) and x.dtype in _KERNEL_DTYPES and _no_grad_wanted(x, weight):
        from phide.triton_kernels.rms_norm import rms_norm_triton

        return rms_norm_triton(x, weight, eps)
    if _cpu_composite("rms_norm", x, weight):
        return torch.ops.phide.rms_norm(x, weight, eps)
    from phide.ops.reference.rms_norm import rms_norm_torch

    return rms_norm_torch(x, weight, eps)


def add_rms_norm(x, residual, weight, eps: float):
    """(rms_norm(residual + x), residual + x): a decoder's residual add and the norm after it in
    one kernel. See `phide.ops.reference.rms_norm.add_rms_norm_torch`."""
    if (_use_triton(x) and x.dtype in _KERNEL_DTYPES and residual.dtype == x.dtype
            and _no_grad_wanted(x, residual, weight)):
        from phide.triton_kernels.rms_norm import rms_norm_triton

        return rms_norm_triton(x, weight, eps, residual)
    if _cpu_composite("add_rms_norm", x, residual, weight):
        return torch.ops.phide.add_rms_norm(x, residual, weight, eps)
    from phide.ops.reference.rms_norm import add_rms_norm_torch

    return add_rms_norm_torch(x, residual, weight, eps)


def rope_kv_write(qkv, cos, sin, k_cache, v_cache, slots, n_heads: int, n_kv_heads: int):
    """RoPE on the q and k heads of a fused q/k/v projection qkv [B, T, (Hq + 2 Hkv) D], the
    rotated k and the v written into one layer's cache at `slots` [B, T]; returns q [B, Hq, T, D].
    See `phide.ops.reference.rope.rope_kv_write_torch`."""
    if _use_triton(qkv) and qkv.dtype in _KERNEL_DTYPES and _no_grad_wanted(qkv, k_cache, v_cache):
        from phide.triton_kernels.rope_kv_write import rope_kv_write_triton

        return rope_kv_write_triton(qkv, cos, sin, k_cache, v_cache, slots, n_heads, n_kv_heads)
    if _cpu_composite("rope_kv_write", qkv, k_cache, v_cache):
        return torch.ops.phide.rope_kv_write(qkv, cos, sin, k_cache, v_cache, slots, n_heads, n_kv_heads)
    from phide.ops.reference.rope import rope_kv_write_torch

    return rope_kv_write_torch(qkv, cos, sin, k_cache, v_cache, slots, n_heads, n_kv_heads)


class DecoderOps(NamedTuple):
    """The implementations of the decoder's per-layer ops, chosen once per forward (not once per
    layer and op: on a CPU a decode step is host-bound, and choosing reads the environment)."""

    rms_norm: Callable
    add_rms_norm: Callable
    rope_kv_write: Callable
    tree_attention: Callable


def decoder_ops(like: torch.Tensor, head_dim: int) -> DecoderOps:
    """What one forward over activations like `like` (device, dtype) with this head dim calls:
    the Triton kernels (a GPU, or PHIDE_OPS=triton), the compiled CPU ops (phide._C), or the
    twins, each op as its dispatch function above would choose for these tensors."""
    grad = torch.is_grad_enabled()
    kernel = _use_triton(like) and like.dtype in _KERNEL_DTYPES and not grad
    if kernel:
        from phide.triton_kernels.rms_norm import rms_norm_triton
        from phide.triton_kernels.rope_kv_write import rope_kv_write_triton

        def add_norm(x, residual, weight, eps):
            return rms_norm_triton(x, weight, eps, residual)

        norms = (rms_norm_triton, add_norm, rope_kv_write_triton)
    elif like.device.type == "cpu" and not grad and backend() != "torch" and load_extension() and hasattr(
            torch.ops.phide, "rope_kv_write"):
        norms = (torch.ops.phide.rms_norm, torch.ops.phide.add_rms_norm, torch.ops.phide.rope_kv_write)
    else:  # autograd wants a backward (training), or neither compiled path is there
        norms = (rms_norm, add_rms_norm, rope_kv_write)
    return DecoderOps(*norms, tree_attention=tree_attention)
