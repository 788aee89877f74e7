"""The memory planner: what each way of placing the pair needs on a GPU, from config.json alone.

Speculation guarantees that the draft's precision only moves acceptance, never the answer, so
the planner quantizes the draft first and keeps the target exact; a quantized target is a plan of
its own, said out loud (its answer is the quantized model's). For each plan it prices, in bytes:

  weights   per component (LM, vision tower, projector, event adaptor, EAGLE head, draft adapter),
            each quantized linear as its library stores it (phide.models.quant);
  KV cache  the rows the engine allocates (phide.engine.*_cache_rows) for a prompt with a short
            question, the answer and the largest tree (the target's: the static verify's cache,
            phide.engine.target_graph_rows, and its graphs' logits buffers);
  workspace the activations of the longest prefill (one decoder layer's worth at a time);
  context   the CUDA context and library workspaces (CUDA_CONTEXT_GIB, a stated constant).
A plan fits when it needs at most 95% of the card (HEADROOM: allocator fragmentation and what
the estimate leaves out).

Sizes are GiB (2**30 bytes): a "24 GB" card reports 24564 MiB. The speed of each plan is a
projection (SPEED_SOURCES): the planner's cost model with an H100 roofline (or a calibration),
each model's prefill and decode step scaled by published figures for its weight format.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from phide.schedules import TARGET_ONLY
from phide.engine import SpecConfig, draft_cache_rows, head_cache_rows, target_cache_rows, target_graph_rows
from phide.speculation.static_verify import BUCKETS
from phide.errors import PhideError
from phide.models import quant
from phide.models.llama import LlamaConfig
from phide.models.loading import llama_config, read_config

GIB = 2 ** 30
CUDA_CONTEXT_GIB = 0.5  # CUDA context + cuBLAS/cuDNN workspaces on a recent driver (stated, not measured here)
HEADROOM = 0.05         # a plan fits in 95% of the card: allocator fragmentation and what the estimate leaves out
TEXT_TOKENS = {"target": 20, "draft": 60}  # prompt text around the visual tokens, a short question
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}

# Projection of each weight format's cost, relative to the unquantized model (batch 1, GPU).
# decode: one memory-bound step; prefill: a compute-bound pass (weights dequantized per layer);
# acceptance: the share of the unquantized draft's accepted tokens a quantized draft keeps.
DECODE_TIME = {"none": 1.0, "int8": 95.64 / 153.03, "nf4": 0.5, "int4": 0.5}
PREFILL_TIME = {"none": 1.0, "int8": 1.15, "nf4": 1.3, "int4": 1.3}
ACCEPTANCE = {"none": 1.0, "int8": 1.0, "nf4": 0.9, "int4": 0.9}
SPEED_SOURCES = (
    "decode: torchao quantization README, A100-80GB, Llama-3-8B: bf16 95.64 tok/s, int8 weight-only 153.03 "
    "tok/s; 4-bit taken as 2x bf16 (bitsandbytes 0.40.0 release notes: batch-1 4-bit matmuls 3.4-4x faster "
    "than 16-bit at K >= 4096; the rest of a step does not shrink). prefill: dequantizing per layer assumed "
    "+15% (int8) / +30% (4-bit), not measured. acceptance: int8 keeps the model's perplexity (torchao: Llama "
    "3.1 8B 7.33 -> 7.34), 4-bit loses some (int4wo-128 7.33 -> 8.25): assumed 100% / 90% of the bf16 "
    "draft's. All projections; the toy pair's measured figures (CPU) are in README, Memory plans.")


# ----------------------------------------------------------------------------- byte arithmetic
def linear_bytes(n_out: int, n_in: int, scheme: str, dtype_bytes: int, bias: bool = False) -> int:
    """Bytes of one [n_out, n_in] linear's weight (and bias) in `scheme`, as the library stores it."""
    n = n_out * n_in
    b = n_out * dtype_bytes if bias else 0
    if scheme == "none":
        return n * dtype_bytes + b
    if scheme == "int8":  # torchao Int8Tensor: int8 data, fp32 scale + int8 zero point per row
        return n + n_out * 5 + b
    if scheme == "int4":  # torchao tile-packed int4 of the weight padded to [8k, 1024k]: 2 per byte,
        # a bf16 (scale, zero) per group of 128
        k_in, k_out = -(-n_in // 1024) * 1024, -(-n_out // 8) * 8
        return k_out * k_in // 2 + k_in // quant.INT4_GROUP * k_out * 4 + b
    if scheme == "nf4":  # bitsandbytes NF4, double-quantized: uint8 absmax per block of 64, fp32 per 256 blocks
        blocks = math.ceil(n / quant.NF4_BLOCK)
        nested = math.ceil(blocks / quant.NF4_NESTED_BLOCK)
        # + the NF4 codebook (16 fp32), the nested absmaxes' dynamic map (256 fp32) and an offset
        return (n + 1) // 2 + blocks + nested * 4 + 16 * 4 + 256 * 4 + 4 + b
    raise PhideError(f"unknown weight format {scheme!r}")


def decoder_layer_bytes(cfg: LlamaConfig, scheme: str, dtype_bytes: int) -> int:
    """One LLaMA decoder layer: q/k/v/o and gate/up/down in `scheme`, two RMSNorms in the dtype."""
    H, I = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    ab, mb = cfg.attention_bias, cfg.mlp_bias
    return (linear_bytes(q, H, scheme, dtype_bytes, ab) + 2 * linear_bytes(kv, H, scheme, dtype_bytes, ab)
            + linear_bytes(H, q, scheme, dtype_bytes, ab)
            + 2 * linear_bytes(I, H, scheme, dtype_bytes, mb) + linear_bytes(H, I, scheme, dtype_bytes, mb)
            + 2 * H * dtype_bytes)


def lm_bytes(cfg: LlamaConfig, scheme: str, dtype_bytes: int) -> int:
    """A LLaMA LM: the decoder layers in `scheme`; embeddings, final norm and LM head in the dtype."""
    H, V = cfg.hidden_size, cfg.vocab_size
    head = 0 if cfg.tie_word_embeddings else V * H
    return cfg.num_hidden_layers * decoder_layer_bytes(cfg, scheme, dtype_bytes) + (V * H + H + head) * dtype_bytes


def clip_tower_params(vcfg) -> int:
    """Parameters of a transformers CLIPVisionModel (embeddings, pre/post layernorm, encoder)."""
    h, i, c, p = vcfg.hidden_size, vcfg.intermediate_size, vcfg.num_channels, vcfg.patch_size
    patches = (vcfg.image_size // p) ** 2
    embeddings = c * p * p * h + h + (patches + 1) * h
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h
    return embeddings + 2 * h + vcfg.num_hidden_layers * layer + 2 * h


def mlp_projector_params(n_in: int, hidden: int, bias: bool = True) -> int:
    """Linear(n_in -> hidden) -> act -> Linear(hidden -> hidden), the projector both models use."""
    return n_in * hidden + hidden * hidden + (2 * hidden if bias else 0)


def eagle_head_params(cfg: LlamaConfig) -> int:
    """The EAGLE-2 head: fc(2H -> H, bias) and one decoder layer (it shares the target's embeddings and LM head)."""
    H = cfg.hidden_size
    return 2 * H * H + H + decoder_layer_bytes(cfg, "none", 1)


def eagle3_head_params(cfg: LlamaConfig, n_capture: int, draft_vocab: int, target_hidden: int | None = None) -> int:
    """The EAGLE-3 head: fc(n_capture * H_target -> H, no bias), one decoder layer whose q/k/v read
    2H, a third RMSNorm (hidden_norm), the final norm and its own LM head (Vd x H); the d2t/t2d
    maps are buffers (priced in head_bytes). The embeddings are the target's."""
    H, I = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    ab = (q + 2 * kv + H) if cfg.attention_bias else 0
    mb = (2 * I + H) if cfg.mlp_bias else 0
    layer = 2 * H * (q + 2 * kv) + q * H + 3 * H * I + ab + mb + 3 * H
    return n_capture * (target_hidden or H) * H + layer + H + draft_vocab * H


@dataclass(frozen=True)
class HeadShape:
    """A continuation head as its config describes it."""

    kind: str                  # "eagle2" | "eagle3"
    cfg: LlamaConfig           # its decoder layer
    n_capture: int = 0         # EAGLE-3: target layers fused
    draft_vocab: int = 0       # EAGLE-3: rows of its own LM head

    def params(self) -> int:
        if self.kind == "eagle3":
            return eagle3_head_params(self.cfg, self.n_capture, self.draft_vocab)
        return eagle_head_params(self.cfg)

    def bytes(self, dtype_bytes: int) -> int:
        """Weights in the dtype, plus EAGLE-3's vocabulary maps (d2t int64 [Vd], t2d bool [V])."""
        maps = 8 * self.draft_vocab + self.cfg.vocab_size if self.kind == "eagle3" else 0
        return self.params() * dtype_bytes + maps

    def feature_width(self, target: LlamaConfig) -> int:
        """What the head reads per target position: the final feature (H) or the fused layers."""
        return target.hidden_size * (self.n_capture if self.kind == "eagle3" else 1)


def kv_bytes_per_row(cfg: LlamaConfig, dtype_bytes: int, layers: int | None = None) -> int:
    """K and V of one cache row across the layers."""
    return 2 * (layers or cfg.num_hidden_layers) * cfg.num_key_value_heads * cfg.head_dim * dtype_bytes


def prefill_workspace_bytes(cfg: LlamaConfig, tokens: int, dtype_bytes: int) -> int:
    """Activations alive in the largest step of a prefill of `tokens`: the residual stream, the
    normed copy and q/k/v/attention out (~6 rows of H), the MLP's gate, up and product (3 of I),
    the fp32 RMSNorm temporaries (2 of H in fp32); attention itself is fused (no T x T scores)."""
    H, I = cfg.hidden_size, cfg.intermediate_size
    return tokens * ((6 * H + 3 * I) * dtype_bytes + 2 * H * 4)


# ------------------------------------------------------------------------------- the models
@dataclass
class ModelShape:
    """What the planner reads from one checkpoint directory's config.json."""

    kind: str                   # video_llava | EventChat_llama | llama
    lm: LlamaConfig
    prompt_tokens: int          # visual tokens + a short question
    other_params: dict[str, int] = field(default_factory=dict)  # vision tower, projector, adaptor


def model_shape(model_dir, role: str, clip_dir=None) -> ModelShape:
    """The shape of a checkpoint (role 'target' or 'draft'), from its config files only."""
    raw = read_config(model_dir)
    kind = str(raw.get("model_type", "llama"))
    where = str(Path(model_dir) / "config.json")
    text = TEXT_TOKENS[role]
    if kind == "video_llava":
        from phide.models.video_llava import parse_config, text_config, tower_config, visual_token_count

        vl = parse_config(raw)
        cfg = text_config(vl, where)
        vcfg, layers = tower_config(vl)
        other = {"vision tower": clip_tower_params(vcfg),
                 "projector": mlp_projector_params(vl.vision_config.hidden_size * len(layers), cfg.hidden_size,
                                                   getattr(vl, "multimodal_projector_bias", True))}
        return ModelShape(kind, cfg, visual_token_count(raw) + text, other)
    if kind == "EventChat_llama":
        from phide.models.eventgpt import clip_vision_config, resolve_clip_dir, visual_token_count

        cfg = llama_config(raw, where)
        clip = resolve_clip_dir(Path(model_dir), raw, clip_dir, required=False)
        vcfg = clip_vision_config(clip) if clip is not None else eventgpt_tower_config()
        other = {"vision tower": clip_tower_params(vcfg),
                 "projector": mlp_projector_params(vcfg.hidden_size, cfg.hidden_size),
                 "event adaptor": cfg.hidden_size * cfg.hidden_size + cfg.hidden_size}
        return ModelShape(kind, cfg, visual_token_count(vcfg) + text, other)
    return ModelShape(kind, llama_config(raw, where), text)


def eventgpt_tower_config():
    """EventGPT's tower, CLIP ViT-L/14-336 (openai/clip-vit-large-patch14-336), for a checkpoint
    whose CLIP directory is not on this machine (its weights then sit in the checkpoint)."""
    from transformers import CLIPVisionConfig

    from phide.models.eventgpt import REAL_IMAGE_SIZE, REAL_PATCH_SIZE

    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=REAL_IMAGE_SIZE, patch_size=REAL_PATCH_SIZE)


def _json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise PhideError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(d, dict):
        raise PhideError(f"{path} must hold a JSON object")
    return d


def head_config(head_dir) -> HeadShape | None:
    """The head's shape from its config (EAGLE-2 eagle_head.json or EAGLE-3 config.json; see
    phide.models.heads), or None when the directory has none."""
    from phide.models.eagle import CONFIG
    from phide.models.eagle3 import is_eagle3_dir, read_eagle3_config

    if head_dir is None:
        return None
    if is_eagle3_dir(head_dir):
        a = read_eagle3_config(head_dir)
        return HeadShape("eagle3", a["cfg"], len(a["capture"] or (0, 0, 0)), a["draft_vocab"])
    d = _json(Path(head_dir) / CONFIG)
    if d is None:
        return None
    try:
        return HeadShape("eagle2", LlamaConfig(**d))
    except TypeError as exc:
        raise PhideError(f"{Path(head_dir) / CONFIG} is malformed ({exc})") from None


def adapter_params(adapter_dir) -> int:
    """The draft adapter's two low-rank matrices (draft_adapter.json), 0 when there is none."""
    from phide.models.draft_adapter import CONFIG

    d = _json(Path(adapter_dir) / CONFIG) if adapter_dir is not None else None
    if d is None:
        return 0
    try:
        return 2 * int(d["hidden_size"]) * int(d["rank"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PhideError(f"{Path(adapter_dir) / CONFIG}: not a draft adapter config ({exc})") from None


@dataclass
class PairShape:
    target: ModelShape
    draft: ModelShape | None
    head: HeadShape | None
    adapter_params: int
    cross_vocab: bool

    @classmethod
    def read(cls, target_dir, draft_dir=None, *, head_dir="auto", adapter_dir="auto", clip_dir=None) -> "PairShape":
        """head_dir / adapter_dir "auto": the target's / draft's own directory."""
        target = model_shape(target_dir, "target")
        draft = model_shape(draft_dir, "draft", clip_dir) if draft_dir is not None else None
        if head_dir == "auto":
            from phide.models.heads import default_head_dir

            head_dir = default_head_dir(target_dir)
        head = head_config(head_dir)
        adapter = adapter_params(draft_dir if adapter_dir == "auto" else adapter_dir) if draft_dir else 0
        # The engine bridges vocabularies when the draft's is not a prefix of the target's; a
        # config cannot show the tokenizers, but a larger draft vocabulary cannot be a prefix:
        # that is priced as a bridge (more draft cache rows), anything else as shared.
        cross = draft is not None and draft.lm.vocab_size > target.lm.vocab_size
        return cls(target, draft, head, adapter, cross)


# --------------------------------------------------------------------------------- the plans
@dataclass
class MemoryPlan:
    name: str
    target_quant: str
    draft_quant: str | None          # None: no draft is loaded (target-only)
    predicted_gb: float              # GiB on the busiest GPU
    fits: bool
    predicted_speedup: float         # predicted time of the unquantized target-only schedule / this plan's
    gpus: int = 1
    runnable: bool = True            # False: a placement this engine does not run yet
    parts_gb: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def as_json(self) -> dict:
        out = {k: getattr(self, k) for k in ("name", "target_quant", "draft_quant", "predicted_gb", "fits",
                                             "predicted_speedup", "gpus", "runnable", "parts_gb")}
        out["target_exact"] = self.target_quant == "none"
        if self.note:
            out["note"] = self.note
        return out


def weight_parts(pair: PairShape, target_quant: str, draft_quant: str | None, dtype_bytes: int) -> dict[str, int]:
    """Parameter bytes per component of a plan (draft_quant None: no draft loaded)."""
    t = pair.target
    parts = {"target LM": lm_bytes(t.lm, target_quant, dtype_bytes)}
    parts.update({f"target {k}": v * dtype_bytes for k, v in t.other_params.items()})
    if pair.head is not None:
        parts["EAGLE head"] = pair.head.bytes(dtype_bytes)
    if draft_quant is not None and pair.draft is not None:
        parts["draft LM"] = lm_bytes(pair.draft.lm, draft_quant, dtype_bytes)
        parts.update({f"draft {k}": v * dtype_bytes for k, v in pair.draft.other_params.items()})
        if pair.adapter_params:
            parts["draft adapter"] = pair.adapter_params * dtype_bytes
    return parts


def runtime_parts(pair: PairShape, with_draft: bool, spec: SpecConfig, max_new: int, dtype_bytes: int) -> dict[str, int]:
    """KV caches and the prefill workspace of one request."""
    t = pair.target
    need = target_cache_rows(t.prompt_tokens, max_new, spec)
    parts = {"target KV": need * kv_bytes_per_row(t.lm, dtype_bytes)}
    if spec.target_graph is not False:  # on a GPU the engine holds the static verify's cache ...
        graph_rows = target_graph_rows(t.lm)
        rows = graph_rows + (need if need > graph_rows else 0)  # (a request too long for it has its own)
        parts["target KV"] = rows * kv_bytes_per_row(t.lm, dtype_bytes)
        # ... and its graphs' logits buffers (fp32, per bucket and feature capture); the rest is small
        parts["verify graphs"] = sum(BUCKETS) * t.lm.vocab_size * 4 * (2 if pair.head is not None else 1)
    work = prefill_workspace_bytes(t.lm, t.prompt_tokens, dtype_bytes)
    if pair.head is not None:
        parts["EAGLE head KV"] = head_cache_rows(t.prompt_tokens, max_new, spec) * kv_bytes_per_row(
            pair.head.cfg, dtype_bytes, layers=1)
        # the prompt's features the head reads (EAGLE-3: the captured layers), kept by the engine
        parts["EAGLE head features"] = t.prompt_tokens * pair.head.feature_width(t.lm) * dtype_bytes
    if with_draft and pair.draft is not None:
        d = pair.draft
        parts["draft KV"] = draft_cache_rows(d.prompt_tokens, max_new, spec, pair.cross_vocab) * kv_bytes_per_row(
            d.lm, dtype_bytes)
        work += prefill_workspace_bytes(d.lm, d.prompt_tokens, dtype_bytes)  # hide: both prefills at once
    parts["prefill workspace"] = work
    return parts


# (name, target format, draft format or None, GPUs): the placements the planner weighs.
PLAN_LAYOUTS = (
    ("both {d}", "none", "none", 1),
    ("draft int8", "none", "int8", 1),
    ("draft nf4", "none", "nf4", 1),
    ("draft int4", "none", "int4", 1),
    ("both 4-bit", "nf4", "nf4", 1),
    ("draft on a second GPU", "none", "none", 2),
    ("no draft, target {d}", "none", None, 1),
)


# How much of the draft a plan keeps, for choosing among equally fast plans (no draft: nothing).
DRAFT_KEEPS = {"none": 4, "int8": 3, "nf4": 2, "int4": 1, None: 0}


def projected_costs(base, target_quant: str, draft_quant: str | None, second_gpu: bool):
    """The cost model of a plan: `base` (planner Costs of the unquantized pair) with each model's
    prefill and decode step scaled for its weight format; on a second GPU the draft runs beside
    the target at full speed (one split, the whole of both devices)."""
    from phide.planner import SplitCosts

    tp, ts = PREFILL_TIME[target_quant], DECODE_TIME[target_quant]
    dq = draft_quant or "none"
    dp, ds = PREFILL_TIME[dq], DECODE_TIME[dq]
    if second_gpu:
        splits = [SplitCosts(target_prefill_s=base.target_prefill_s * tp, draft_prefill_s=base.draft_prefill_s * dp,
                             draft_step_s=base.draft_step_s * ds)]
    else:
        splits = [dataclasses.replace(s, target_prefill_s=s.target_prefill_s * tp, draft_prefill_s=s.draft_prefill_s * dp,
                                      draft_step_s=s.draft_step_s * ds) for s in base.splits]
    return dataclasses.replace(base, target_prefill_s=base.target_prefill_s * tp, target_step_s=base.target_step_s * ts,
                               verify_extra_per_node_s=base.verify_extra_per_node_s * ts,
                               draft_prefill_s=base.draft_prefill_s * dp, draft_step_s=base.draft_step_s * ds,
                               splits=splits)


def predicted_time(cal, pair: PairShape, target_quant: str, draft_quant: str | None, gpus: int, spec: SpecConfig,
                   new_tokens: int, schedule: str = "auto") -> float:
    """Seconds the planner predicts for a plan's fastest schedule (or for `schedule`)."""
    from phide.planner import Planner

    costs = projected_costs(cal.costs, target_quant, draft_quant, gpus > 1)
    keep = ACCEPTANCE[draft_quant or "none"]
    draft_acc = dataclasses.replace(cal.draft, tau=1 + (cal.draft.tau - 1) * keep,
                                    window_accept_rate=cal.draft.window_accept_rate * keep)
    c = dataclasses.replace(cal, costs=costs, draft=draft_acc)
    planner = Planner(c, has_draft=draft_quant is not None and pair.draft is not None, has_head=pair.head is not None,
                      depth=spec.depth, budget=spec.budget, window_steps=spec.window_depth, margin=0.0)
    return planner.decide(new_tokens, schedule).predicted_s


def plan_parts(pair: PairShape, target_quant: str, draft_quant: str | None, *, spec: SpecConfig, max_new: int,
               dtype: str, gpus: int = 1, with_context: bool = True) -> dict[str, int]:
    """Bytes per component of a plan on its busiest GPU (with two, the target's: the draft's side
    is priced the same way on the other): weights, KV caches, prefill workspace, CUDA context."""
    nbytes = DTYPE_BYTES[dtype]
    parts = {**weight_parts(pair, target_quant, draft_quant, nbytes),
             **runtime_parts(pair, draft_quant is not None, spec, max_new, nbytes)}
    if gpus > 1:
        parts = {k: v for k, v in parts.items() if not k.startswith("draft")}
    if with_context:
        parts["CUDA context"] = int(CUDA_CONTEXT_GIB * GIB)
    return parts


def predicted_gb(pair: PairShape, target_quant: str, draft_quant: str | None, **kw) -> float:
    """GiB a plan needs (`plan_parts` arguments)."""
    return round(sum(plan_parts(pair, target_quant, draft_quant, **kw).values()) / GIB, 3)


def default_calibration(tau: float = 3.5, window_accept_rate: float = 0.5, new_tokens: int = 64):
    """The planner's H100 roofline projection of the real pair, with acceptance priors: what plans
    are ranked by when no measurement is given."""
    from phide.planner import Acceptance, Calibration, h100_projection

    acc = Acceptance(tau=tau, window_accept_rate=window_accept_rate, samples=1)
    return Calibration(h100_projection(), head=acc, draft=dataclasses.replace(acc), mean_new_tokens=new_tokens)


def plans(pair: PairShape, gpu_memory_gb: float, *, cal, spec: SpecConfig, max_new: int = 64,
          dtype: str = "bfloat16", device: str = "cuda", layouts=PLAN_LAYOUTS) -> list[MemoryPlan]:
    """Every placement with its predicted GiB (on the busiest GPU), whether it fits a card of
    `gpu_memory_gb`, and its predicted speedup over unquantized target-only (`cal`: a planner
    Calibration, measured or projected)."""
    base = predicted_time(cal, pair, "none", None, 1, spec, max_new, schedule=TARGET_ONLY)
    out = []
    for name, tq, dq, gpus in layouts:
        if dq is not None and pair.draft is None:
            continue
        parts = plan_parts(pair, tq, dq, spec=spec, max_new=max_new, dtype=dtype, gpus=gpus)
        total = sum(parts.values())
        notes = []
        if gpus > 1:
            notes.append("a draft on its own GPU: priced, not yet run by phide's engine")
        if "int4" in (tq, dq) and device != "cuda":
            notes.append("int4 needs CUDA")
        runnable = not notes
        if tq != "none":
            notes.append("the target is quantized: the answer is the quantized target's, it may differ from the "
                         "exact model's")
        note = "; ".join(notes)
        speedup = base / predicted_time(cal, pair, tq, dq, gpus, spec, max_new)
        out.append(MemoryPlan(name.format(d=DTYPE_NAMES[dtype]), tq, dq, round(total / GIB, 2),
                              total <= (1 - HEADROOM) * gpu_memory_gb * GIB, round(speedup, 2), gpus, runnable,
                              {k: round(v / GIB, 3) for k, v in parts.items()}, note))
    return out


def choose(candidates: list[MemoryPlan], *, margin: float = 0.03) -> MemoryPlan | None:
    """The fastest runnable plan that fits, with the target exact when one such exists. Speedups
    within `margin` (the planner's) count as equal;
    among equals the plan that keeps the most of the pair wins: the draft loaded, then its
    higher precision (memory that fits costs nothing, and a loaded draft leaves the runtime
    planner, calibrated on the machine, free to hide it), then the smaller plan."""
    ok = [p for p in candidates if p.fits and p.runnable]
    exact = [p for p in ok if p.target_quant == "none"]
    pool = exact or ok
    if not pool:
        return None
    best = max(p.predicted_speedup for p in pool)
    equals = [p for p in pool if p.predicted_speedup * (1 + margin) >= best]
    return min(equals, key=lambda p: (-DRAFT_KEEPS[p.draft_quant], p.predicted_gb))


def card_needed(plan: MemoryPlan) -> float:
    """The smallest card (GB) a plan fits in, headroom included."""
    return math.ceil(plan.predicted_gb / (1 - HEADROOM) * 10) / 10


def shortfall(candidates: list[MemoryPlan], gpu_memory_gb: float) -> str:
    """What is missing when nothing fits: the smallest runnable plan and the card it needs (and,
    when that plan quantizes the target, the smallest with the target exact)."""
    runnable = [p for p in candidates if p.runnable] or candidates
    small = min(runnable, key=lambda p: p.predicted_gb)
    msg = (f"nothing fits in {gpu_memory_gb:g} GB: the smallest plan, {small.name!r}, needs {small.predicted_gb:.1f} GB, "
           f"a card of at least {card_needed(small):g} GB")
    exact = min((p for p in runnable if p.target_quant == "none"), key=lambda p: p.predicted_gb, default=None)
    if exact is not None and exact is not small:
        msg += f"; with the target exact, {exact.name!r} needs a card of {card_needed(exact):g} GB"
    return msg
