"""A tiny random Video-LLaVA checkpoint in the real HF directory format, for tests and smoke checks.

The directory holds what `LanguageBind/Video-LLaVA-7B-hf` holds, at toy sizes: config.json
(model_type "video_llava"), generation_config.json, safetensors weights, a tokenizer with
`<image>`, `<video>`, `<pad>` added after the base vocabulary, and the processor files
so that transformers' `VideoLlavaProcessor.from_pretrained` loads from it: transformers 5's
processor_config.json (image + video processor settings) for the "transformers" layout, the hub's
preprocessor_config.json for the "hub" layout.

Two weight layouts:
  "transformers": what transformers' `save_pretrained` writes (one model.safetensors); 5.23
                  reverts its load-time renaming on save, so the LM is `language_model.model.*`
                  / `language_model.lm_head.weight` like the hub, but the towers are
                  `video_tower.*` / `image_tower.*` with no `vision_model.` level (5.x
                  CLIPVisionModel has none);
  "hub":          the names of the published checkpoint / the conversion script
                  (`language_model.model.*`, `language_model.lm_head.weight`,
                  `video_tower.vision_model.*`, `image_tower.vision_model.*`,
                  `multi_modal_projector.*`), sharded in two files with an index like the hub.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

LAYOUTS = ("transformers", "hub")
NUM_FRAMES = 8


def _hub_name(name: str) -> str:
    """transformers-5 in-memory parameter name -> published-checkpoint name."""
    if name.startswith("lm_head."):
        return "language_model." + name
    if name.startswith("model.language_model."):
        return "language_model.model." + name[len("model.language_model."):]
    m = re.match(r"model\.(video_tower|image_tower)\.(?:vision_model\.)?(.*)", name)
    if m:
        return f"{m.group(1)}.vision_model.{m.group(2)}"
    if name.startswith("model.multi_modal_projector."):
        return name[len("model."):]
    raise ValueError(f"unexpected Video-LLaVA parameter {name}")


def _write_hub_weights(model, out_dir: Path, shards: int = 2) -> None:
    from safetensors.torch import save_file

    state = {_hub_name(k): v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    names = sorted(state)
    per = -(-len(names) // shards)
    weight_map = {}
    total = 0
    for i in range(shards):
        part = names[i * per:(i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in part}, str(out_dir / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
        total += sum(state[k].numel() * state[k].element_size() for k in part)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def tiny_video_llava_config(vocab_size: int, *, image_token_id: int, video_token_id: int, pad_token_id: int,
                            image_size: int = 42, patch_size: int = 14, vision_hidden: int = 32,
                            vision_layers: int = 2, text_hidden: int = 64, text_layers: int = 2,
                            heads: int = 4, kv_heads: int = 2, intermediate: int = 128, init_std: float = 0.1):
    from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig

    text = LlamaConfig(vocab_size=vocab_size, hidden_size=text_hidden, num_hidden_layers=text_layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate,
                       initializer_range=init_std, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       max_position_embeddings=2048, rms_norm_eps=1e-5)
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                              num_hidden_layers=vision_layers, num_attention_heads=4, image_size=image_size,
                              patch_size=patch_size, projection_dim=16, hidden_act="quick_gelu")
    per_frame = (image_size // patch_size) ** 2 + 1
    return VideoLlavaConfig(text_config=text, vision_config=vision, image_token_index=image_token_id,
                            video_token_index=video_token_id, pad_token_id=pad_token_id,
                            projector_hidden_act="gelu", vision_feature_layer=-2,
                            vision_feature_select_strategy="default", image_seq_length=per_frame - 1,
                            video_seq_length=NUM_FRAMES * per_frame, tie_word_embeddings=False)


def write_tiny_video_llava(out_dir: str | os.PathLike, *, seed: int = 0, layout: str = "transformers",
                           image_size: int = 42, base_vocab: int = 384, pad_vocab_to: int = 64,
                           init_std: float = 0.2, vision_std: float = 1.0, tokenizer_dir=None, **cfg):
    """Save a random tiny VideoLlavaForConditionalGeneration (+ tokenizer + processor) to out_dir.

    Deterministic by `seed`. The embedding / LM head get `base_vocab + 3` rows rounded up to a
    multiple of `pad_vocab_to` (the real checkpoint: 32003 -> 32064). `tokenizer_dir`: reuse that base
    tokenizer (e.g. the toy world's) instead of training one (`base_vocab` is then unused). The vision tower and
    projector weights are scaled up (`vision_std`) so the frames visibly steer generation.
    Returns the HF model (eval mode).
    """
    from tokenizers import AddedToken
    from transformers import (GenerationConfig, VideoLlavaForConditionalGeneration, VideoLlavaImageProcessor,
                              VideoLlavaProcessor, VideoLlavaVideoProcessor)

    from phide.models.tiny import write_tokenizer

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    if tokenizer_dir:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        tok.save_pretrained(str(out))
    else:
        tok = write_tokenizer(out, vocab_size=base_vocab, seed=seed)
    # As the conversion script does: <image>, <video> as special added tokens, then <pad>.
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False),
                    AddedToken("<video>", special=True, normalized=False)], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.padding_side = "left"
    image_id, video_id, pad_id = tok.convert_tokens_to_ids(["<image>", "<video>", "<pad>"])
    vocab = -(-len(tok) // pad_vocab_to) * pad_vocab_to

    config = tiny_video_llava_config(vocab, image_token_id=image_id, video_token_id=video_id, pad_token_id=pad_id,
                                     image_size=image_size, init_std=init_std, **cfg)
    torch.manual_seed(seed)
    model = VideoLlavaForConditionalGeneration(config).eval()
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("video_tower" in name or "image_tower" in name or "multi_modal_projector" in name) \
                    and p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * vision_std / p.shape[-1] ** 0.5)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=pad_id)

    if layout == "transformers":
        model.save_pretrained(str(out))
    else:
        config.save_pretrained(str(out))
        model.generation_config.save_pretrained(str(out))
        _write_hub_weights(model, out)

    size = {"shortest_edge": image_size}
    crop = {"height": image_size, "width": image_size}
    image_processor = VideoLlavaImageProcessor(size=size, crop_size=crop)
    if layout == "transformers":  # transformers 5: one processor_config.json with both processors
        processor = VideoLlavaProcessor(
            image_processor=image_processor, video_processor=VideoLlavaVideoProcessor(size=size, crop_size=crop),
            tokenizer=tok, patch_size=config.vision_config.patch_size, vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
        processor.save_pretrained(str(out))
    else:  # like the hub: preprocessor_config.json (the video processor is built from it) + tokenizer
        image_processor.save_pretrained(str(out))
        tok.save_pretrained(str(out))
    return model


def main(argv: list[str] | None = None) -> int:
    """python -m phide.models.tiny_video_llava OUT_DIR: write a tiny random Video-LLaVA checkpoint."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m phide.models.tiny_video_llava",
                                 description=main.__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layout", choices=LAYOUTS, default="transformers")
    ap.add_argument("--image-size", type=int, default=42, help="frame side (a multiple of the 14-px patch)")
    args = ap.parse_args(argv)
    write_tiny_video_llava(args.out_dir, seed=args.seed, layout=args.layout, image_size=args.image_size)
    print(f"wrote a tiny Video-LLaVA ({args.layout} layout) to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
