"""phide's own LLaMA decoder: static KV cache, explicit positions and 4-D masks.

One forward takes (tokens or embeddings, positions, cache slots, boolean attention mask), so the
same code runs a prefill, a one-token decode step, a draft-tree expansion and a whole-tree
verification. A tree verification may instead describe its tree (`TreeAttention`): attention then
runs through `ops.tree_attention` (a Triton kernel, or its torch twin, which computes exactly what
the dense mask does). Numerics follow transformers' LlamaForCausalLM (fp32 RoPE tables, fp32
RMSNorm).

Shapes: B batch, T new tokens, S cache slots, L layers, H query heads, Hkv kv heads, D head dim.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from phide import ops
from phide.errors import PhideError
from phide.ops.reference.rope import rotate_half

_ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    rope: dict = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    bos_token_id: int | None = 1
    eos_token_id: list[int] = field(default_factory=lambda: [2])

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        """Parse an HF LLaMA config dict (transformers 4.x `rope_theta`/`rope_scaling` or 5.x
        `rope_parameters`)."""
        try:
            heads = _size(d, "num_attention_heads")
            hidden = _size(d, "hidden_size")
            if not d.get("head_dim") and hidden % heads:  # an explicit head_dim may differ from hidden / heads
                raise PhideError(f"num_attention_heads={heads} does not divide hidden_size={hidden} "
                                 "(and no head_dim is given)")
            rope = dict(d.get("rope_parameters") or {})
            if not rope:
                rope = dict(d.get("rope_scaling") or {})
                rope.setdefault("rope_type", rope.pop("type", "default"))
                rope["rope_theta"] = float(d.get("rope_theta", 10000.0))
            rope.setdefault("rope_type", "default")
            rope.setdefault("rope_theta", float(d.get("rope_theta", 10000.0)))
            eos = d.get("eos_token_id", 2)
            eos_ids = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
            cfg = cls(
                vocab_size=_size(d, "vocab_size"),
                hidden_size=hidden,
                intermediate_size=_size(d, "intermediate_size"),
                num_hidden_layers=_size(d, "num_hidden_layers"),
                num_attention_heads=heads,
                num_key_value_heads=_size(d, "num_key_value_heads", default=heads),
                head_dim=_size(d, "head_dim", default=hidden // heads),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                hidden_act=str(d.get("hidden_act", "silu")),
                max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
                attention_bias=bool(d.get("attention_bias", False)),
                mlp_bias=bool(d.get("mlp_bias", False)),
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                rope=rope,
                bos_token_id=d.get("bos_token_id", 1),
                eos_token_id=eos_ids,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PhideError(f"config is not a LLaMA config ({type(exc).__name__}: {exc})") from None
        if cfg.hidden_act not in _ACTIVATIONS:
            raise PhideError(f"unsupported hidden_act {cfg.hidden_act!r}")
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise PhideError("num_attention_heads must be a multiple of num_key_value_heads")
        rope_inv_freq(cfg)  # fail early on an unsupported RoPE type
        return cfg


def _size(d: dict, name: str, default: int | None = None) -> int:
    """d[name] as a positive integer; unset (or 0 / null, as transformers reads them) takes
    `default` when there is one. int() alone would truncate 2.5, take "64" and let 0 or -4 through
    to a division by zero or empty layers later."""
    v = d.get(name)
    if default is not None and not v:
        return default
    if name not in d:
        raise KeyError(name)
    integral = isinstance(v, numbers.Integral) or (isinstance(v, float) and v.is_integer())
    if isinstance(v, bool) or not integral or v < 1:
        raise PhideError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def rope_inv_freq(cfg: LlamaConfig) -> torch.Tensor:
    """Inverse frequencies [D/2] in fp32 for the RoPE types phide supports."""
    rope = cfg.rope
    dim = int(cfg.head_dim * float(rope.get("partial_rotary_factor", 1.0)))
    base = float(rope["rope_theta"])
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / float(rope["factor"])
    if kind == "llama3":
        factor = float(rope["factor"])
        low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
        old_ctx = float(rope["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise PhideError(f"unsupported RoPE type {kind!r} (phide supports default, linear, llama3)")


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [B,T] -> cos, sin [B,T,D] (fp32 tables cast to the model dtype, like HF)."""
    freqs = positions[..., None].float() * inv_freq.to(positions.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class KVCache:
    """Static per-request KV cache: k, v [L, B, Hkv, S, D]. The caller tracks valid lengths."""

    def __init__(self, cfg: LlamaConfig, batch: int, max_len: int, dtype, device):
        shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def max_len(self) -> int:
        return self.k.shape[3]


@dataclass
class TreeAttention:
    """A tree-verify batch, described instead of masked: pass it as `LlamaModel.forward(tree=...)`
    and attention runs through `ops.tree_attention` (no dense [B, T, kv_len] mask is read).
    phide.speculation.tree.VerifyLayout.tree_attention builds it.

    prefix_len [B] int64: committed cache rows, visible to every node.
    tree_start [B] int64: cache row of tree node 0; the forward's slots must be tree_start + j.
    ancestors [B, T] int64: bit j set iff node j is the node itself or one of its ancestors
        (so T <= 64; larger trees keep the dense mask).
    n_nodes [B] int64: real nodes per request; nodes past it are padding (attention output 0).
    Two facts the caller knows on the host, which spare the torch twin's masks (the kernel reads
    neither): padded = some request may hold padding nodes; sees_every_row = every node sees every
    row of [0, kv_len) (one node on top of its prefix: a decode step).
    """

    prefix_len: torch.Tensor
    tree_start: torch.Tensor
    ancestors: torch.Tensor
    n_nodes: torch.Tensor
    # Set by for_layers where attention runs the torch twin: its dense [B, N, kv_len] mask and
    # the real-node mask, built once per forward instead of once per layer.
    padded: bool = True
    sees_every_row: bool = False
    visibility: tuple[torch.Tensor | None, torch.Tensor | None] | None = None

    def for_layers(self, kv_len: int, like: torch.Tensor, head_dim: int) -> "TreeAttention":
        """This tree as every layer of one forward reads it (`like`: a tensor of the forward's
        device and dtype): with the twin's masks precomputed when the twin is what runs."""
        if self.visibility is not None or ops.tree_attention_uses_kernel(like.device.type, like.dtype, head_dim):
            return self
        from dataclasses import replace

        if self.sees_every_row and not self.padded:
            return replace(self, visibility=(None, None))
        mask, padding = ops.tree_attention_masks(self, kv_len)
        return replace(self, visibility=(None if self.sees_every_row else mask, padding if self.padded else None))


# attn_mask value for a prefill of cache rows 0..T-1 (see LlamaModel.forward): no mask tensor.
CAUSAL = "causal"


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor | None,
                    kernels: ops.DecoderOps | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(residual + x), residual + x): the residual add before the norm, fused (residual
        None: x is the stream itself). kernels: the forward's ops.decoder_ops."""
        if residual is None:
            return (kernels.rms_norm if kernels else ops.rms_norm)(x, self.weight, self.eps), x
        return (kernels.add_rms_norm if kernels else ops.add_rms_norm)(x, residual, self.weight, self.eps)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B,heads,T,D] rotated by cos/sin [B,T,D] (rope_cos_sin)."""
    cos_, sin_ = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos_ + rotate_half(x) * sin_


def _fusable(*linears: nn.Linear) -> bool:
    """Plain dense linears on one device and dtype (not quantized, not on meta): their weights can
    be one GEMM's."""
    ws = [m.weight for m in linears]
    return (all(type(m) is nn.Linear and type(m.weight) is nn.Parameter for m in linears)
            and len({(w.device, w.dtype) for w in ws}) == 1 and ws[0].device.type != "meta")


