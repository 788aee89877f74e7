"""Pick the frontend for a checkpoint directory by its config's model_type.

llama (LlamaForCausalLM) -> TextFrontend; video_llava -> the Video-LLaVA target frontend;
EventChat_llama -> the EventGPT draft frontend. Multimodal frontends import lazily so a text-only
install never loads vision code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from phide.errors import PhideError
from phide.models.loading import llama_config, load_llama, load_tokenizer, read_config

TEXT_TYPES = ("llama", "mistral")


def model_type(model_dir) -> str:
    return str(read_config(model_dir).get("model_type", "llama"))


def load_frontend(model_dir, *, role: str, device="cpu", dtype=torch.float32, clip_dir=None):
    """Load a checkpoint directory as a frontend (role 'target' or 'draft' labels progress;
    clip_dir overrides an EventGPT checkpoint's mm_visual_tower path)."""
    kind = model_type(model_dir)
    if kind == "video_llava":
        from phide.models.video_llava import load_video_llava

        return load_video_llava(model_dir, device=device, dtype=dtype)
    if kind == "EventChat_llama":
        from phide.models.eventgpt import load_eventgpt

        return load_eventgpt(model_dir, device=device, dtype=dtype, clip_dir=clip_dir, label=role)
    if kind in TEXT_TYPES:
        from phide.models.frontends import TextFrontend

        # The config first: a config problem (which AutoTokenizer, reading config.json too, would
        # report as a tokenizer error) is named as such. Then the tokenizer, so a broken one does
        # not wait for the weights; weights that contradict the config are named as they load.
        llama_config(read_config(model_dir), str(Path(model_dir) / "config.json"))
        tokenizer = load_tokenizer(model_dir)
        return TextFrontend(load_llama(model_dir, device=device, dtype=dtype, label=role), tokenizer)
    raise PhideError(f"{model_dir}: unsupported model_type {kind!r} "
                     "(phide loads llama, video_llava and EventChat_llama checkpoints)")
