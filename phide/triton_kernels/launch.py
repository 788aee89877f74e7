"""One kernel launch as data: what a launcher decided (kernel, grid, arguments, compile options),
before it runs. The launchers build these and run them; `precompile.py` builds the same ones on
meta tensors to compile every variant ahead of time (offline for sm_90a, or at engine load), so
what is compiled there is exactly what the launchers launch.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

# Triton's interpreter (TRITON_INTERPRET=1) patches triton.language inside a kernel's module, and
# the helpers it calls, while the kernel runs: two threads interpreting kernels at once (the hide
# window's two lanes on a CPU) would undo each other's patches. Compiled launches never take it.
_INTERPRETER_LOCK = threading.Lock()


class Launch(NamedTuple):
    kernel: Any  # a triton.JITFunction (or the interpreter's stand-in under TRITON_INTERPRET=1)
    grid: tuple[int, ...]
    args: tuple  # positional kernel arguments: tensors and scalars, in the kernel's order
    options: dict  # constexprs by name, then launch options (num_warps, num_stages, ...)

    def __call__(self) -> None:
        if type(self.kernel).__name__ == "InterpretedFunction":
            with _INTERPRETER_LOCK:
                self.kernel[self.grid](*self.args, **self.options)
            return
        self.kernel[self.grid](*self.args, **self.options)

    @property
    def name(self) -> str:
        fn = getattr(self.kernel, "fn", self.kernel)
        return getattr(fn, "__name__", str(fn))
