"""The EAGLE-3 continuation head: fuses a low, a middle and a high layer of the target.

EAGLE-3 (arXiv 2503.01840) drafts from three of the target's residual streams instead of its
final feature, has its own final norm and LM head, and is trained on its own steps
(training-time test: phide.distill.ttt) with a token loss only.

  step 1:   g_i = [x_low, x_mid, x_high] at position i           [3H]  (the target's capture)
            s   = fc(g_i)                                         [H]   (no bias)
  step k>1: s   = the head's own previous output (pre-norm)       [H]   (fc skipped)
  layer:    u   = [input_layernorm(embed(x_{i+1})), hidden_norm(s)]  [2H] -> q/k/v
            y   = s + attn(u);  y = y + mlp(post_attention_layernorm(y))   (the state fed back)
  logits:   lm_head(norm(y)) over the draft vocabulary (Vd rows), placed at target ids
            arange(Vd) + d2t (the reduced-vocabulary map; identity when Vd = V).

The checkpoint layout is the one SGLang (`LlamaForCausalLMEagle3`) and vLLM load: `config.json`
(a LLaMA config with num_hidden_layers 1, vocab_size = the target's, draft_vocab_size) and
`model.safetensors` with `fc.weight`, `midlayer.*`, `norm.weight`, `lm_head.weight`, `d2t`,
`t2d` and no embeddings (the target's are used). vLLM speculators' `Eagle3Speculator` configs
(`transformer_layer_config`, `layers.0.*`) load too.

Captured layers: phide (like vLLM's top-level `eagle_aux_hidden_state_layer_ids`) names a layer by
the state ENTERING it (0 = the embeddings, L = the last layer's output before the final norm).
SGLang's nested `eagle_config.eagle_aux_hidden_state_layer_ids` names the layer whose OUTPUT is
taken, one less: both are written, each in its own convention.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import nn

from phide.errors import PhideError
from phide.models.llama import (MLP, Attention, KVCache, LlamaConfig, RMSNorm, lm_head_fp32, rope_cos_sin,
                                rope_inv_freq)

CONFIG, WEIGHTS = "config.json", "model.safetensors"
SGLANG_ARCH = "LlamaForCausalLMEagle3"
ARCH_NAMES = {SGLANG_ARCH, "Eagle3LlamaForCausalLM", "Eagle3Speculator", "LlamaForCausalLMEagle3"}
# speculators options that change the computation in ways phide does not implement
UNSUPPORTED_FLAGS = ("norm_before_fc", "fc_norm", "norm_output")


DEFAULT_DRAFT_VOCAB = 32000  # the head's LM head rows when not given: the target's vocabulary, capped (EAGLE-3's)


def default_capture(num_layers: int) -> tuple[int, ...]:
    """The layers EAGLE-3 fuses by default (the input of layers 2, L//2, L-3; SGLang, vLLM and
    EAGLE agree); very shallow targets get the embeddings, the middle and the last output."""
    if num_layers >= 6:
        return (2, num_layers // 2, num_layers - 3)
    return (0, num_layers // 2, num_layers)


class Eagle3Layer(nn.Module):
    """The head's decoder layer: q/k/v read [norm(embedding), norm(feature)] (2H)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.self_attn = Attention(cfg, in_features=2 * cfg.hidden_size)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hidden_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Eagle3Head(nn.Module):
    """The EAGLE-3 head (the contract of phide.models.eagle.EagleHead).

    cfg: the head layer's LLaMA config (num_hidden_layers 1, vocab_size = the target's V).
    capture: target layers fused, low to high (phide's convention: the state entering the layer).
    draft_vocab: Vd, rows of its own LM head; d2t [Vd] int64: draft id i is target id i + d2t[i].
    target_hidden: the target's width (the fused feature is len(capture) * target_hidden).
    norm_before_residual: the residual is hidden_norm(s) instead of s (a speculators option).
    """

    kind = "eagle3"

    def __init__(self, cfg: LlamaConfig, capture: tuple[int, ...], draft_vocab: int | None = None, *,
                 target_hidden: int | None = None, norm_before_residual: bool = False):
        super().__init__()
        self.cfg = dataclasses.replace(cfg, num_hidden_layers=1)
        H = cfg.hidden_size
        self.capture = tuple(int(i) for i in capture)
        self.draft_vocab = int(draft_vocab or cfg.vocab_size)
        self.target_hidden = int(target_hidden or H)
        self.norm_before_residual = bool(norm_before_residual)
        if len(self.capture) < 2:  # the fused width must differ from H: one layer would read as a fed-back state
            raise PhideError(f"an EAGLE-3 head fuses 2 or more target layers, got {list(self.capture)}")
        if not 1 <= self.draft_vocab <= cfg.vocab_size:
            raise PhideError(f"draft_vocab_size {self.draft_vocab} must be in 1..vocab_size ({cfg.vocab_size})")
        self.fc = nn.Linear(len(self.capture) * self.target_hidden, H, bias=False)
        self.midlayer = Eagle3Layer(self.cfg)
        self.norm = RMSNorm(H, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(H, self.draft_vocab, bias=False)
        self.register_buffer("d2t", torch.zeros(self.draft_vocab, dtype=torch.int64))
        t2d = torch.zeros(cfg.vocab_size, dtype=torch.bool)
        t2d[: self.draft_vocab] = True
        self.register_buffer("t2d", t2d)
        self.register_buffer("inv_freq", rope_inv_freq(self.cfg), persistent=False)
        self.register_buffer("draft_ids", torch.arange(self.draft_vocab), persistent=False)  # [Vd] target ids
        self.identity_vocab = self.draft_vocab == cfg.vocab_size  # a host flag: no device read per step

    def set_vocab_map(self, d2t: torch.Tensor, t2d: torch.Tensor) -> None:
        """Install the reduced vocabulary (`draft_vocab_map`): d2t [Vd] int64, t2d [V] bool."""
        ids = torch.arange(self.draft_vocab) + d2t.cpu().long()
        if bool((ids < 0).any() or (ids >= self.cfg.vocab_size).any()):
            raise PhideError("d2t maps draft ids outside the target's vocabulary")
        dev = self.fc.weight.device
        self.d2t = d2t.to(device=dev, dtype=torch.int64)
        self.t2d = t2d.to(device=dev, dtype=torch.bool)
        self.draft_ids = ids.to(dev)
        self.identity_vocab = self.draft_vocab == self.cfg.vocab_size and not bool(d2t.any())

    # ------------------------------------------------------------------ the head contract
    @property
    def device(self) -> torch.device:
        return self.fc.weight.device

    @property
    def self_attn(self):
        return self.midlayer.self_attn

    def new_cache(self, max_len: int) -> KVCache:
        return KVCache(self.cfg, 1, max_len, self.fc.weight.dtype, self.device)

    def feature_state(self, feats: torch.Tensor) -> torch.Tensor:
        """[.., 3H] the target's fused layers -> fc -> [.., H]; [.., H] (the head's own output) as is."""
        s = feats.to(self.fc.weight.dtype)
        return self.fc(s) if s.shape[-1] == self.fc.in_features else s

    def layer_inputs(self, embeds, feats) -> tuple[torch.Tensor, torch.Tensor]:
        """embeds [B,T,H], feats [B,T,3H] (the target's fused layers) or [B,T,H] (the head's own
        previous output) -> (q/k/v input [B,T,2H], residual [B,T,H])."""
        dtype = self.fc.weight.dtype
        s = self.feature_state(feats)
        layer = self.midlayer
        normed = layer.hidden_norm(s)
        u = torch.cat([layer.input_layernorm(embeds.to(dtype)), normed], dim=-1)
        return u, normed if self.norm_before_residual else s

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.midlayer.mlp(self.midlayer.post_attention_layernorm(x))

    def forward(self, embeds, feats, *, positions, cache: KVCache, slots, attn_mask, kv_len) -> torch.Tensor:
        """-> the pre-norm state [B,T,H] (the next step's feature). Cache/mask as LlamaModel.forward."""
        u, x = self.layer_inputs(embeds, feats)
        cos, sin = rope_cos_sin(self.inv_freq, positions, x.dtype)
        return self.finish(x + self.midlayer.self_attn(u, cos, sin, cache.k[0], cache.v[0], slots, attn_mask,
                                                       kv_len))

    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits over the draft vocabulary [..., Vd]."""
        return lm_head_fp32(self.norm(hidden), self.lm_head.weight)

    def logits(self, hidden: torch.Tensor, lm=None) -> torch.Tensor:
        """fp32 logits over the target's vocabulary [..., V]: ids outside the draft vocabulary get
        -inf (never proposed). `lm` (the target) is not read: the head has its own LM head."""
        d = self.draft_logits(hidden)
        if self.identity_vocab:
            return d
        out = d.new_full((*d.shape[:-1], self.cfg.vocab_size), float("-inf"))
        return out.index_copy_(-1, self.draft_ids, d)

    # ------------------------------------------------------------------ the checkpoint layout
    def config_dict(self, dtype: torch.dtype = torch.bfloat16, extra: dict | None = None) -> dict:
        """config.json in the layout SGLang and vLLM load (see the module docstring)."""
        c = self.cfg
        rope = dict(c.rope)
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        d = {
            "architectures": [SGLANG_ARCH],
            "model_type": "llama",
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim,
            "num_hidden_layers": 1,
            "hidden_act": c.hidden_act,
            "rms_norm_eps": c.rms_norm_eps,
            "max_position_embeddings": c.max_position_embeddings,
            "rope_theta": float(rope["rope_theta"]),
            "rope_scaling": None if scaling.get("rope_type", "default") == "default" else scaling,
            "vocab_size": c.vocab_size,
            "draft_vocab_size": self.draft_vocab,
            "tie_word_embeddings": False,
            "torch_dtype": str(dtype).removeprefix("torch."),
            "bos_token_id": c.bos_token_id,
            "eos_token_id": c.eos_token_id[0] if len(c.eos_token_id) == 1 else c.eos_token_id,
            # SGLang: the layer whose output is taken; vLLM (top level): the layer it enters.
            "eagle_config": {"eagle_aux_hidden_state_layer_ids": [i - 1 for i in self.capture],
                             "use_aux_hidden_state": True},
            "eagle_aux_hidden_state_layer_ids": list(self.capture),
        }
        if self.target_hidden != c.hidden_size:
            d["target_hidden_size"] = self.target_hidden
        if self.norm_before_residual:
            d["norm_before_residual"] = True
        if extra:
            d["phide"] = extra
        return d

    def save(self, out_dir: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16,
             extra: dict | None = None) -> None:
        """config.json + model.safetensors (floating weights in `dtype`; d2t int64, t2d bool)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().cpu()
                 for k, v in self.state_dict().items()}
        save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
        (out / CONFIG).write_text(json.dumps(self.config_dict(dtype, extra), indent=2))


