"""`phide distill --plan`: what training a continuation head costs, from config files alone.

Before a run, `distill_plan` counts (exactly, for the pipeline phide.tools.distill runs) and
projects (H100 roofline, stated) each stage of training an EAGLE head for a target:

  stage 1   answers        every sample answered by the target alone, greedy: one prefill of the
                           prompt minus its last token, then up to A decode steps (1 + A forwards)
  features  offline only   one target forward over prompt + answer (T tokens) per sample, written
                           to a bf16 file (with a draft, its forward too: draft_hidden)
  stage 2   head training  steps x batch sample-uses; online each runs the target's input
                           preparation and one forward over T; offline each reads its file
  adapter   with a draft   adapter_steps x adapter_batch sample-uses; online a target and a draft
                           forward each, offline a file read
  validation               `validations` x `held_out` head-only generations on rank 0

Counted (from the configs): target and draft forwards, offline file bytes, checkpoint bytes and
GPU memory per rank (weights, the head's training state, the activations of one micro-batch).
Projected: H100 seconds per stage (the constants below, from planner.h100_projection); every
assumption is in the returned dict's "assumptions" and in `format_plan`'s printout.

The returned dict (JSON-able; sizes labelled _gb are GiB, 2**30 bytes):
  target, draft, head_dir, head_kind, features, samples, gpus
  prompt_tokens P, answer_tokens A, sequence_tokens T, ttt_steps K, window_tokens W = A + K + 1
  head_params, feature_width F, draft_vocab (rows of the LM head the head's logits use)
  epochs (steps x batch / samples), adapter_epochs
  per_sample  target_forwards_{answers,features,head,adapter}, draft_forwards: forwards per sample
              of the data set (online training counts one per use: epochs of them);
              offline_bytes, offline_bytes_parts {embeds, features, final, draft_hidden};
              h100_seconds {answers: one answer, features: one file written, head: one sample-use,
              adapter: one sample-use, validation: one held-out generation}
  total       sample_uses_head, sample_uses_adapter, target_forwards, target_forwards_by_stage,
              draft_forwards, offline_disk_bytes/_gb, checkpoint_disk_bytes/_gb,
              h100_hours (wall time: the busiest rank, rank 0, which also validates),
              h100_hours_by_stage, gpu_hours (h100_hours x gpus)
  per_rank    samples, sample_uses_head, micro_batch (samples per forward), gpu_memory_bytes,
              gpu_memory_gb, gpu_memory_parts_gb, fits_80gb, fits_24gb
  assumptions {name: sentence}
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from phide.errors import PhideError
from phide.memory_plan import (CUDA_CONTEXT_GIB, DTYPE_BYTES, GIB, HEADROOM, HeadShape, PairShape, head_config,
                               kv_bytes_per_row, lm_bytes, prefill_workspace_bytes, weight_parts)
from phide.models.eagle3 import DEFAULT_DRAFT_VOCAB
from phide.models.llama import LlamaConfig
from phide.planner import h100_projection

BF16 = DTYPE_BYTES["bfloat16"]
# The H100 figures of planner.h100_projection (its docstring gives the sources), one place each.
_H100 = h100_projection()
PREPARE_S = _H100.target_prepare_s        # input preparation, either model (GPU idle meanwhile)
DECODE_STEP_S = _H100.target_step_s       # one memory-bound 7B decode (or verify) step
PEAK_FLOPS = 989e12                       # dense bf16, H100 SXM
COMPUTE_EFFICIENCY = 0.6                  # what a long prefill reaches of the peak
NVME_BYTES_PER_S = 2e9                    # reading or writing feature files (stated, not measured)
VALIDATION_TAU = 3.0                      # tokens per verify of a trained head (a prior, as the planner's)
CHECKPOINTS_KEPT = 2
CHECKPOINT_BYTES_PER_PARAM = 4 + 8        # fp32 weights + the two AdamW moments
TRAIN_BYTES_PER_PARAM = 16                # fp32 master 4 + grad 4 + AdamW moments 8
FEATURES = ("online", "offline")
HEAD_KINDS = ("eagle3", "eagle2")
EAGLE3_CAPTURE = 3                        # layers a new EAGLE-3 head fuses (models.eagle3.default_capture)


# ----------------------------------------------------------------------------- arguments
def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PhideError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_args(a: dict) -> None:
    for name in ("samples", "max_new_tokens", "steps", "batch", "micro_batch", "ttt_steps", "gpus"):
        _check_int(name, a[name], 1)
    for name in ("adapter_steps", "adapter_batch", "held_out", "validations"):
        _check_int(name, a[name], 0)
    if a["prompt_tokens"] is not None:
        _check_int("prompt_tokens", a["prompt_tokens"], 1)
    if a["features"] not in FEATURES:
        raise PhideError(f"features must be one of {', '.join(FEATURES)}, got {a['features']!r}")
    if a["head_kind"] not in HEAD_KINDS:
        raise PhideError(f"head_kind must be one of {', '.join(HEAD_KINDS)}, got {a['head_kind']!r}")
    if a["batch"] % a["gpus"]:
        raise PhideError(f"batch {a['batch']} must be a multiple of the {a['gpus']} GPUs (each rank takes an equal "
                         "share of a step)")
    if a["held_out"] > a["samples"]:
        raise PhideError(f"held_out {a['held_out']} is more than the {a['samples']} samples")
    if a["adapter_steps"]:
        if a["draft_dir"] is None:
            raise PhideError("adapter_steps > 0 needs a draft (the adapter is the draft's)")
        if a["adapter_batch"] < 1 or a["adapter_batch"] % a["gpus"]:
            raise PhideError(f"adapter_batch {a['adapter_batch']} must be a positive multiple of the {a['gpus']} GPUs")


def _head_shape(target: LlamaConfig, head_dir, kind: str, draft_vocab: int | None) -> HeadShape:
    """The head's config file when given, else the head phide distill builds for `target`."""
    if head_dir is not None:
        head = head_config(head_dir)
        if head is None:
            raise PhideError(f"{head_dir} has no head config (EAGLE-3 config.json or EAGLE-2 eagle_head.json)")
        if head.kind != kind:
            raise PhideError(f"{head_dir} holds an {head.kind} head, head_kind is {kind}")
        if (head.cfg.hidden_size, head.cfg.vocab_size) != (target.hidden_size, target.vocab_size):
            raise PhideError(f"the head in {head_dir} has hidden {head.cfg.hidden_size} / vocab {head.cfg.vocab_size}, "
                             f"the target {target.hidden_size} / {target.vocab_size}")
        if draft_vocab is not None and draft_vocab != head.draft_vocab:
            raise PhideError(f"draft_vocab {draft_vocab} contradicts the head config's {head.draft_vocab}")
        return head
    cfg = dataclasses.replace(target, num_hidden_layers=1)
    if kind == "eagle2":
        if draft_vocab is not None:
            raise PhideError("draft_vocab is for EAGLE-3 heads (an EAGLE-2 head uses the target's LM head)")
        return HeadShape("eagle2", cfg)
    vd = draft_vocab if draft_vocab is not None else min(target.vocab_size, DEFAULT_DRAFT_VOCAB)
    if not 1 <= vd <= target.vocab_size:
        raise PhideError(f"draft_vocab must be in 1..{target.vocab_size} (the target's vocabulary), got {vd}")
    return HeadShape("eagle3", cfg, EAGLE3_CAPTURE, vd)


