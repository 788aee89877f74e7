"""Weight-only quantization of a LLaMA decoder's linear layers, with the field's libraries.

  int8  torchao `Int8WeightOnlyConfig`: int8 rows with one scale (and zero point) per output row;
        runs on a CPU and a GPU.
  nf4   bitsandbytes `Linear4bit` (NF4, blocks of 64, double-quantized absmax: the QLoRA format);
        runs on a CPU (slowly) and a GPU.
  int4  torchao `Int4WeightOnlyConfig` in the tinygemm tile layout (groups of 128, bf16 scales and
        zeros; rows padded to a multiple of 1024, outputs to 8); its matmul kernel needs CUDA
        (compute capability 8.0+) and bf16 weights.

What is quantized: the decoder layers' q/k/v/o and gate/up/down projections, which hold ~96% of a
7B model's weights. The embeddings, norms and the LM head stay in the model dtype: the LM head's
logits are read in fp32 (`lm_head_fp32`) and the EAGLE head and the draft adapter share them.

Both libraries are optional (`pip install phide[quant]`) and imported only when a scheme asks for
one. bitsandbytes' CPU backend, on import, tries to fetch a kernel from the Hugging Face hub
(`kernels.get_kernel`); phide never runs downloaded code, so that import is refused and the
library keeps its own kernels.
"""

from __future__ import annotations

import contextlib
import sys

import torch
from torch import nn

from phide.errors import PhideError
from phide.models.loading import quiet_logger

SCHEMES = ("none", "int8", "nf4", "int4")
QUANTIZED_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NF4_BLOCK = 64          # bitsandbytes' default 4-bit block
NF4_NESTED_BLOCK = 256  # double quantization: one fp32 absmax per 256 block absmaxes
INT4_GROUP = 128        # torchao int4 weight-only group size (tinygemm)
_INSTALL = "pip install 'phide[quant]'"


def check_scheme(scheme: str, device: str, role: str, dtype: torch.dtype | None = None) -> None:
    """Fail before anything loads when `scheme` cannot run on `device` (with weights of `dtype`)
    or its library is missing; the error names what would work."""
    if scheme not in SCHEMES:
        raise PhideError(f"unknown --{role}-quant {scheme!r} (choose from {', '.join(SCHEMES)})")
    if scheme == "none":
        return
    if scheme == "int4":
        if device != "cuda":
            raise PhideError(f"--{role}-quant int4 needs CUDA (torchao's int4 tinygemm kernel); on a {device} "
                             f"use --{role}-quant int8 or nf4")
        if dtype is not None and dtype != torch.bfloat16:
            raise PhideError(f"--{role}-quant int4 (tinygemm) needs bfloat16 weights: run with --dtype bfloat16")
        major, minor = torch.cuda.get_device_capability()
        if major < 8:
            raise PhideError(f"--{role}-quant int4 needs a GPU of compute capability 8.0 or newer (this one is "
                             f"{major}.{minor}); use --{role}-quant nf4 or int8")
    _library(scheme, role)


def available(scheme: str) -> bool:
    """Whether the library `scheme` needs is installed (no error)."""
    if scheme == "none":
        return True
    try:
        _library(scheme, "draft")
    except PhideError:
        return False
    return True


def _library(scheme: str, role: str):
    if scheme in ("int8", "int4"):
        try:
            with quiet_logger("torch.utils._pytree"):  # torchao registers an Enum torch now warns about
                import torchao.quantization as tq
        except ImportError:
            raise PhideError(f"--{role}-quant {scheme} needs torchao ({_INSTALL})") from None
        return tq
    try:
        with _no_hub_kernels():
            import bitsandbytes as bnb
    except ImportError:
        raise PhideError(f"--{role}-quant nf4 needs bitsandbytes ({_INSTALL})") from None
    return bnb