# ------------------------------------------------------------------------------ reading
def is_eagle3_dir(model_dir: str | os.PathLike) -> bool:
    """An EAGLE-3 head directory: config.json naming an EAGLE-3 architecture or speculators type."""
    path = Path(model_dir) / CONFIG
    if not path.is_file():
        return False
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(raw, dict) and _is_eagle3(raw)


def _is_eagle3(raw: dict) -> bool:
    archs = raw.get("architectures") or []
    return (raw.get("speculators_model_type") == "eagle3" or bool(set(archs) & ARCH_NAMES)
            or "draft_vocab_size" in raw and "eagle_config" in raw)


def read_eagle3_config(model_dir: str | os.PathLike, target_cfg: LlamaConfig | None = None) -> dict:
    """Parse an EAGLE-3 config.json (SGLang / EAGLE / SpecForge, or vLLM speculators) into
    Eagle3Head's arguments: {"cfg", "capture", "draft_vocab", "target_hidden", "norm_before_residual"}.
    Without `target_cfg` the default captured layers need the target's depth: they are None then."""
    path = Path(model_dir) / CONFIG
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise PhideError(f"{model_dir} has no EAGLE-3 head ({CONFIG} + {WEIGHTS})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PhideError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or not _is_eagle3(raw):
        raise PhideError(f"{path} is not an EAGLE-3 head config")
    bad = [k for k in UNSUPPORTED_FLAGS if raw.get(k)]
    if bad:
        raise PhideError(f"{path}: EAGLE-3 option {bad[0]} is not supported by phide")
    layer = raw.get("transformer_layer_config", raw)  # speculators nests the LLaMA layer config
    if not isinstance(layer, dict):
        raise PhideError(f"{path}: transformer_layer_config must be a JSON object")
    layer = dict(layer)
    layer.setdefault("num_hidden_layers", 1)
    try:
        cfg = LlamaConfig.from_dict(layer)
    except PhideError as exc:
        raise PhideError(f"{path}: {exc}") from None
    if "num_hidden_layers" in layer and int(layer["num_hidden_layers"]) != 1:
        raise PhideError(f"{path}: an EAGLE-3 head has one decoder layer, the config says "
                         f"{layer['num_hidden_layers']}")
    capture = None
    nested = (raw.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if nested:  # SGLang: the output of layer id = the input of id + 1
        capture = tuple(int(i) + 1 for i in nested)
    elif raw.get("eagle_aux_hidden_state_layer_ids"):  # vLLM / speculators: the input of layer id
        capture = tuple(int(i) for i in raw["eagle_aux_hidden_state_layer_ids"])
    elif target_cfg is not None:
        capture = default_capture(target_cfg.num_hidden_layers)
    draft_vocab = int(raw.get("draft_vocab_size") or cfg.vocab_size)
    target_hidden = int(raw.get("target_hidden_size") or cfg.hidden_size)
    if target_cfg is not None:
        L = target_cfg.num_hidden_layers
        if capture is not None and any(not 0 <= i <= L for i in capture):
            raise PhideError(f"{path}: captured layers {list(capture)} are outside the target's 0..{L}")
        if (target_hidden, cfg.vocab_size) != (target_cfg.hidden_size, target_cfg.vocab_size):
            raise PhideError(f"the EAGLE-3 head in {model_dir} was trained for hidden {target_hidden} / vocab "
                             f"{cfg.vocab_size}, the target has {target_cfg.hidden_size} / {target_cfg.vocab_size}")
    return {"cfg": cfg, "capture": capture, "draft_vocab": draft_vocab, "target_hidden": target_hidden,
            "norm_before_residual": bool(raw.get("norm_before_residual", False))}


# speculators' names -> SGLang's (which are the module's)
_RENAMES = (("layers.0.", "midlayer."), ("model.layers.0.", "midlayer."), ("model.midlayer.", "midlayer."),
            ("model.fc.", "fc."), ("model.norm.", "norm."))
_IGNORED = ("embed_tokens.weight", "model.embed_tokens.weight", "verifier_lm_head.weight", "verifier_norm.weight")


def load_eagle3_head(model_dir: str | os.PathLike, *, target_cfg: LlamaConfig, device="cpu",
                     dtype=torch.float32) -> Eagle3Head:
    """Load an EAGLE-3 head in SGLang's or vLLM speculators' layout (safetensors only; a stored
    embedding is ignored: the head reads the target's)."""
    from phide.models.loading import load_state_dict

    args = read_eagle3_config(model_dir, target_cfg)
    with torch.device("meta"):
        head = Eagle3Head(args.pop("cfg"), args.pop("capture"), **args)
    state = {}
    for k, v in load_state_dict(model_dir).items():
        if k in _IGNORED:
            continue
        for old, new in _RENAMES:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        state[k] = v
    want = head.state_dict()
    if "t2d" not in state:  # SGLang skips t2d; it follows from d2t
        t2d = torch.zeros(head.cfg.vocab_size, dtype=torch.bool)
        if "d2t" in state:
            t2d[torch.arange(head.draft_vocab) + state["d2t"].long()] = True
        state["t2d"] = t2d
    state.setdefault("d2t", torch.zeros(head.draft_vocab, dtype=torch.int64))
    missing = sorted(set(want) - set(state))
    if missing:
        raise PhideError(f"EAGLE-3 head weights missing in {model_dir}: {', '.join(missing[:6])}")
    unknown = sorted(set(state) - set(want))
    if unknown:  # SGLang skips unknown keys silently; here they mean another architecture
        raise PhideError(f"EAGLE-3 head in {model_dir} has weights phide does not know: {', '.join(unknown[:6])}")
    tensors = {}
    for k, p in want.items():
        t = state[k]
        if tuple(t.shape) != tuple(p.shape):
            raise PhideError(f"EAGLE-3 weight {k} has shape {tuple(t.shape)}, the config implies {tuple(p.shape)}")
        tensors[k] = t.to(device=device, dtype=dtype) if p.is_floating_point() else t.to(device=device, dtype=p.dtype)
    head.load_state_dict(tensors, assign=True)
    head.inv_freq = rope_inv_freq(head.cfg).to(device)
    try:
        head.set_vocab_map(state["d2t"], state["t2d"])
    except PhideError as exc:
        raise PhideError(f"EAGLE-3 head in {model_dir}: {exc}") from None
    return head.eval()


# ------------------------------------------------------------------------------ the draft vocabulary
def draft_vocab_map(counts: torch.Tensor, draft_vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reduced vocabulary (EAGLE-3's `d2t` / `t2d`): the `draft_vocab` target ids most frequent
    in `counts` [V] (answer tokens of the training set), sorted; when fewer occur, the lowest
    unused ids fill it. -> (d2t [Vd] int64 offsets, t2d [V] bool)."""
    V = counts.shape[0]
    if not 1 <= draft_vocab <= V:
        raise PhideError(f"--draft-vocab {draft_vocab} must be in 1..{V}")
    order = torch.argsort(counts.to(torch.float64), descending=True, stable=True)
    seen = order[: min(draft_vocab, int((counts > 0).sum()))]
    chosen = torch.zeros(V, dtype=torch.bool)
    chosen[seen] = True
    if int(chosen.sum()) < draft_vocab:
        fill = (~chosen).nonzero().flatten()[: draft_vocab - int(chosen.sum())]
        chosen[fill] = True
    ids = chosen.nonzero().flatten()
    return ids - torch.arange(draft_vocab), chosen
