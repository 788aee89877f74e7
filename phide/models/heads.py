"""One place that finds and loads a continuation head, whichever kind a directory holds.

  EAGLE-2  eagle_head.safetensors + eagle_head.json (phide's own files; phide.models.eagle)
  EAGLE-3  config.json + model.safetensors in the layout SGLang and vLLM load (phide.models.eagle3)

A pair's default head is in its target directory: EAGLE-2 files beside the target's, or either kind
in the `eagle_head/` subdirectory (an EAGLE-3 head's config.json cannot sit beside the target's).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from phide.errors import PhideError
from phide.models.eagle import has_eagle_head, load_eagle_head
from phide.models.eagle3 import is_eagle3_dir, load_eagle3_head
from phide.models.llama import LlamaConfig

HEAD_SUBDIR = "eagle_head"
KINDS = ("eagle2", "eagle3")


def head_kind(model_dir: str | os.PathLike) -> str | None:
    """"eagle2", "eagle3", or None when the directory holds no head."""
    if has_eagle_head(model_dir):
        return "eagle2"
    if is_eagle3_dir(model_dir):
        return "eagle3"
    return None


def default_head_dir(target_dir: str | os.PathLike) -> Path | None:
    """The head a target directory carries: its own EAGLE-2 files, else its eagle_head/ subdirectory."""
    for d in (Path(target_dir), Path(target_dir) / HEAD_SUBDIR):
        if d.is_dir() and head_kind(d) is not None:
            return d
    return None


def load_head(model_dir: str | os.PathLike, *, target_cfg: LlamaConfig, device="cpu", dtype=torch.float32):
    """The head in `model_dir` (either kind), checked against the target's config."""
    kind = head_kind(model_dir)
    if kind == "eagle2":
        return load_eagle_head(model_dir, target_cfg=target_cfg, device=device, dtype=dtype)
    if kind == "eagle3":
        return load_eagle3_head(model_dir, target_cfg=target_cfg, device=device, dtype=dtype)
    check_head_dir(model_dir)
    raise AssertionError("unreachable")


def check_head_dir(model_dir: str | os.PathLike) -> str:
    """Cheap (configs only): the kind of the head in `model_dir`, or one clear error."""
    if not Path(model_dir).is_dir():
        raise PhideError(f"head directory not found: {model_dir}")
    kind = head_kind(model_dir)
    if kind is None:
        raise PhideError(f"{model_dir} holds no EAGLE head (eagle_head.safetensors + eagle_head.json, or an "
                         "EAGLE-3 config.json + model.safetensors)")
    return kind
