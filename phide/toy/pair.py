"""The toy draft/target pair, randomly initialised, in the real directory formats.

`write_toy_pair(out_dir, size=...)` writes, all sharing the toy world's tokenizer:

  out_dir/tokenizer  `phide.toy.tokenizer.train_toy_tokenizer` (HF format)
  out_dir/target     a Video-LLaVA checkpoint (`write_tiny_video_llava`, transformers layout)
  out_dir/clip       the draft's CLIP vision tower (`write_tiny_clip`)
  out_dir/draft      an EventGPT checkpoint (`write_tiny_eventgpt`, mm_visual_tower -> ../clip)

Presets (`SIZES`): "test" is tiny (unit tests); "demo" is the planned demo pair: deep and narrow LMs
(hidden 128, 32 layers) so that on a CPU a decode step costs tens of ms of per-layer latency, like a
7B decode on a GPU, while the checkpoints stay small (budget: <= 40 MB in bf16 for all of them).
Train them with `phide.toy.train`.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

BF16_BUDGET_BYTES = 40 * 1024 * 1024

SIZES: dict[str, dict] = {
    "test": {
        "target": dict(image_size=16, patch_size=8, vision_hidden=16, vision_layers=2, text_hidden=32,
                       text_layers=2, heads=4, kv_heads=2, intermediate=64, init_std=0.02),
        "clip": dict(image_size=16, patch_size=8, hidden=32, heads=1, layers=1, intermediate=64),
        "draft": dict(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, init_std=0.02),
    },
    # target: 8 frames x ((56/8)^2 + 1 = 50) = 400 visual tokens; draft: 5 + (40/8)^2 + 1 = 31 event
    # tokens. Measured on 2 cores (fp32): target prepare+prefill ~87 ms, a decode step ~10 ms; draft
    # prepare+prefill ~22 ms (4x shorter).
    "demo": {
        "target": dict(image_size=56, patch_size=8, vision_hidden=64, vision_layers=3, text_hidden=128,
                       text_layers=32, heads=4, kv_heads=2, intermediate=256, init_std=0.02),
        "clip": dict(image_size=40, patch_size=8, hidden=128, heads=2, layers=2, intermediate=256),
        "draft": dict(hidden=128, layers=32, heads=4, kv_heads=2, intermediate=256, init_std=0.02),
    },
}


def _quiet(fn, *a, **k):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*a, **k)


def checkpoint_stats(out_dir: str | os.PathLike) -> dict[str, dict]:
    """Per part (target, clip, draft): parameters in its safetensors files and their bf16 bytes."""
    from phide.models.loading import load_state_dict

    stats = {}
    for part in ("target", "clip", "draft"):
        state = load_state_dict(Path(out_dir) / part)
        n = sum(t.numel() for t in state.values() if t.is_floating_point())
        stats[part] = {"params": n, "bf16_bytes": 2 * n}
    return stats


EMBED_STD = 1.0


def _edit_weights(model_dir: Path, suffixes: tuple[str, ...], edit) -> None:
    """Replace every tensor whose key ends with one of `suffixes` by `edit(tensor)`, in place in
    the directory's safetensors files."""
    from safetensors.torch import load_file, save_file

    for f in sorted(model_dir.glob("*.safetensors")):
        part = load_file(str(f))
        hit = [k for k in part if k.endswith(suffixes)]
        for k in hit:
            part[k] = edit(part[k])
        if hit:
            save_file(part, str(f), metadata={"format": "pt"})


def _rescale_embeddings(model_dir: Path, std: float, seed: int) -> None:
    """Re-draw the LM's token embeddings with standard deviation `std`.

    HF's default init (std 0.02) leaves text embeddings ~400x smaller than the visual features
    a from-scratch projector produces (measured: RMS 0.04 vs 14 after 600 steps); attention then
    drowns every text position in visual values, and the model never learns to read the question
    or the frames (it sat on a plateau of perfect templates with guessed attributes). Unit-scale
    embeddings keep text and visual tokens comparable."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    _edit_weights(model_dir, ("embed_tokens.weight",),
                  lambda t: (torch.randn(t.shape, generator=gen) * std).to(t.dtype))


VISUAL_OUT_SCALE = 0.1


def _scale_weights(model_dir: Path, suffixes: tuple[str, ...], factor: float) -> None:
    """Multiply the named weights (the last layer that produces visual embeddings) by `factor`:
    visual features then start ~10x smaller than the unit-scale text embeddings, so they do not
    swamp the question's tokens before attention has learned where to look."""
    _edit_weights(model_dir, suffixes, lambda t: t * factor)


def write_toy_pair(out_dir: str | os.PathLike, *, size: str = "demo", seed: int = 0, verbose: bool = False,
                   lm_layers: int | None = None) -> dict:
    """Write tokenizer/, target/, clip/, draft/ under out_dir (random weights, deterministic by seed);
    returns checkpoint_stats(out_dir). Raises ValueError when the pair is over the bf16 budget.
    lm_layers: both language models with this many layers instead of the preset's (train shallow,
    then grow to the preset's depth with `phide.toy.grow`)."""
    from phide.models.tiny_eventgpt import write_tiny_clip, write_tiny_eventgpt
    from phide.models.tiny_video_llava import write_tiny_video_llava
    from phide.toy.tokenizer import train_toy_tokenizer

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    preset = {k: dict(v) for k, v in SIZES[size].items()}
    if lm_layers is not None:
        if lm_layers < 1:
            raise ValueError(f"lm_layers must be >= 1, not {lm_layers}")
        preset["target"]["text_layers"] = preset["draft"]["layers"] = lm_layers
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    train_toy_tokenizer(tok_dir, seed=seed)
    t = dict(preset["target"])
    image_size = t.pop("image_size")
    _quiet(write_tiny_video_llava, out / "target", seed=seed, layout="transformers", image_size=image_size,
           tokenizer_dir=tok_dir, **t)
    _quiet(write_tiny_clip, out / "clip", seed + 1, **preset["clip"])
    _quiet(write_tiny_eventgpt, out / "draft", clip_dir=out / "clip", tokenizer_dir=tok_dir, seed=seed + 2,
           **preset["draft"])
    for i, part in enumerate(("target", "draft")):
        _rescale_embeddings(out / part, EMBED_STD, seed + 10 + i)
    _scale_weights(out / "target", ("multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.bias"),
                   VISUAL_OUT_SCALE)
    _scale_weights(out / "draft", ("feature_adaptor.weight", "feature_adaptor.bias"), VISUAL_OUT_SCALE)
    stats = checkpoint_stats(out)
    total = sum(s["bf16_bytes"] for s in stats.values())
    if verbose:
        for part, s in stats.items():
            print(f"phide: toy pair {size} {part}: {s['params'] / 1e6:.3f}M parameters, "
                  f"{s['bf16_bytes'] / 2**20:.2f} MiB bf16", file=sys.stderr)
        print(f"phide: toy pair {size} total {total / 2**20:.2f} MiB bf16", file=sys.stderr)
    if total > BF16_BUDGET_BYTES:
        raise ValueError(f"the {size} pair is {total / 2**20:.1f} MiB in bf16, over the "
                         f"{BF16_BUDGET_BYTES / 2**20:.0f} MiB budget")
    return stats
