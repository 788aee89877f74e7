"""The EAGLE-2 continuation head: one decoder layer that drafts from the target's own final
features (the EAGLE-3 head, fusing three of the target's layers, is phide.models.eagle3).

Both real language models are 7B, so after the hidden window the EventGPT draft costs as much
per token as the target. The head predicts the target's next final hidden state from
(input embedding of token x_{i+1}, target feature f_i) and reuses the target's frozen LM head, so
a draft step costs about one target layer.

  pair i:  concat(e_{i+1}, f_i) --fc--> one LLaMA decoder layer --> h_{i+1} ~ f_{i+1}
           logits(x_{i+2}) = target.lm_head(h_{i+1})

Files: `eagle_head.safetensors` (fc.*, layer.*) + `eagle_head.json` (the target LLaMA config it
was trained against, with num_hidden_layers = 1).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import nn

from phide.errors import PhideError
from phide.models.llama import DecoderLayer, KVCache, LlamaConfig, rope_cos_sin, rope_inv_freq

WEIGHTS = "eagle_head.safetensors"
CONFIG = "eagle_head.json"


class EagleHead(nn.Module):
    """The head contract EagleRunner and the trainer read (phide.models.eagle3.Eagle3Head keeps it too):
      kind          "eagle2" | "eagle3"
      capture       the target layers whose input states it reads (LlamaModel.forward(capture=)),
                    None: the target's final (post-norm) features
      forward       (embeds, feats, cache args) -> the state fed back to the next step [B,T,H]
      layer_inputs  (embeds, feats) -> (q/k/v input, residual): the step before attention
      finish        residual + attention -> the layer's output (the MLP half)
      logits        (state, target LM) -> fp32 logits over the target's vocabulary
    """

    kind = "eagle2"
    capture = None

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = dataclasses.replace(cfg, num_hidden_layers=1)
        self.fc = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=True)
        self.layer = DecoderLayer(self.cfg)
        self.register_buffer("inv_freq", rope_inv_freq(self.cfg), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.fc.weight.device

    def new_cache(self, max_len: int) -> KVCache:
        return KVCache(self.cfg, 1, max_len, self.fc.weight.dtype, self.device)

    @property
    def self_attn(self):
        return self.layer.self_attn

    def feature_state(self, feats: torch.Tensor) -> torch.Tensor:
        """What the step reads as its feature: the target's final feature, or the head's own output."""
        return feats

    def layer_inputs(self, embeds, feats) -> tuple[torch.Tensor, torch.Tensor]:
        """embeds, feats [B,T,H] -> (q/k/v input, residual) [B,T,H]: fc of both, then the norm."""
        x = self.fc(torch.cat([embeds, feats], dim=-1).to(self.fc.weight.dtype))
        return self.layer.input_layernorm(x), x

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer.mlp(self.layer.post_attention_layernorm(x))

    def forward(self, embeds, feats, *, positions, cache: KVCache, slots, attn_mask, kv_len) -> torch.Tensor:
        """embeds, feats [B,T,H] (input embedding of the token, target feature of the position
        before it) -> predicted features [B,T,H]. Cache/mask conventions as LlamaModel.forward."""
        u, x = self.layer_inputs(embeds, feats)
        cos, sin = rope_cos_sin(self.inv_freq, positions, x.dtype)
        return self.finish(x + self.layer.self_attn(u, cos, sin, cache.k[0], cache.v[0], slots, attn_mask, kv_len))

    def logits(self, hidden: torch.Tensor, lm) -> torch.Tensor:
        """The predicted feature through the target's own LM head (fp32, the target's vocabulary)."""
        return lm.logits(hidden)

    def forward_train(self, embeds, feats) -> torch.Tensor:
        """Causal forward over whole sequences without a cache (training). [B,T,H] -> [B,T,H]."""
        B, T, _ = embeds.shape
        cache = KVCache(self.cfg, B, T, self.fc.weight.dtype, self.device)
        pos = torch.arange(T, device=self.device).expand(B, T)
        mask = torch.ones(T, T, dtype=torch.bool, device=self.device).tril().expand(B, T, T)
        return self(embeds, feats, positions=pos, cache=cache, slots=pos, attn_mask=mask, kv_len=T)

    def save(self, out_dir: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
        (out / CONFIG).write_text(json.dumps(dataclasses.asdict(self.cfg), indent=2))


def has_eagle_head(model_dir: str | os.PathLike) -> bool:
    d = Path(model_dir)
    return (d / WEIGHTS).is_file() and (d / CONFIG).is_file()


def load_eagle_head(model_dir: str | os.PathLike, *, target_cfg: LlamaConfig | None = None,
                    device="cpu", dtype=torch.float32) -> EagleHead:
    """Load a head saved by `EagleHead.save`; checks it matches the target's width."""
    from safetensors.torch import load_file

    d = Path(model_dir)
    if not has_eagle_head(d):
        raise PhideError(f"{d} has no EAGLE head ({WEIGHTS} + {CONFIG})")
    try:
        cfg = LlamaConfig(**json.loads((d / CONFIG).read_text()))
    except (TypeError, ValueError) as exc:
        raise PhideError(f"{d / CONFIG} is malformed ({exc})") from None
    if target_cfg is not None and (cfg.hidden_size, cfg.vocab_size) != (target_cfg.hidden_size, target_cfg.vocab_size):
        raise PhideError(f"EAGLE head in {d} was trained for hidden {cfg.hidden_size} / vocab {cfg.vocab_size}, "
                         f"the target has {target_cfg.hidden_size} / {target_cfg.vocab_size}")
    with torch.device("meta"):
        head = EagleHead(cfg)
    state = load_file(str(d / WEIGHTS))
    missing = sorted(set(head.state_dict()) - set(state))
    if missing:
        raise PhideError(f"EAGLE head weights missing: {', '.join(missing[:6])}")
    head.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True)
    head.inv_freq = rope_inv_freq(head.cfg).to(device)
    return head.eval()