@contextlib.contextmanager
def _no_hub_kernels():
    """Import with the `kernels` package hidden (so no hub download, no downloaded code) and the
    library's warning about it silenced."""
    saved = sys.modules.get("kernels", "absent")
    sys.modules["kernels"] = None  # `from kernels import ...` raises ImportError
    try:
        with quiet_logger("bitsandbytes"):
            yield
    finally:
        if saved == "absent":
            sys.modules.pop("kernels", None)
        else:
            sys.modules["kernels"] = saved


def quantized_linears(model: nn.Module):
    """(parent, attribute name, nn.Linear) of every linear a scheme quantizes."""
    for module in model.modules():
        for name in QUANTIZED_LINEARS:
            child = getattr(module, name, None)
            if isinstance(child, nn.Linear):
                yield module, name, child


def quantize_decoder(model: nn.Module, scheme: str, device=None) -> nn.Module:
    """Quantize `model`'s decoder linears in place (weight-only) and leave the whole model on
    `device` (default: where it is). Each linear moves to `device` and is quantized there before
    the next one moves, and the unquantized one is dropped as it is replaced: a model loaded on
    the CPU reaches the GPU already quantized, never whole in bf16 (which is what would not
    fit). Callers check the scheme first (`check_scheme`)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if scheme == "none":
        return model.to(device)
    slots = [(parent, name) for parent, name, _ in quantized_linears(model)]  # no reference to the linears
    if not slots:
        raise PhideError("nothing to quantize: the model has no q/k/v/o or gate/up/down projections")
    if scheme == "nf4":
        odd = sorted({getattr(p, n).in_features for p, n in slots if getattr(p, n).in_features % NF4_BLOCK})
        if odd:  # bitsandbytes' kernels tile each row in whole blocks
            raise PhideError(f"nf4 quantizes rows in blocks of {NF4_BLOCK}: this model has linear layers "
                             f"{odd[0]} wide; use int8")
    lib = _library(scheme, "draft")
    if scheme == "int8":
        config = lib.Int8WeightOnlyConfig()
    elif scheme == "int4":
        from torchao.quantization.quantize_.workflows.int4.int4_packing_format import Int4PackingFormat

        if getattr(slots[0][0], slots[0][1]).weight.dtype != torch.bfloat16:
            raise PhideError("int4 (tinygemm) needs bfloat16 weights: run with --dtype bfloat16")
        config = lib.Int4WeightOnlyConfig(group_size=INT4_GROUP, int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D)
    for parent, name in slots:
        linear = getattr(parent, name)
        if scheme == "nf4":
            setattr(parent, name, _nf4_linear(lib, linear, device))
        else:
            setattr(parent, name, linear.to(device))
            lib.quantize_(parent, config, filter_fn=lambda m, _fqn, target=getattr(parent, name): m is target)
        del linear
    return model.to(device)  # the rest (embeddings, norms, LM head), unquantized


def _nf4_linear(bnb, linear: nn.Linear, device: torch.device) -> nn.Module:
    w = linear.weight.data
    q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                          compute_dtype=w.dtype, quant_type="nf4", compress_statistics=True, device="meta")
    # bitsandbytes packs a Params4bit when it is moved (on any device, from any device).
    q.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=True,
                                 blocksize=NF4_BLOCK)
    if linear.bias is not None:
        q.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return q.to(device).eval()


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds in memory: a tensor subclass (torchao) counts its inner tensors."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if flatten is not None and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = flatten()
        return sum(tensor_bytes(getattr(t, n)) for n in names if getattr(t, n) is not None)
    total = t.numel() * t.element_size()
    state = getattr(t, "quant_state", None)  # bitsandbytes Params4bit: absmax, codebook, nesting
    while state is not None:
        total += sum(x.numel() * x.element_size() for x in (state.absmax, state.code, state.offset)
                     if isinstance(x, torch.Tensor))
        state = state.state2 if getattr(state, "nested", False) else None
    return total


def weight_bytes(*modules: nn.Module | None) -> int:
    """Measured parameter bytes of `modules` (each parameter once, shared ones too)."""
    seen, total = set(), 0
    for m in modules:
        if m is None:
            continue
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += tensor_bytes(p)
    return total
