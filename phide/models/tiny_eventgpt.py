"""Tiny EventGPT checkpoints in the (expected) real directory format, for tests and smoke checks.

`write_tiny_clip` saves a random tiny CLIP vision tower + CLIPImageProcessor config (the stand-in
for openai/clip-vit-large-patch14-336); `write_tiny_eventgpt` saves an EventGPT checkpoint next to
it: config.json (model_type EventChat_llama, LLaMA keys, `mm_visual_tower` pointing at the CLIP
directory, relative when possible), safetensors weights in one of the layouts the loader accepts,
and tokenizer files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from phide.models.eventgpt import (MODEL_TYPE, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, clip_vision_config,
                                   quiet_model_type_warning)

LAYOUTS = ("model", "bare_adapters", "with_tower", "with_tower_v5", "split")
"""model: documented layout (model.* decoder, lm_head.weight, model.visual_projector.{0,2}.*,
model.feature_adaptor.*); bare_adapters: adapters without the `model.` prefix; with_tower /
with_tower_v5: also the CLIP tower under model.visual_tower.visual_tower.vision_model.* (transformers
4.x naming) / model.visual_tower.visual_tower.* (5.x); split: decoder in an indexed shard, adapters in
a separate safetensors file."""


def write_tiny_clip(out_dir: str | os.PathLike, seed: int = 0, *, image_size: int = 42, patch_size: int = 14,
                    hidden: int = 128, heads: int = 2, layers: int = 2, intermediate: int = 256,
                    layout: str = "vision", legacy_processor: bool = False):
    """Save a random tiny CLIP vision tower to out_dir; returns the CLIPVisionModel.

    layout "vision": a CLIPVisionModel (5.x keys, no `vision_model.` level); "clip": a whole
    CLIPModel with a tiny text side, like openai's hub repos (nested vision_config, `vision_model.*`).
    The processor config is CLIPImageProcessor's (dict sizes), or with legacy_processor the older
    hub format (`"size": N, "crop_size": N`, `CLIPFeatureExtractor`). Heads are 64 wide, like CLIP's.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vision = dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=heads, image_size=image_size, patch_size=patch_size)
    if layout not in ("vision", "clip"):
        raise ValueError(f"unknown CLIP layout {layout!r} (vision, clip)")
    from transformers import CLIPVisionConfig

    torch.manual_seed(seed)
    tower = CLIPVisionModel(CLIPVisionConfig(**vision)).eval()  # same tower weights in both layouts
    if layout == "vision":
        tower.save_pretrained(str(out))
    else:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
        model.vision_model.load_state_dict(tower.state_dict())
        model.save_pretrained(str(out))
    if legacy_processor:
        (out / "preprocessor_config.json").write_text(json.dumps({
            "crop_size": image_size, "do_center_crop": True, "do_normalize": True, "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(OPENAI_CLIP_MEAN),
            "image_std": list(OPENAI_CLIP_STD), "resample": 3, "size": image_size}, indent=2))
    else:
        CLIPImageProcessor(size={"shortest_edge": image_size},
                           crop_size={"height": image_size, "width": image_size}).save_pretrained(str(out))
    return tower


def _rel(target: Path, start: Path) -> str:
    try:
        return os.path.relpath(target.resolve(), start.resolve())
    except ValueError:  # different drives
        return str(target.resolve())