def _fuse_weights(linears: tuple[nn.Linear, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the linears' weights (and biases) along the output dim into one tensor and make
    each linear's parameters views of it: one GEMM reads them all, checkpoint names and
    state_dict() stay as they were, and no weight is held twice."""
    fused = {}
    for name in ("weight", "bias"):
        parts = [getattr(m, name) for m in linears]
        if parts[0] is None:
            fused[name] = None
            continue
        whole = torch.cat([p.detach() for p in parts], dim=0)
        at = 0
        for m, p in zip(linears, parts):
            rows = p.shape[0]
            setattr(m, name, nn.Parameter(whole[at:at + rows], requires_grad=p.requires_grad))
            at += rows
        fused[name] = whole
    return fused["weight"], fused["bias"]


class _Fused:
    """The fused weight of several linears (their parameters are views of it)."""

    def __init__(self, linears: tuple[nn.Linear, ...]):
        self.first = linears[0]
        self.weight, self.bias = _fuse_weights(linears)

    def usable(self) -> bool:
        """Where no gradient is wanted (the engine's inference forwards); a model being trained
        runs its separate linears, whose parameters autograd sees."""
        return not torch.is_grad_enabled() or not self.first.weight.requires_grad

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _FusesLinears(nn.Module):
    """A module whose linears named `_FUSED` may run as one GEMM (`fuse`). Whatever replaces their
    parameters (.to(), a load with assign=True) makes them fused again, so the fused weight is
    never stale."""

    _FUSED: tuple[str, ...] = ()

    def __init__(self):
        super().__init__()
        self.fused: _Fused | None = None
        self.register_load_state_dict_post_hook(lambda module, _: module._refuse())

    def fuse(self) -> None:
        linears = tuple(getattr(self, n) for n in self._FUSED)
        if self.fused is None and _fusable(*linears):
            self.fused = _Fused(linears)

    def _refuse(self) -> None:
        if self.fused is not None:
            self.fused = None
            self.fuse()

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._refuse()
        return out


class Attention(_FusesLinears):
    _FUSED = ("q_proj", "k_proj", "v_proj")  # fuse(): q, k and v in one GEMM

    def __init__(self, cfg: LlamaConfig, in_features: int | None = None):
        """in_features: the width q/k/v read (default hidden_size; an EAGLE-3 head's layer reads
        [token embedding, feature], 2 * hidden_size)."""
        super().__init__()
        self.h, self.hkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        bias = cfg.attention_bias
        width = in_features or cfg.hidden_size
        self.q_proj = nn.Linear(width, self.h * self.d, bias=bias)
        self.k_proj = nn.Linear(width, self.hkv * self.d, bias=bias)
        self.v_proj = nn.Linear(width, self.hkv * self.d, bias=bias)
        self.o_proj = nn.Linear(self.h * self.d, cfg.hidden_size, bias=bias)

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fused
        if fused is not None and fused.usable():
            return fused(x)
        return torch.cat((self.q_proj(x), self.k_proj(x), self.v_proj(x)), dim=-1)

    def forward(self, x, cos, sin, k_cache, v_cache, slots, attn_mask, kv_len, tree=None, kernels=None):
        """x [B,T,hidden]; cos/sin [B,T,D]; k_cache/v_cache [B,Hkv,S,D] (one layer, written in
        place at `slots` [B,T]); attn_mask [B,T,kv_len] bool (True = attend), not read when
        `tree` (a TreeAttention over rows [0, kv_len)) is given. kernels: the forward's
        ops.decoder_ops (None: chosen here)."""
        B, T, _ = x.shape
        k = kernels or ops.decoder_ops(x, self.d)
        # one GEMM for q, k, v; one op rotates q and k and writes k and v into the cache
        q = k.rope_kv_write(self._qkv(x), cos, sin, k_cache, v_cache, slots, self.h, self.hkv)
        keys, values = k_cache[:, :, :kv_len], v_cache[:, :, :kv_len]
        if attn_mask is CAUSAL:  # a prefill from row 0: the fused causal path, no mask tensor
            out = ops.causal_attention(q, keys, values)
        elif tree is not None:
            out = k.tree_attention(q, keys, values, tree.prefix_len, tree.tree_start, tree.ancestors,
                                   tree.n_nodes, visibility=tree.visibility)
        else:
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=attn_mask.unsqueeze(1), enable_gqa=self.h != self.hkv
            )
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.h * self.d))


class MLP(_FusesLinears):
    _FUSED = ("gate_proj", "up_proj")  # fuse(): gate and up in one GEMM

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        bias = cfg.mlp_bias
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=bias)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def forward(self, x):
        fused = self.fused
        if fused is not None and fused.usable():
            gate, up = fused(x).chunk(2, dim=-1)
            return self.down_proj(self.act(gate) * up)
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, residual, cos, sin, k_cache, v_cache, slots, attn_mask, kv_len, tree=None, kernels=None):
        """x: the previous layer's MLP output, residual: the stream before it (None for the first
        layer: x is the stream). The residual adds are fused into the norms after them, so this
        returns (the MLP's output, the stream after attention, the stream entering this layer):
        the stream after the layer is the sum of the first two. kernels: ops.decoder_ops."""
        h, entering = self.input_layernorm.add_forward(x, residual, kernels)
        attn = self.self_attn(h, cos, sin, k_cache, v_cache, slots, attn_mask, kv_len, tree, kernels)
        h, stream = self.post_attention_layernorm.add_forward(attn, entering, kernels)
        return self.mlp(h), stream, entering


class LlamaModel(nn.Module):
    """Decoder + LM head. Parameter names mirror HF (`model.*` stripped) for direct loading."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache(self.cfg, batch, max_len, self.dtype, self.device)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        positions: torch.Tensor,
        cache: KVCache,
        slots: torch.Tensor,
        attn_mask: torch.Tensor | None,
        kv_len: int,
        tree: TreeAttention | None = None,
        capture: tuple[int, ...] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run the decoder and return final-norm hidden states [B,T,hidden].

        input_ids [B,T] int64 or inputs_embeds [B,T,hidden]; positions [B,T] (RoPE positions,
        tree depth for tree nodes); slots [B,T] cache rows to write; attn_mask [B,T,kv_len] bool
        over cache rows [0, kv_len) (must include each token's own slot), or CAUSAL for a prefill
        of rows 0..T-1 (T == kv_len: SDPA's fused causal path, or flash-attn, instead of a dense
        mask). `tree`: a tree-verify batch described by a TreeAttention over rows [0, kv_len);
        attn_mask is then not read (pass None).
        capture: layer ids whose INPUT residual stream to return too (i: the state entering layer
        i, before its norm; L: the last layer's output before the final norm; the convention of
        vLLM's `eagle_aux_hidden_state_layer_ids`): then (hidden, aux [B,T,len(capture)*hidden]),
        the features an EAGLE-3 head fuses.
        """
        if attn_mask is None and tree is None:
            raise ValueError("LlamaModel.forward needs attn_mask or tree")
        if attn_mask is CAUSAL and kv_len != positions.shape[-1]:
            raise ValueError("a CAUSAL forward covers cache rows 0..T-1: kv_len must equal T")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds.to(self.dtype)
        # Everything that depends only on positions or the tree, built once for all layers.
        cos, sin = rope_cos_sin(self.inv_freq, positions, x.dtype)
        if tree is not None:
            tree = tree.for_layers(kv_len, x, self.cfg.head_dim)
        kernels = ops.decoder_ops(x, self.cfg.head_dim)
        taken: dict[int, torch.Tensor] = {}
        residual = None
        for i, layer in enumerate(self.layers):
            x, residual, entering = layer(x, residual, cos, sin, cache.k[i], cache.v[i], slots, attn_mask, kv_len,
                                          tree, kernels)
            if capture and i in capture:
                taken[i] = entering
        hidden, stream = self.norm.add_forward(x, residual, kernels)
        if not capture:
            return hidden
        taken[len(self.layers)] = stream
        return hidden, torch.cat([taken[i] for i in capture], dim=-1)

    def fuse_projections(self) -> "LlamaModel":
        """q/k/v and gate/up of every layer as one GEMM each (their weights concatenated in place,
        the checkpoint names kept as views). Idempotent; quantized layers stay as they are."""
        for layer in self.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()
        return self

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits [..., V] (see `lm_head_fp32`)."""
        return lm_head_fp32(hidden, self.lm_head.weight, self.lm_head.bias)


def lm_head_fp32(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """hidden [..., H] @ weight[V, H].T in fp32. With half-precision weights on a GPU the GEMM
    writes its fp32 accumulator (`out_dtype`) instead of rounding the logits to bf16 first, which
    would merge near-ties (and the argmax among them) differently per GEMM shape; elsewhere the
    product is computed in the weight's dtype and upcast."""
    if weight.dtype in (torch.float16, torch.bfloat16) and weight.device.type in ("cuda", "meta"):
        out = torch.mm(hidden.reshape(-1, hidden.shape[-1]).to(weight.dtype), weight.t(), out_dtype=torch.float32)
        if bias is not None:
            out = out + bias.float()
        return out.view(*hidden.shape[:-1], weight.shape[0])
    return F.linear(hidden.to(weight.dtype), weight, bias).float()
