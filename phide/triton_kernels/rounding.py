"""fp32 -> a kernel's storage dtype with torch's rounding (to nearest, ties to even), identical on a
GPU and under the interpreter, for kernels that must match their torch twin bit for bit.

`x.to(tl.bfloat16)` rounds to nearest even on a GPU, but the interpreter (TRITON_INTERPRET=1)
truncates, and its "rtne" mode rounds ties up without carrying into the exponent; so bf16 is
rounded here on the bits. fp16 casts are numpy's (nearest even) under the interpreter.
"""

from __future__ import annotations

import os

try:  # guarded: `import phide` must work on machines without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on triton-less installs
    triton = None

if triton is not None:

    def _round_to(x, dtype: tl.constexpr):
        """x fp32 -> dtype (fp32: unchanged). Finite values only (a NaN may come back as inf)."""
        if dtype == tl.float32:
            return x
        elif dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)  # round half to even on the dropped 16 bits
            return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            return x.to(dtype)

    # Under the interpreter a @triton.jit helper re-patches triton.language on every call (~1 ms,
    # ten calls per program); as a plain function it runs inside the kernel's patched language,
    # the same code. Compiled kernels need the jit function. (Decided as triton decides, at import.)
    round_to = _round_to if os.environ.get("TRITON_INTERPRET", "0") == "1" else triton.jit(_round_to)
