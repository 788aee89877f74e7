"""Gumbel-max sampling per node row with in-kernel hash noise (torch twin:
phide.ops.reference.hash_noise.gumbel_choices_torch; the noise recipe is documented there).

One program per row streams the vocabulary in BLOCK_V chunks, hashes (seed, position, token id)
to Gumbel noise on the fly and keeps a running (max, argmax) per lane: neither probabilities nor
noise ([N, V]) are ever materialised, so the kernel reads the logits once and writes N int64.

Bit-exactness with the torch twin: the hash is uint32 integer math; the float part is a fixed
sequence of correctly rounded float32 ops (div_rn for the divisions, a hand-written log instead of
the platform's), and the launcher disables FMA contraction (enable_fp_fusion=False).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from phide.formats import FMIX_M1, FMIX_M2, GOLDEN32, LOG_CONSTS, seed_key
from phide.triton_kernels.launch import Launch

try:  # guarded: `import phide` (and this module) must work on machines without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on triton-less installs
    triton = None

__all__ = ["GumbelConfig", "gumbel_choices_launches", "gumbel_choices_triton", "gumbel_config"]

_MAX_BLOCK_V = 4096

if triton is not None:
    # Kernels may read globals only as constexpr; the values come from the torch twin's module.
    _M1 = tl.constexpr(FMIX_M1)
    _M2 = tl.constexpr(FMIX_M2)
    _GOLDEN = tl.constexpr(GOLDEN32)
    _SQRT2 = tl.constexpr(LOG_CONSTS["SQRT2"])
    _LN2_HI = tl.constexpr(LOG_CONSTS["LN2_HI"])
    _LN2_LO = tl.constexpr(LOG_CONSTS["LN2_LO"])
    _C1 = tl.constexpr(LOG_CONSTS["C1"])
    _C2 = tl.constexpr(LOG_CONSTS["C2"])
    _C3 = tl.constexpr(LOG_CONSTS["C3"])
    _C4 = tl.constexpr(LOG_CONSTS["C4"])
    _C5 = tl.constexpr(LOG_CONSTS["C5"])

    @triton.jit
    def _fmix32(h):
        # murmur3 finaliser on uint32 lanes (literals > 2**31 are typed uint32, so * wraps).
        h ^= h >> 16
        h *= _M1
        h ^= h >> 13
        h *= _M2
        h ^= h >> 16
        return h

    @triton.jit
    def _log_f32(x):
        # Mirrors hash_noise.log_f32 op for op; do not reorder (float ops are not associative).
        bits = x.to(tl.int32, bitcast=True)
        e = ((bits >> 23) & 0xFF) - 127
        m = ((bits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
        big = m > _SQRT2
        m = tl.where(big, m * 0.5, m)
        e = tl.where(big, e + 1, e)
        f = m - 1.0
        s = tl.math.div_rn(f, f + 2.0)  # plain `/` is an approximate division on NVIDIA
        z = s * s
        r = z * (_C1 + z * (_C2 + z * (_C3 + z * (_C4 + z * _C5))))
        hfsq = 0.5 * f * f
        log_m = (f - hfsq) + s * (hfsq + r)
        ef = e.to(tl.float32)
        return ef * _LN2_HI + (log_m + ef * _LN2_LO)

    @triton.jit(do_not_specialize=["key"])
    def _gumbel_argmax_kernel(
        logits_ptr,  # [N, V] float (fp32/fp16/bf16/fp64), unit stride along V
        positions_ptr,  # [N] int64, output position of each row (noise counter)
        out_ptr,  # [N] int64, chosen token per row
        stride_n,  # row stride of logits, in elements
        V,  # vocabulary size
        key,  # int32: the bits of the uint32 seed_key(seed)
        temperature,  # fp32 > 0 (unused when GREEDY)
        BLOCK_V: tl.constexpr,
        GREEDY: tl.constexpr,  # temperature == 0: plain argmax, no noise
    ):
        row_id = tl.program_id(0)
        row_ptr = logits_ptr + row_id.to(tl.int64) * stride_n
        key_u = key.to(tl.uint32, bitcast=True)
        pos = tl.load(positions_ptr + row_id)
        # Row counter: hash the 64-bit position (low word, then the two's-complement high word).
        row_h = _fmix32(_fmix32(key_u ^ (pos >> 32).to(tl.uint32)) ^ pos.to(tl.uint32))

        lanes = tl.arange(0, BLOCK_V)
        # Per-lane running max; a lane sees its indices in increasing order, so a strict `>`
        # keeps the lowest index on ties. Lanes start at -inf with their first index, which makes
        # an all -inf (or all-NaN) row return 0 like torch.argmax.
        best_val = tl.full([BLOCK_V], float("-inf"), tl.float32)
        best_idx = lanes
        for start in range(0, V, BLOCK_V):
            offs = start + lanes
            valid = offs < V
            x = tl.load(row_ptr + offs, mask=valid, other=float("-inf")).to(tl.float32)
            if not GREEDY:
                x = tl.math.div_rn(x, temperature)
            x = tl.where(x != x, float("-inf"), x)  # NaN fails closed
            if not GREEDY:
                h = _fmix32(_fmix32(row_h ^ (offs.to(tl.uint32) * _GOLDEN)) ^ key_u)
                u = ((h >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07  # * 2**-23, exact
                x = x + -_log_f32(-_log_f32(u))
            take = x > best_val
            best_val = tl.where(take, x, best_val)
            best_idx = tl.where(take, offs, best_idx)

        # Across lanes: the max value, then the lowest index holding it.
        top = tl.max(best_val, axis=0)
        cand = tl.where(best_val == top, best_idx, 2147483647)
        tl.store(out_ptr + row_id, tl.min(cand, axis=0).to(tl.int64))


class GumbelConfig(NamedTuple):
    block_v: int  # vocabulary lanes per loop step
    num_warps: int
    num_stages: int


def gumbel_config(V: int) -> GumbelConfig:
    """The launcher's choices for rows of V logits: a pure function of shapes (precompile.py and
    the tests call it too)."""
    block_v = min(_MAX_BLOCK_V, triton.next_power_of_2(V))
    return GumbelConfig(block_v=block_v, num_warps=8 if block_v >= 2048 else 4, num_stages=3)


def gumbel_choices_launches(logits: torch.Tensor, temperature: float, seed: int, positions: torch.Tensor):
    """(out, launches) of gumbel_choices_triton without running the launches (arguments as
    there); `out` holds the choices once they have run. Works on meta tensors."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, V], got {tuple(logits.shape)}")
    N, V = logits.shape
    if positions.numel() != N:
        raise ValueError(f"positions must have {N} entries, got {positions.numel()}")
    out = torch.zeros(N, dtype=torch.int64, device=logits.device)
    if N == 0 or V == 0:
        return out, []
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    positions = positions.to(device=logits.device, dtype=torch.int64).reshape(-1).contiguous()
    key = seed_key(seed)
    key_i32 = key - (1 << 32) if key >= (1 << 31) else key  # same 32 bits, as a signed scalar
    greedy = temperature == 0
    cfg = gumbel_config(V)
    launch = Launch(
        _gumbel_argmax_kernel, (N,),
        (logits, positions, out, logits.stride(0), V, key_i32, 1.0 if greedy else float(temperature)),
        dict(
            BLOCK_V=cfg.block_v,
            GREEDY=greedy,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
            enable_fp_fusion=False,  # no FMA contraction: keep the torch twin's rounding
        ),
    )
    return out, [launch]


def gumbel_choices_triton(
    logits: torch.Tensor, temperature: float, seed: int, positions: torch.Tensor
) -> torch.Tensor:
    """Triton twin of gumbel_choices_torch: logits [N, V] (any float dtype), positions [N]
    (int64 output positions) -> int64 [N] chosen tokens. temperature == 0 is greedy argmax;
    NaN logits are never chosen; ties go to the lowest index. One launch, no host sync."""
    if triton is None:
        raise RuntimeError("gumbel_choices_triton needs triton; use gumbel_choices_torch")
    out, launches = gumbel_choices_launches(logits, temperature, seed, positions)
    for launch in launches:
        launch()
    return out
