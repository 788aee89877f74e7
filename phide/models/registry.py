"""Pick the adapter for a checkpoint directory by its config's model_type.

llama (LlamaForCausalLM) -> TextAdapter; video_llava -> the Video-LLaVA target adapter;
EventChat_llama -> the EventGPT draft adapter. Multimodal adapters import lazily so a text-only
install never loads vision code.
"""

from __future__ import annotations

import torch

from phide.errors import PhideError
from phide.models.loading import load_llama, load_tokenizer, read_config

TEXT_TYPES = ("llama", "mistral")


def model_type(model_dir) -> str:
    return str(read_config(model_dir).get("model_type", "llama"))


def load_adapter(model_dir, *, role: str, device="cpu", dtype=torch.float32, clip_dir=None):
    """Load a checkpoint directory as an adapter (role 'target' or 'draft' labels progress;
    clip_dir overrides an EventGPT checkpoint's mm_visual_tower path)."""
    kind = model_type(model_dir)
    if kind == "video_llava":
        from phide.models.video_llava import load_video_llava

        return load_video_llava(model_dir, device=device, dtype=dtype)
    if kind == "EventChat_llama":
        from phide.models.eventgpt import load_eventgpt

        return load_eventgpt(model_dir, device=device, dtype=dtype, clip_dir=clip_dir, label=role)
    if kind in TEXT_TYPES:
        from phide.models.adapters import TextAdapter

        # The model first, as the multimodal loaders do: a config problem (which AutoTokenizer, reading
        # config.json too, would report as a tokenizer error) or weights that contradict the config
        # are named as such before the tokenizer loads.
        lm = load_llama(model_dir, device=device, dtype=dtype, label=role)
        return TextAdapter(lm, load_tokenizer(model_dir))
    raise PhideError(f"{model_dir}: unsupported model_type {kind!r} "
                     "(phide loads llama, video_llava and EventChat_llama checkpoints)")