def write_tiny_eventgpt(out_dir: str | os.PathLike, *, clip_dir: str | os.PathLike, tokenizer_dir=None,
                        seed: int = 0, layout: str = "model", hidden: int = 64, layers: int = 2, heads: int = 4,
                        kv_heads: int = 2, intermediate: int = 128, init_std: float = 0.1,
                        add_ev_patch: bool = False, start_end: bool = False, absolute_clip_path: bool = False):
    """Save a random tiny EventGPT checkpoint to out_dir; returns its state dict (fp32 tensors).

    The decoder is a random tiny LlamaForCausalLM; visual_projector maps the CLIP width to the
    text width (Linear, GELU, Linear); feature_adaptor is Linear(hidden, hidden). The tokenizer
    is `tokenizer_dir`'s, else `phide.models.tiny.write_tokenizer`'s, saved without EventGPT's
    runtime tokens. Vocabulary rows: len(tokenizer), + 1 with add_ev_patch (inference.py's
    <ev_patch> resize: 32000 -> 32001 for the real model), + 3 with start_end (config
    mm_use_im_start_end: <ev_patch>, <ev_start>, <ev_end>).
    """
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    from phide.models.tiny import tiny_llama_config, write_tokenizer

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} ({', '.join(LAYOUTS)})")
    out, clip_dir = Path(out_dir), Path(clip_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir:
        with quiet_model_type_warning():
            tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        tok = write_tokenizer(out)
    tok.save_pretrained(str(out))
    rows = len(tok) + (3 if start_end else 1 if add_ev_patch else 0)
    vcfg = clip_vision_config(clip_dir)

    torch.manual_seed(seed)
    llm = LlamaForCausalLM(tiny_llama_config(rows, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                                             intermediate=intermediate, init_std=init_std)).eval()
    projector = nn.Sequential(nn.Linear(vcfg.hidden_size, hidden), nn.GELU(), nn.Linear(hidden, hidden))
    adaptor = nn.Linear(hidden, hidden)
    lm_state = {k: v.detach().clone().contiguous() for k, v in llm.state_dict().items()}
    adapters = {}
    ad = "" if layout == "bare_adapters" else "model."
    for k, v in projector.state_dict().items():
        adapters[f"{ad}visual_projector.{k}"] = v.detach().clone().contiguous()
    for k, v in adaptor.state_dict().items():
        adapters[f"{ad}feature_adaptor.{k}"] = v.detach().clone().contiguous()
    if layout in ("with_tower", "with_tower_v5"):
        from phide.models.loading import load_state_dict

        clip_state = load_state_dict(clip_dir)
        src = "vision_model." if any(k.startswith("vision_model.") for k in clip_state) else ""
        dst = "model.visual_tower.visual_tower." + ("vision_model." if layout == "with_tower" else "")
        for k, v in clip_state.items():
            if k.startswith(src) and not k.startswith("text_model."):
                adapters[dst + k[len(src):]] = v.contiguous()

    meta = {"format": "pt"}
    for f in out.glob("*.safetensors"):
        f.unlink()
    if layout == "split":
        shard = "model-00001-of-00001.safetensors"
        save_file(lm_state, str(out / shard), metadata=meta)
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {k: shard for k in sorted(lm_state)}}, indent=2))
        save_file(adapters, str(out / "event_adapters.safetensors"), metadata=meta)
    else:
        (out / "model.safetensors.index.json").unlink(missing_ok=True)
        save_file({**lm_state, **adapters}, str(out / "model.safetensors"), metadata=meta)

    config = llm.config.to_dict()
    for k in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        config.pop(k, None)
    config.update(model_type=MODEL_TYPE, architectures=["EventChatModel"], torch_dtype="float32",
                  mm_visual_tower=str(clip_dir.resolve()) if absolute_clip_path else _rel(clip_dir, out),
                  event_feature_adaptor=True, mm_use_im_start_end=bool(start_end))
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return {**lm_state, **adapters}


def main(argv: list[str] | None = None) -> int:
    """python -m phide.models.tiny_eventgpt OUT_DIR: write OUT_DIR/clip (tiny CLIP tower) and
    OUT_DIR/eventgpt (tiny EventGPT draft whose mm_visual_tower points at ../clip)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m phide.models.tiny_eventgpt",
                                 description=main.__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer-dir", help="reuse this tokenizer (e.g. the tiny target's) instead of training one")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    write_tiny_clip(out / "clip", seed=args.seed)
    write_tiny_eventgpt(out / "eventgpt", clip_dir=out / "clip", tokenizer_dir=args.tokenizer_dir, seed=args.seed)
    print(f"wrote {out}/clip, {out}/eventgpt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
