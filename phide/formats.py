"""Data formats shared by phide's kernels and their torch references (pure Python: no torch, no
triton), so neither side imports the other for them (they sit below both layers).

- Tree-verify attention: one int64 ancestor bitmask per tree node, so a tree holds at most
  MAX_TREE_NODES nodes.
- Hash noise for sampling: the integer recipe and float32 constants of
  `phide.ops.hash_noise` (the recipe is documented there).
"""

from __future__ import annotations

import math
import struct

MAX_TREE_NODES = 64  # one int64 ancestor bitmask per node

MASK32 = 0xFFFFFFFF
FMIX_M1 = 0x85EBCA6B
FMIX_M2 = 0xC2B2AE35
GOLDEN32 = 0x9E3779B9  # 2**32 / golden ratio, odd: multiplying by it permutes uint32


def _f32(x: float) -> float:
    """The float32 value nearest to x, as a Python float (so no side rounds a constant again)."""
    return struct.unpack("f", struct.pack("f", x))[0]


# log_f32 constants, all exactly representable in float32 (the torch twin and the kernel share them).
LOG_CONSTS = {
    "SQRT2": _f32(math.sqrt(2.0)),
    # ln 2 split so that e * LN2_HI is exact for |e| <= 128 (LN2_HI has 7 trailing zero bits).
    "LN2_HI": struct.unpack("f", struct.pack("I", 0x3F317180))[0],
    "LN2_LO": struct.unpack("f", struct.pack("I", 0x3717F7D1))[0],
    # Taylor coefficients of 2*atanh(s)/s - 2 in z = s*s: 2/3, 2/5, 2/7, 2/9, 2/11. |s| <= 0.172,
    # so the first dropped term (2/13 z**6) is below 1e-10 relative.
    "C1": _f32(2.0 / 3.0),
    "C2": _f32(2.0 / 5.0),
    "C3": _f32(2.0 / 7.0),
    "C4": _f32(2.0 / 9.0),
    "C5": _f32(2.0 / 11.0),
}


# ---------------------------------------------------------------------------------------------
# Integer hash (uint32 lanes emulated in int64, masked to 32 bits after every op).


def _fmix32_int(h: int) -> int:
    h &= MASK32
    h ^= h >> 16
    h = (h * FMIX_M1) & MASK32
    h ^= h >> 13
    h = (h * FMIX_M2) & MASK32
    h ^= h >> 16
    return h


def seed_key(seed: int) -> int:
    """The uint32 key of a request seed (any Python int, taken mod 2**64)."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    return _fmix32_int(_fmix32_int((s >> 32) ^ GOLDEN32) ^ (s & MASK32))
