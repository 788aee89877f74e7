"""The one dispatch point between torch twins and compiled kernels.

Every op has a pure-torch twin (the CPU fallback and the test reference). PHIDE_OPS selects the
backend: `auto` (default: the compiled op when the extension is loaded and registered for the
tensor's device, else the twin), `torch` (always the twin), `cpp` (the compiled op or an error).
"""

from __future__ import annotations

import os

import torch

from phide._ext import load_extension
from phide.spec import verify as _twin

_BACKENDS = ("auto", "torch", "cpp")


def backend() -> str:
    choice = os.environ.get("PHIDE_OPS", "auto").strip().lower() or "auto"
    if choice not in _BACKENDS:
        raise ValueError(f"PHIDE_OPS={choice!r}: expected one of {', '.join(_BACKENDS)}")
    return choice


def _use_compiled(*tensors: torch.Tensor) -> bool:
    choice = backend()
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
    """Greedy tree walk. See `phide.spec.verify.tree_accept_greedy_torch` for shapes."""
    if _use_compiled(tokens):
        return torch.ops.phide.tree_accept_greedy(
            tokens.contiguous(), parents.contiguous(), target_choice.contiguous()
        )
    return _twin.tree_accept_greedy_torch(tokens, parents, target_choice)


def tree_accept_stochastic(tokens, parents, target_probs, coins, final_coins):
    """Lossless stochastic tree walk. See `phide.spec.verify.tree_accept_stochastic_torch`."""
    if _use_compiled(tokens):
        return torch.ops.phide.tree_accept_stochastic(
            tokens.contiguous(),
            parents.contiguous(),
            target_probs.float().contiguous(),
            coins.float().contiguous(),
            final_coins.float().contiguous(),
        )
    return _twin.tree_accept_stochastic_torch(tokens, parents, target_probs, coins, final_coins)
