"""Counter-based hash noise for sampling: the same bits in torch and in a Triton kernel.

A torch.Generator's stream is something no kernel can reproduce. The noise here is a pure function of (seed, output position, token id) built from
32-bit unsigned integer ops and a handful of IEEE float32 ops (+, -, *, correctly rounded /),
so torch (CPU or CUDA) and Triton (GPU or TRITON_INTERPRET) produce bit-identical values. No
state, no host sync: a position gets the same noise in every round, mode and batch layout.

Integer recipe (all values uint32, `*` and `+` wrap mod 2**32, `>>` is a logical shift):

    fmix32(h):  h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13; h *= 0xC2B2AE35; h ^= h >> 16
                (the murmur3 finaliser: a bijection on uint32 with full avalanche)
    seed  -> s = seed mod 2**64, s_lo = s & 0xFFFFFFFF, s_hi = s >> 32
    key   = fmix32(fmix32(s_hi ^ 0x9E3779B9) ^ s_lo)                      (host side, once)
    pos   -> p = pos mod 2**64 (two's complement), p_lo, p_hi as for the seed
    row   = fmix32(fmix32(key ^ p_hi) ^ p_lo)                             (once per row)
    h     = fmix32(fmix32(row ^ (tok * 0x9E3779B9)) ^ key)                (per token id)

For a fixed (seed, position) the map tok -> h is a bijection, so no two tokens of a row share
their noise.

Float recipe (every step one correctly rounded float32 op; constants are float32 values):

    u = (float(h >> 9) + 0.5) * 2**-23         exact; u in [2**-24, 1 - 2**-24], never 0 or 1
    g = -log_f32(-log_f32(u))                   Gumbel(0, 1), g in [-2.82, 16.64]

`log_f32` is a fixed sequence of float32 ops (exponent/mantissa split by bit casts, then the
fdlibm-style series log(1+f) = f - f*f/2 + s*(f*f/2 + R(s*s)), s = f/(2+f)), not the platform's
libm: torch's and numpy's (the Triton interpreter's) float32 `log` differ in the last bit on about
a third of the inputs, and Triton's GPU `log` is another implementation again. Its error is a
couple of float32 ulps (tested), irrelevant to the sampling distribution.

The Triton twin (phide.triton_kernels.gumbel_verify) must be launched with `enable_fp_fusion=False`
so the compiler does not contract a*b+c into FMAs, which round once instead of twice.
"""

from __future__ import annotations

import torch

from phide.formats import FMIX_M1, FMIX_M2, GOLDEN32, LOG_CONSTS, MASK32, seed_key

__all__ = [
    "MASK32",
    "FMIX_M1",
    "FMIX_M2",
    "GOLDEN32",
    "LOG_CONSTS",
    "seed_key",
    "hash_bits",
    "hash_uniform",
    "log_f32",
    "hash_gumbel",
    "gumbel_choices_torch",
]

_U_SCALE = 2.0**-23


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    # a * c mod 2**32 for a in [0, 2**32): a full 32x32 product overflows int64, so multiply the
    # 16-bit halves separately (each product < 2**48).
    lo = (a & 0xFFFF) * c
    hi = ((a >> 16) * c) & 0xFFFF
    return (lo + (hi << 16)) & MASK32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, FMIX_M1)
    h = h ^ (h >> 13)
    h = _mul32(h, FMIX_M2)
    return h ^ (h >> 16)


def hash_bits(seed: int, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """The uint32 hash h of every (position, token id) as int64 [N, vocab] in [0, 2**32)."""
    key = seed_key(seed)
    pos = positions.to(torch.int64).reshape(-1, 1)
    p_lo = pos & MASK32
    p_hi = (pos >> 32) & MASK32  # arithmetic shift: the two's-complement high word
    row = _fmix32(_fmix32(p_hi ^ key) ^ p_lo)  # [N, 1]
    tok = torch.arange(vocab, dtype=torch.int64, device=pos.device).unsqueeze(0)  # [1, V]
    return _fmix32(_fmix32(row ^ _mul32(tok, GOLDEN32)) ^ key)


def hash_uniform(seed: int, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """Uniform(0, 1) noise, float32 [N, vocab], from (seed, positions[n], token id):
    u = ((h >> 9) + 0.5) * 2**-23, exact in float32, strictly inside (0, 1)."""
    h = hash_bits(seed, positions, vocab)
    return ((h >> 9).to(torch.float32) + 0.5) * _U_SCALE


# ---------------------------------------------------------------------------------------------
# Portable float32 log (the op sequence is mirrored line by line in the Triton kernel).


def log_f32(x: torch.Tensor) -> torch.Tensor:
    """Natural log of positive, normal float32 values with a fixed op sequence (see module doc).
    Zero, negative, subnormal, inf and NaN inputs are out of contract."""
    c = LOG_CONSTS
    bits = x.to(torch.float32).view(torch.int32)
    e = ((bits >> 23) & 0xFF) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).view(torch.float32)  # mantissa in [1, 2)
    big = m > c["SQRT2"]  # fold to [sqrt(2)/2, sqrt(2)) so |s| stays small
    m = torch.where(big, m * 0.5, m)
    e = torch.where(big, e + 1, e)
    f = m - 1.0  # exact (Sterbenz)
    s = f / (f + 2.0)  # tensor / tensor: IEEE division on CPU and CUDA
    z = s * s
    r = z * (c["C1"] + z * (c["C2"] + z * (c["C3"] + z * (c["C4"] + z * c["C5"]))))
    hfsq = 0.5 * f * f
    log_m = (f - hfsq) + s * (hfsq + r)
    ef = e.to(torch.float32)
    return ef * c["LN2_HI"] + (log_m + ef * c["LN2_LO"])


def hash_gumbel(seed: int, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise, float32 [N, vocab]: -log(-log(hash_uniform(seed, positions, vocab)))
    with the portable `log_f32`."""
    u = hash_uniform(seed, positions, vocab)
    return -log_f32(-log_f32(u))


def gumbel_choices_torch(
    logits: torch.Tensor, temperature: float, seed: int, positions: torch.Tensor
) -> torch.Tensor:
    """One sample per row by the Gumbel-max trick, int64 [N].

    logits [N, V] (any float dtype, compared in float32); positions [N] int64 (row n: the output
    position that row predicts). temperature > 0: argmax(logits.float() / T + hash_gumbel(...)),
    an exact draw from softmax(logits / T); temperature == 0: argmax(logits.float()) (greedy).
    NaN logits are treated as -inf (never chosen unless the whole row is NaN/-inf, then 0).
    Ties go to the lowest index (torch.argmax)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    x = logits.to(torch.float32)
    if x.dim() != 2:
        raise ValueError(f"logits must be [N, V], got {tuple(logits.shape)}")
    if temperature > 0:
        # Same-device 0-dim tensor: IEEE division on CPU and CUDA alike (see log_f32).
        x = x / torch.full((), float(temperature), dtype=torch.float32, device=x.device)
    x = torch.where(torch.isnan(x), torch.full_like(x, float("-inf")), x)
    if temperature > 0:
        x = x + hash_gumbel(seed, positions.to(x.device), x.shape[1])
    return torch.argmax(x, dim=-1)
