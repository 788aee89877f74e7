"""Shared by the Triton kernel test files: where the kernels run and the skip marks.

Importing this sets TRITON_INTERPRET=1 unless the caller chose (profiling/gpu_check.sh sets 0 to
compile the kernels on a GPU); it must come before anything imports triton."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

try:
    import triton  # noqa: F401
except ImportError:  # pragma: no cover
    triton = None

needs_triton = pytest.mark.skipif(triton is None, reason="triton is not importable")
# Kernel tests run on the GPU when there is one; tests that keep CPU tensors or CPU models can only
# run Triton through the interpreter.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_interpreter = pytest.mark.skipif(torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                                       reason="CPU tensors need the Triton interpreter")
