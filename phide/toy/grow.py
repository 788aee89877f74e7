"""Function-preserving growth of a trained decoder to more layers (model-growth / "stacking").

Why: the demo pair's language models are deep (32 layers) so that on a CPU their per-token cost
looks like a 7B model's on a GPU, but on 2 cores a 32-layer LM trains ~8x slower per step than a
4-layer one, and learning to read the frames takes thousands of steps. So the toy pair is trained
shallow and then grown: each trained layer is followed by copies of itself whose output
projections (`self_attn.o_proj`, `mlp.down_proj`) are zero. A zeroed layer adds nothing to the
residual stream, so the grown model computes exactly the trained function (tested), while every
layer still does its full attention and MLP work, which is what the engine's timings measure.
Fine-tuning after growth makes the new layers non-trivial.

Works in place on a checkpoint directory: the LM's layer keys (`model.layers.N.*`, with or without
Video-LLaVA's `language_model.` prefix; vision-tower layers are left alone) and the layer count in
config.json (top level or `text_config`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

_LM_LAYER = re.compile(r"^((?:language_model\.)?model\.layers\.)(\d+)\.(.+)$")
# The projections that write into the residual stream: zero them and the layer is an identity.
_RESIDUAL_WRITERS = ("self_attn.o_proj.weight", "self_attn.o_proj.bias", "mlp.down_proj.weight", "mlp.down_proj.bias")


def _layer_count_holder(cfg: dict) -> dict:
    if "num_hidden_layers" in cfg.get("text_config", {}):
        return cfg["text_config"]
    if "num_hidden_layers" in cfg:
        return cfg
    raise KeyError("config.json has no num_hidden_layers (top level or text_config)")


def grown_order(trained: int, layers: int) -> list[int]:
    """For each new layer, the trained layer it copies; a copy is an identity unless it is the
    first one of its source. Trained layers are spread evenly (layer i at i * layers // trained)."""
    if trained < 1 or layers < trained:
        raise ValueError(f"cannot grow {trained} layers to {layers}")
    starts = [i * layers // trained for i in range(trained)]
    return [max(i for i, s in enumerate(starts) if s <= j) for j in range(layers)]


def grow_decoder(model_dir: str | Path, layers: int) -> int:
    """Grow the checkpoint's LM to `layers` layers in place; returns the old layer count."""
    from safetensors.torch import load_file, save_file

    model_dir = Path(model_dir)
    if (model_dir / "model.safetensors.index.json").is_file():
        raise ValueError(f"{model_dir}: sharded checkpoints are not supported (the toy pair is one file)")
    cfg_path = model_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    holder = _layer_count_holder(cfg)
    trained = int(holder["num_hidden_layers"])
    order = grown_order(trained, layers)
    first = {src: order.index(src) for src in range(trained)}
    for f in sorted(model_dir.glob("*.safetensors")):
        state = load_file(str(f))
        by_layer: dict[int, dict[str, tuple[str, torch.Tensor]]] = {}
        out = {}
        for key, t in state.items():
            m = _LM_LAYER.match(key)
            if m is None:
                out[key] = t
            else:
                by_layer.setdefault(int(m.group(2)), {})[m.group(3)] = (m.group(1), t)
        if not by_layer:
            continue
        if sorted(by_layer) != list(range(trained)):
            raise ValueError(f"{f}: LM layers {sorted(by_layer)} do not match num_hidden_layers={trained}")
        for j, src in enumerate(order):
            for name, (prefix, t) in by_layer[src].items():
                identity = j != first[src] and name in _RESIDUAL_WRITERS
                out[f"{prefix}{j}.{name}"] = torch.zeros_like(t) if identity else t.clone()
        save_file(out, str(f), metadata={"format": "pt"})
    holder["num_hidden_layers"] = layers
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return trained