# ----------------------------------------------------------------------------- counted
def _logit_rows(head: HeadShape) -> int:
    """Rows of the LM head the head's logits come from: its own (EAGLE-3) or the target's."""
    return head.draft_vocab if head.kind == "eagle3" else head.cfg.vocab_size


def _qkv_in(head: HeadShape) -> int:
    """What the head layer's q/k/v read: [embedding, feature] normed (EAGLE-3, 2H) or the fused H."""
    H = head.cfg.hidden_size
    return 2 * H if head.kind == "eagle3" else H


def _qkv_params(head: HeadShape) -> int:
    c = head.cfg
    return _qkv_in(head) * (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim


def offline_parts(head: HeadShape, target: LlamaConfig, T: int, A: int, draft_hidden: int | None) -> dict[str, int]:
    """Bytes of one sample's feature file (phide.distill.features' layout, bf16)."""
    H = target.hidden_size
    parts = {"embeds": T * H * BF16, "features": T * head.feature_width(target) * BF16}
    if head.kind == "eagle3":  # EAGLE-2 slices its final features out of `features`
        parts["final"] = (A + 1) * H * BF16
    if draft_hidden is not None:
        parts["draft_hidden"] = A * draft_hidden * BF16
    return parts


def memory_parts(pair: PairShape, head: HeadShape, *, T: int, W: int, K: int, m: int) -> dict[str, int]:
    """Bytes on one rank: the frozen models' weights, the head's training state, one micro-batch's
    target forward (KV, workspace, the tensors it hands the head) and the head's activations kept
    for backward (the context's q/k/v inputs and the window's unrolled steps)."""
    t, c = pair.target.lm, head.cfg
    H, I = c.hidden_size, c.intermediate_size
    kv = 2 * c.num_key_value_heads * c.head_dim
    parts = weight_parts(pair, "none", "none" if pair.draft is not None else None, BF16)
    parts.update({
        "head training state": head.params() * TRAIN_BYTES_PER_PARAM,
        "target KV": m * T * kv_bytes_per_row(t, BF16),
        "target forward workspace": m * prefill_workspace_bytes(t, T, BF16),
        "captured features": m * T * (head.feature_width(t) + 2 * t.hidden_size) * BF16,  # + embeds + final
        "head context activations": m * T * (_qkv_in(head) + H + kv) * BF16,
        # per unrolled step and window position: the layer's bf16 activations and 3 fp32 copies of the logits
        "head window activations": m * W * K * ((2 * H + 8 * H + 3 * I) * BF16 + 3 * _logit_rows(head) * 4),
        "CUDA context": int(CUDA_CONTEXT_GIB * GIB),
    })
    return parts


# ----------------------------------------------------------------------------- projected
def _compute_s(flops: float) -> float:
    return flops / (PEAK_FLOPS * COMPUTE_EFFICIENCY)


def forward_s(lm: LlamaConfig, n: int) -> float:
    """A prefill-type forward of `lm` over n tokens: 2 FLOPs per parameter per token plus causal attention."""
    params = lm_bytes(lm, "none", 1)
    return _compute_s(2 * params * n + 2 * lm.num_hidden_layers * n * n * lm.hidden_size)


def head_use_s(head: HeadShape, T: int, W: int, K: int) -> float:
    """The head's forward + backward (3x the forward) on one sample: K unrolled steps over the
    window, and the q/k/v of the context (the T positions its attention reads)."""
    return _compute_s(3 * (2 * head.params() * W * K + 2 * _qkv_params(head) * T))


def _unit_seconds(pair: PairShape, head: HeadShape, *, P: int, A: int, T: int, W: int, K: int, Pd: int,
                  file_bytes: int, offline: bool, verifies: int) -> dict[str, float]:
    """H100 seconds of one unit of each stage (see the module docstring)."""
    t = pair.target.lm
    io_s = file_bytes / NVME_BYTES_PER_S
    draft_s = PREPARE_S + forward_s(pair.draft.lm, Pd + A) if pair.draft is not None else 0.0
    target_s = PREPARE_S + forward_s(t, T)
    return {
        "answers": PREPARE_S + forward_s(t, P - 1) + A * DECODE_STEP_S,
        "features": target_s + draft_s + io_s if offline else 0.0,
        "head": (io_s if offline else target_s) + head_use_s(head, T, W, K),
        "adapter": io_s if offline else target_s + draft_s,
        "validation": PREPARE_S + forward_s(t, P - 1) + verifies * DECODE_STEP_S,
    }


def _assumptions(head: HeadShape, *, P: int, A: int, Pd: int | None, verifies: int) -> dict[str, str]:
    rate = f"{PEAK_FLOPS / 1e12:g} TFLOP/s dense bf16 x {COMPUTE_EFFICIENCY:.0%}"
    out = {
        "hardware": f"one H100 SXM per rank (planner.h100_projection): {rate} for every compute-bound pass",
        "forward": "a target/draft forward over n tokens: 2 x LM params x n + 2 x layers x n^2 x hidden FLOPs "
                   "(causal attention), at the rate above",
        "input preparation": f"{PREPARE_S:g} s per target or draft input (video decode, resize, vision tower)",
        "decode step": f"{DECODE_STEP_S:g} s per memory-bound 7B step (3.35 TB/s HBM x 65%)",
        "answers": f"every answer runs the full {A} tokens (an upper bound: EOS ends some sooner); "
                   f"prefill over P - 1 = {P - 1} tokens, as the engine does",
        "head": f"fwd+bwd = 3 x (2 x head params x W x K + 2 x q/k/v params x T) FLOPs; {head.kind}, "
                f"{head.params():,} params",
        "feature files": f"bf16, written and read at {NVME_BYTES_PER_S / 1e9:g} GB/s (NVMe, stated)",
        "validation": f"on rank 0, head-only: 1 prefill + ceil(A / tau) = {verifies} verifies per held-out sample, "
                      f"tau = {VALIDATION_TAU:g} (a prior), each verify one decode step",
        "memory": f"head training state {TRAIN_BYTES_PER_PARAM} B/param (fp32 master, grad, AdamW); frozen "
                  f"models in bf16; CUDA context {CUDA_CONTEXT_GIB:g} GiB; fits = at most {1 - HEADROOM:.0%} "
                  "of the card",
        "checkpoints": f"{CHECKPOINTS_KEPT} kept, {CHECKPOINT_BYTES_PER_PARAM} B/param (fp32 weights + AdamW)",
        "left out": "data loading, optimizer steps, gradient all-reduce between ranks, the draft adapter's own "
                    "(small) weights and state",
    }
    if Pd is not None:
        out["draft"] = (f"loaded for the whole run; its forward covers its prompt + the answer ({Pd} + {A} tokens) "
                        "after its own input preparation")
    return out


# ----------------------------------------------------------------------------- the plan
def distill_plan(target_dir, draft_dir=None, *, head_dir=None, head_kind="eagle3", samples: int, max_new_tokens: int,
                 steps: int, batch: int, micro_batch: int, ttt_steps: int, gpus: int = 1, features: str = "online",
                 adapter_steps: int = 0, adapter_batch: int = 0, held_out: int = 0, validations: int = 1,
                 draft_vocab: int | None = None, prompt_tokens: int | None = None) -> dict:
    """The cost of `phide distill` for this target (and draft), as the module docstring lays out."""
    _check_args(locals())
    pair = PairShape.read(target_dir, draft_dir, head_dir=None, adapter_dir=None)
    t = pair.target.lm
    head = _head_shape(t, head_dir, head_kind, draft_vocab)
    N, A, K, R, G = samples, max_new_tokens, ttt_steps, gpus, batch
    P = prompt_tokens or pair.target.prompt_tokens
    T, W = P + A, A + K + 1
    Pd = pair.draft.prompt_tokens if pair.draft is not None else None
    offline = features == "offline"
    m = min(micro_batch, G // R)  # a rank's share of a step is the largest forward it runs
    head_uses, adapter_uses = steps * G, adapter_steps * adapter_batch
    verifies = math.ceil(A / VALIDATION_TAU)
    val_gens = validations * held_out

    files = offline_parts(head, t, T, A, pair.draft.lm.hidden_size if pair.draft is not None else None)
    file_bytes = sum(files.values())
    unit = _unit_seconds(pair, head, P=P, A=A, T=T, W=W, K=K, Pd=Pd, file_bytes=file_bytes, offline=offline,
                         verifies=verifies)
    forwards = {"answers": N * (1 + A), "features": N if offline else 0, "head": 0 if offline else head_uses,
                "adapter": 0 if offline else adapter_uses, "validation": val_gens * (1 + verifies)}
    draft_forwards = (N if offline else adapter_uses) if pair.draft is not None else 0
    rank_samples = math.ceil(N / R)  # answers and files: every R-th sample per rank
    rank_units = {"answers": rank_samples, "features": rank_samples, "head": head_uses // R,
                  "adapter": adapter_uses // R, "validation": val_gens}
    hours = {k: unit[k] * n / 3600 for k, n in rank_units.items()}
    mem = memory_parts(pair, head, T=T, W=W, K=K, m=m)
    mem_bytes = sum(mem.values())
    ckpt = CHECKPOINTS_KEPT * head.params() * CHECKPOINT_BYTES_PER_PARAM
    disk = N * file_bytes if offline else 0
    wall = sum(hours.values())
    return {
        "target": str(target_dir), "draft": str(draft_dir) if draft_dir is not None else None,
        "head_dir": str(head_dir) if head_dir is not None else None, "head_kind": head.kind, "features": features,
        "samples": N, "gpus": R, "prompt_tokens": P, "answer_tokens": A, "sequence_tokens": T, "ttt_steps": K,
        "window_tokens": W, "head_params": head.params(), "feature_width": head.feature_width(t),
        "draft_vocab": _logit_rows(head), "epochs": head_uses / N, "adapter_epochs": adapter_uses / N,
        "per_sample": {
            "target_forwards_answers": 1 + A,
            "target_forwards_features": forwards["features"] / N,
            "target_forwards_head": forwards["head"] / N,
            "target_forwards_adapter": forwards["adapter"] / N,
            "draft_forwards": draft_forwards / N,
            "offline_bytes": file_bytes if offline else 0,
            "offline_bytes_parts": files if offline else {},
            "h100_seconds": {k: round(v, 6) for k, v in unit.items()},
        },
        "total": {
            "sample_uses_head": head_uses, "sample_uses_adapter": adapter_uses,
            "target_forwards": sum(forwards.values()), "target_forwards_by_stage": forwards,
            "draft_forwards": draft_forwards,
            "offline_disk_bytes": disk, "offline_disk_gb": round(disk / GIB, 3),
            "checkpoint_disk_bytes": ckpt, "checkpoint_disk_gb": round(ckpt / GIB, 3),
            "h100_hours": round(wall, 3), "h100_hours_by_stage": {k: round(v, 3) for k, v in hours.items()},
            "gpu_hours": round(wall * R, 3),
        },
        "per_rank": {
            "samples": rank_samples, "sample_uses_head": head_uses // R, "micro_batch": m,
            "gpu_memory_bytes": mem_bytes, "gpu_memory_gb": round(mem_bytes / GIB, 3),
            "gpu_memory_parts_gb": {k: round(v / GIB, 3) for k, v in mem.items()},
            "fits_80gb": mem_bytes <= (1 - HEADROOM) * 80 * GIB, "fits_24gb": mem_bytes <= (1 - HEADROOM) * 24 * GIB,
        },
        "assumptions": _assumptions(head, P=P, A=A, Pd=Pd, verifies=verifies),
    }


# ----------------------------------------------------------------------------- the printout
def _count(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.2f}"


def _size(n: float) -> str:
    return f"{n / GIB:,.2f} GiB" if n >= GIB else f"{n / 2 ** 20:,.1f} MiB"


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def format_plan(plan: dict) -> str:
    """The plan as a terminal table: per sample | whole run, then memory per rank and the assumptions."""
    ps, tot, pr = plan["per_sample"], plan["total"], plan["per_rank"]
    draft = f", draft {Path(plan['draft']).name}" if plan["draft"] else ""
    lines = [f"phide distill --plan: {plan['head_kind']} head ({plan['head_params']:,} params) for "
             f"{Path(plan['target']).name}{draft}; features {plan['features']}, {plan['gpus']} GPU(s)",
             f"  {plan['samples']:,} samples of P {plan['prompt_tokens']} + A {plan['answer_tokens']} = T "
             f"{plan['sequence_tokens']} tokens; {tot['sample_uses_head']:,} head sample-uses ({plan['epochs']:.2f} "
             f"epochs), {tot['sample_uses_adapter']:,} adapter sample-uses; K {plan['ttt_steps']}, window W "
             f"{plan['window_tokens']}",
             f"  {'':34}{'per sample':>16}{'total':>18}"]

    def row(label, one, whole):
        lines.append(f"  {label:34}{one:>16}{whole:>18}")

    by = tot["target_forwards_by_stage"]
    row("target forwards, answers", _count(ps["target_forwards_answers"]), _count(by["answers"]))
    row("target forwards, feature files", _count(ps["target_forwards_features"]), _count(by["features"]))
    row("target forwards, head training", _count(ps["target_forwards_head"]), _count(by["head"]))
    row("target forwards, adapter", _count(ps["target_forwards_adapter"]), _count(by["adapter"]))
    row("target forwards, validation", "", _count(by["validation"]))
    row("target forwards, all", "", _count(tot["target_forwards"]))
    row("draft forwards", _count(ps["draft_forwards"]), _count(tot["draft_forwards"]))
    row("offline feature disk", _size(ps["offline_bytes"]), _size(tot["offline_disk_bytes"]))
    row("checkpoint disk", "", _size(tot["checkpoint_disk_bytes"]))
    units = {"answers": "s/sample", "features": "s/sample", "head": "s/use", "adapter": "s/use",
             "validation": "s/gen"}
    for stage, unit in units.items():
        row(f"H100 time, {stage}", f"{ps['h100_seconds'][stage]:.4f} {unit}",
            f"{tot['h100_hours_by_stage'][stage]:,.2f} h")
    row("H100 wall time (per rank)", "", f"{tot['h100_hours']:,.2f} h")
    row(f"GPU hours ({plan['gpus']} GPU(s))", "", f"{tot['gpu_hours']:,.2f} h")
    lines.append(f"  GPU memory per rank (micro-batch {pr['micro_batch']}): {pr['gpu_memory_gb']:.2f} GiB; fits 80 GB: "
                 f"{_yes(pr['fits_80gb'])}, 24 GB: {_yes(pr['fits_24gb'])}")
    lines += [f"    {k:30}{v:>9.3f} GiB" for k, v in pr["gpu_memory_parts_gb"].items()]
    lines.append("  assumptions (projected, not measured):")
    lines += [f"    {k}: {v}" for k, v in plan["assumptions"].items()]
    return "\n".join(lines)
