"""Defensive loading of phide's compiled extension `phide._C`.

Importing `phide._C` runs its static TORCH_LIBRARY registrars, after which the ops live under
`torch.ops.phide.*`. A missing or incompatible build must never break phide: the torch twins in
`phide.speculation` serve every op. Set PHIDE_DISABLE_EXT=1 to force the pure-torch path.
"""

from __future__ import annotations

import functools
import os
import sys


@functools.cache
def load_extension() -> bool:
    """True when `phide._C` is importable and its ops are registered; warns once otherwise."""
    if os.environ.get("PHIDE_DISABLE_EXT", "") not in ("", "0"):
        return False
    try:
        import torch  # noqa: F401  (the extension links against torch's libraries)

        _check_built_against(torch.__version__)
        from phide import _C  # noqa: F401
    except (ImportError, OSError) as exc:
        print(
            f"phide: warning: compiled extension unavailable ({exc}); using the pure-torch path. "
            "Rebuild with `pip install --no-build-isolation -e .`",
            file=sys.stderr,
        )
        return False
    import torch

    if not hasattr(torch.ops.phide, "accept_path"):
        return False
    import phide._fake_ops  # noqa: F401  (register_fake for every compiled op)

    return True


def _check_built_against(torch_version: str) -> None:
    """Refuse a .so built for another torch: a C++ ABI mismatch can abort the process on import."""
    try:
        from phide import _build_info
    except ImportError:
        return
    built = getattr(_build_info, "TORCH_VERSION", None)
    if built and built != torch_version:
        raise ImportError(f"phide._C was built against torch {built}, running torch {torch_version}")


def extension_info() -> dict:
    """What was compiled in (for stats and `phide --version` style reports)."""
    if not load_extension():
        return {"loaded": False}
    from phide import _C

    info = {"loaded": True}
    build = getattr(_C, "build_info", None)
    if callable(build):
        info.update(build())
    return info
