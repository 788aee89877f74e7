"""Train the toy pair (`phide.toy.pair`) on the toy world, on a CPU, with fixed seeds.

Training runs through phide's OWN adapters and modules (the loaders' `lm` / `tower` / `projector` /
`adaptor`, their preprocessing and prompt tokenization), so what is trained is exactly what the
engine runs: the inputs are built as `prepare()` builds them (same pixel values, same ids, same
splice), only with autograd and a causal forward over whole sequences (a fresh KV cache per call,
like `EagleHead.forward_train`). Loss: next-token cross-entropy on the answer tokens and the final
`</s>` only. The trained weights are written back into the checkpoint files they came from (same
keys, same files, stored in bf16), so the directories keep their real formats. The examples, the
causal forward and the losses are in `phide.toy.train_inputs`; this module runs the loops.

    python -m phide.toy.train OUT_DIR --size test|demo --steps N
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from phide.models.llama import LlamaModel
from phide.toy.look import attention_rows, capture_attention_inputs, look_loss
from phide.toy.supervision import COLOUR_CLASSES, MOTION_CLASSES, SHAPE_CLASSES
# Re-exported: tests and tools use them as phide.toy.train.* (the examples and forward live there).
from phide.toy.train_inputs import (EOS_ID, _aux_ce, _aux_heads, _scene_heads, _sequence, batch_loss,  # noqa: F401
                                    causal_hidden, draft_example, draft_features, scene_loss, target_example,
                                    target_features, teacher_forced_exact)

LOOK_LAYERS = (0, 1)  # attention supervision: layer 0 looks at the last frame, layer 1 at the first


def _log(msg: str) -> None:
    print(f"phide: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- saving
def _write_back(model_dir: Path, updates: dict[str, torch.Tensor], dtype=torch.bfloat16) -> None:
    """Replace `updates` keys in the directory's safetensors files (every key must exist); all
    floating tensors are stored in `dtype`."""
    from safetensors.torch import load_file, save_file

    left = set(updates)
    for f in sorted(model_dir.glob("*.safetensors")):
        part = load_file(str(f))
        hit = left & set(part)
        part.update({k: updates[k] for k in hit})
        left -= hit
        part = {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous() for k, v in part.items()}
        save_file(part, str(f), metadata={"format": "pt"})
    if left:
        raise KeyError(f"{model_dir}: no such weights to update: {sorted(left)[:5]}")
    cfg_path = model_dir / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        for k in ("dtype", "torch_dtype"):
            if k in cfg:
                cfg[k] = str(dtype).removeprefix("torch.")
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def _keys(model_dir: Path) -> set[str]:
    from safetensors import safe_open

    keys = set()
    for f in model_dir.glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            keys |= set(h.keys())
    return keys


def _named(module, keys: set[str], prefixes, probe: str) -> dict[str, torch.Tensor]:
    prefix = next((p for p in prefixes if p + probe in keys), None)
    if prefix is None:
        raise KeyError(f"no {probe} under {prefixes}")
    return {prefix + n: p.detach() for n, p in module.named_parameters()}


def _lm_updates(lm: LlamaModel, keys: set[str], prefixes, head_keys) -> dict[str, torch.Tensor]:
    prefix = next(p for p in prefixes if p + "embed_tokens.weight" in keys)
    out = {}
    for n, p in lm.named_parameters():
        if n == "lm_head.weight":
            key = next((k for k in head_keys if k in keys), None)
            if key is None:  # tied embeddings
                continue
            out[key] = p.detach()
        else:
            out[prefix + n] = p.detach()
    return out


# ---------------------------------------------------------------------------------------- loops
def _loop(name: str, params, step_loss, *, steps: int, lr: float, batch: int, n: int, seed: int,
          log_every: int, checkpoint=None, checkpoint_every: int = 0, stop_at: int = 0) -> list[float]:
    """AdamW, linear warm-up then cosine to 10% of lr; `checkpoint()` runs every `checkpoint_every`
    steps (long CPU runs can then be inspected, or stopped, midway). stop_at: end after that many
    steps of the `steps`-step schedule (what an interrupted run kept)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, min(50, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / max(steps, 1)))))
    g = torch.Generator().manual_seed(seed)
    losses, t0 = [], time.perf_counter()
    for step in range(min(steps, stop_at) if stop_at else steps):
        idx = torch.randperm(n, generator=g)[:min(batch, n)].tolist()
        opt.zero_grad()
        loss = step_loss(idx)
        answer_loss = None
        if isinstance(loss, tuple):  # (total with auxiliary terms, answer-token CE)
            loss, answer_loss = loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log_every and (step % log_every == 0 or step == steps - 1):
            dt = time.perf_counter() - t0
            extra = f" (answer {float(answer_loss):.4f})" if answer_loss is not None else ""
            _log(f"train {name} step {step + 1}/{steps} loss {losses[-1]:.4f}{extra} "
                 f"({dt:.1f}s, {dt / (step + 1):.3f}s/step)")
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            checkpoint()
            _log(f"train {name}: checkpoint at step {step + 1}")
    return losses


def _held_out_scorer(name: str, lm: LlamaModel, held: list[dict], features, placeholder: int):
    """A callable that logs teacher_forced_exact on the held-out examples (a no-op without any);
    features(example) -> the visual rows spliced at its placeholder."""
    def score():
        if not held:
            return
        with torch.no_grad():
            seqs = [(*_sequence(lm, ex, features(ex), placeholder), len(ex["answer"])) for ex in held]
        exact, acc = teacher_forced_exact(lm, seqs)
        _log(f"train {name}: held-out exact answers {exact:.3f}, answer tokens {acc:.4f} ({len(held)} samples)")
    return score


def _run(name, params, step_loss, score, write, **loop_kw) -> list[float]:
    """_loop with held-out scoring and (when `write` is given) the weights written at every
    checkpoint and at the end."""
    def checkpoint():
        score()
        if write is not None:
            write()

    losses = _loop(name, params, step_loss, checkpoint=checkpoint, **loop_kw)
    checkpoint()
    return losses


def _trainable(*modules) -> list:
    """Put the modules in training mode with gradients on (loaders return them frozen for
    inference); returns their parameters."""
    params = []
    for m in modules:
        m.train()
        params += list(m.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def train_target(pair_dir, samples, *, steps: int = 100, lr: float = 2e-3, batch: int = 8, seed: int = 0,
                 log_every: int = 10, save: bool = True, checkpoint_every: int = 0, aux_weight: float = 1.0,
                 stop_at: int = 0, text_only: bool = False, scene_weight: float = 1.0, look_weight: float = 1.0,
                 held_out=None) -> list[float]:
    """Train pair_dir/target (tower layers used for features, projector, LM) on samples' (frames,
    question) -> answer; writes the weights back in place. Returns the per-step losses.
    text_only: the curriculum's first stage (no visual tokens: the LM learns the templates and to
    copy from the question while nothing else competes for its attention).
    aux_weight: the per-patch losses; scene_weight: the scene-level facts (colour, size, motion,
    region of each shape) probed at every text position after the frames; look_weight: attention
    supervision (`phide.toy.look`). held_out: samples scored (teacher-forced exact match) at each
    checkpoint and at the end."""
    from phide.models.video_llava import LM_PREFIXES, PROJECTOR_PREFIXES, TOWER_PREFIXES, load_video_llava

    torch.manual_seed(seed)
    model_dir = Path(pair_dir) / "target"
    target = load_video_llava(model_dir)
    pixel_cache: dict = {}
    data = [target_example(target, s, pixel_cache) for s in samples]
    H = target.lm.cfg.hidden_size
    grid = target.tower.config.image_size // target.tower.config.patch_size
    heads = _aux_heads(H, {"colour": COLOUR_CLASSES, "shape": SHAPE_CLASSES, "motion": MOTION_CLASSES,
                           "row": grid, "col": grid})
    cells = torch.arange(grid * grid)
    facts = _scene_heads(H, ("colour", "size", "motion", "region"))
    params = _trainable(target.lm, target.tower, target.projector, heads, facts)

    def step_loss(idx):
        seqs, aux = [], 0.0
        for i in idx:
            ex = data[i]
            proj = (torch.zeros(0, 1, H) if text_only else
                    target_features(target, ex["pixels"], per_frame=True))  # [F, 1 + P, H]
            emb, ids = _sequence(target.lm, ex, proj.reshape(-1, H), target.video_token_id)
            seqs.append((emb, ids, len(ex["answer"])))
            if aux_weight and not text_only:  # what each patch token shows (CLS token 0 left out) and where
                F_ = proj.shape[0]
                aux = aux + aux_weight * (_aux_ce(heads["colour"], proj[:, 1:], ex["labels"]["colour"])
                                          + _aux_ce(heads["shape"], proj[:, 1:], ex["labels"]["shape"])
                                          + _aux_ce(heads["row"], proj[:, 1:], (cells // grid).expand(F_, -1))
                                          + _aux_ce(heads["col"], proj[:, 1:], (cells % grid).expand(F_, -1)))
        with capture_attention_inputs(target.lm, LOOK_LAYERS if look_weight and not text_only else ()) as seen:
            loss, hidden = batch_loss(target.lm, seqs, return_hidden=True)
        if text_only or not (aux_weight or scene_weight or look_weight):
            return loss
        for b, i in enumerate(idx):
            ex = data[i]
            F_, P = ex["labels"]["motion"].shape
            end = ex["at"] + F_ * (P + 1)  # the first text position after the frames
            L = seqs[b][0].shape[0]
            for layer, frame in zip(LOOK_LAYERS, (F_ - 1, 0)) if look_weight else ():
                x, cos, sin = (t[b] for t in seen[layer])
                probs = attention_rows(target.lm.layers[layer].self_attn, x, cos, sin, slice(end, L), L)
                shapes = ex["labels"]["shape"][frame]
                keys = {k: ex["at"] + frame * (P + 1) + 1 + torch.nonzero(shapes == k + 1).flatten()
                        for k in range(SHAPE_CLASSES - 1) if bool((shapes == k + 1).any())}
                aux = aux + look_weight * look_loss(probs, keys)
            if aux_weight:  # motion at the LM's visual positions of frames 1.. (they see the past)
                vis = hidden[b, ex["at"]:end].reshape(F_, P + 1, H)[1:, 1:]
                aux = aux + aux_weight * _aux_ce(heads["motion"], vis, ex["labels"]["motion"][1:])
            if scene_weight:
                aux = aux + scene_weight * scene_loss(facts, hidden[b, end:L], ex["scene"])
        return loss + aux / len(idx), loss.detach()

    score = _held_out_scorer("target", target.lm, [target_example(target, s) for s in held_out or ()],
                             lambda ex: target_features(target, ex["pixels"]), target.video_token_id)

    def write():
        keys = _keys(model_dir)
        updates = _lm_updates(target.lm, keys, LM_PREFIXES, ("lm_head.weight", "language_model.lm_head.weight"))
        updates.update(_named(target.tower, keys, TOWER_PREFIXES, "embeddings.patch_embedding.weight"))
        updates.update(_named(target.projector, keys, PROJECTOR_PREFIXES, "linear_1.weight"))
        _write_back(model_dir, updates)

    return _run("target", params, step_loss, score, write if save else None, steps=steps, lr=lr, batch=batch,
                n=len(data), seed=seed, log_every=log_every, checkpoint_every=checkpoint_every, stop_at=stop_at)


def train_draft(pair_dir, samples, *, steps: int = 100, lr: float = 2e-3, batch: int = 8, seed: int = 0,
                log_every: int = 10, save: bool = True, checkpoint_every: int = 0, aux_weight: float = 1.0,
                stop_at: int = 0, text_only: bool = False, scene_weight: float = 1.0, look_weight: float = 1.0,
                held_out=None) -> list[float]:
    """Train pair_dir/draft (CLIP tower, projector, adaptor, LM) on samples' (event frames, question)
    -> answer; writes the decoder + adapters back to draft/ and the tower back to where it was
    loaded from (the checkpoint when it holds one, else the CLIP directory). Returns the losses.
    The scene-level facts probed here leave colour out: events cannot show it. Attention
    supervision: layer 0's head k looks at shape k's patches of the event image."""
    from phide.models.eventgpt import (ADAPTOR_PREFIXES, CKPT_TOWER_PREFIXES, CLIP_TOWER_PREFIXES, PROJECTOR_PREFIXES,
                                       load_eventgpt, resolve_clip_dir)
    from phide.models.loading import read_config

    torch.manual_seed(seed)
    model_dir = Path(pair_dir) / "draft"
    draft = load_eventgpt(model_dir)
    data = [draft_example(draft, s) for s in samples]
    H = draft.lm.cfg.hidden_size
    grid = draft.image_size // draft.patch_size
    heads = _aux_heads(H, {"shape": SHAPE_CLASSES, "motion": MOTION_CLASSES, "row": grid, "col": grid})
    cells = torch.arange(grid * grid)
    facts = _scene_heads(H, ("size", "motion", "region"))
    params = _trainable(draft.lm, draft.tower, draft.projector, draft.adaptor, heads, facts)
    placeholder = draft.placeholder_id()

    def step_loss(idx):
        seqs, aux, ends = [], 0.0, []
        for i in idx:
            ex = data[i]
            feats = (torch.zeros(0, H) if text_only else
                     draft_features(draft, ex["pixels"]))  # [T + 1 + P, H]: frame means, CLS, patches
            emb, ids = _sequence(draft.lm, ex, feats, placeholder)
            seqs.append((emb, ids, len(ex["answer"])))
            ends.append(ex["at"] + feats.shape[0])
            if aux_weight and not text_only:  # events show each patch's shape edges and motion (not colour)
                P = ex["labels"]["motion"].shape[0]
                aux = aux + aux_weight * (_aux_ce(heads["shape"], feats[-P:], ex["labels"]["shape"])
                                          + _aux_ce(heads["motion"], feats[-P:], ex["labels"]["motion"])
                                          + _aux_ce(heads["row"], feats[-P:], cells // grid)
                                          + _aux_ce(heads["col"], feats[-P:], cells % grid))
        with capture_attention_inputs(draft.lm, (0,) if look_weight and not text_only else ()) as seen:
            loss, hidden = batch_loss(draft.lm, seqs, return_hidden=True)
        if text_only or not (aux_weight or scene_weight or look_weight):
            return loss
        for b, i in enumerate(idx):
            L, shapes = seqs[b][0].shape[0], data[i]["labels"]["shape"]
            if scene_weight:
                aux = aux + scene_weight * scene_loss(facts, hidden[b, ends[b]:L], data[i]["scene"])
            if look_weight:
                x, cos, sin = (t[b] for t in seen[0])
                probs = attention_rows(draft.lm.layers[0].self_attn, x, cos, sin, slice(ends[b], L), L)
                first_patch = ends[b] - shapes.shape[0]
                keys = {k: first_patch + torch.nonzero(shapes == k + 1).flatten()
                        for k in range(SHAPE_CLASSES - 1) if bool((shapes == k + 1).any())}
                aux = aux + look_weight * look_loss(probs, keys)
        return loss + aux / len(idx), loss.detach()

    score = _held_out_scorer("draft", draft.lm, [draft_example(draft, s) for s in held_out or ()],
                             lambda ex: draft_features(draft, ex["pixels"]), placeholder)

    def write():
        keys = _keys(model_dir)
        updates = _lm_updates(draft.lm, keys, ("model.",), ("lm_head.weight",))
        updates.update(_named(draft.projector, keys, PROJECTOR_PREFIXES, "0.weight"))
        updates.update(_named(draft.adaptor, keys, ADAPTOR_PREFIXES, "weight"))
        probe = "embeddings.patch_embedding.weight"
        if any(p + probe in keys for p in CKPT_TOWER_PREFIXES):
            updates.update(_named(draft.tower, keys, CKPT_TOWER_PREFIXES, probe))
        else:
            clip_dir = resolve_clip_dir(model_dir, read_config(model_dir))
            _write_back(clip_dir, _named(draft.tower, _keys(clip_dir), CLIP_TOWER_PREFIXES, probe))
        _write_back(model_dir, updates)

    return _run("draft", params, step_loss, score, write if save else None, steps=steps, lr=lr, batch=batch,
                n=len(data), seed=seed, log_every=log_every, checkpoint_every=checkpoint_every, stop_at=stop_at)


# ---------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """python -m phide.toy.train OUT_DIR: write the toy pair and train target then draft."""
    import argparse

    from phide.toy.pair import SIZES, write_toy_pair
    from phide.toy.world import make_dataset

    ap = argparse.ArgumentParser(prog="python -m phide.toy.train", description=main.__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--size", choices=sorted(SIZES), default="demo")
    ap.add_argument("--lm-layers", type=int, help="write the pair with this many LM layers (train shallow, "
                    "then grow with phide.toy.grow)")
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps for each model")
    ap.add_argument("--target-steps", type=int, help="override --steps for the target")
    ap.add_argument("--draft-steps", type=int, help="override --steps for the draft")
    ap.add_argument("--only", choices=["target", "draft"], help="train just one of the two")
    ap.add_argument("--checkpoint-every", type=int, default=0, help="write the weights every N steps too")
    ap.add_argument("--stop-at", type=int, default=0, help="end after this many steps of the schedule")
    ap.add_argument("--text-only", action="store_true", help="curriculum stage 1: no visual tokens")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--aux-weight", type=float, default=1.0,
                    help="weight of the renderer-supervised patch losses (phide.toy.supervision); 0 = off")
    ap.add_argument("--scene-weight", type=float, default=1.0,
                    help="weight of the scene-level facts probed at the text positions; 0 = off")
    ap.add_argument("--look-weight", type=float, default=1.0,
                    help="weight of the attention supervision (phide.toy.look); 0 = off")
    ap.add_argument("--held-out", type=int, default=0,
                    help="score on this many held-out samples (world seed 2) at each checkpoint and at the end")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--scenes", type=int, default=256, help="training scenes (all their questions)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=10)
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    if not (out / "target" / "config.json").is_file():
        write_toy_pair(out, size=args.size, seed=args.seed, verbose=True, lm_layers=args.lm_layers)
    else:
        _log(f"{out} already holds a pair: training it further")
    samples = make_dataset(args.scenes, seed=args.seed, questions_per_scene=None)
    _log(f"{len(samples)} training samples from {args.scenes} scenes")
    kw = dict(lr=args.lr, batch=args.batch, seed=args.seed, log_every=args.log_every,
              checkpoint_every=args.checkpoint_every, aux_weight=args.aux_weight, scene_weight=args.scene_weight,
              stop_at=args.stop_at, text_only=args.text_only)
    # held-out scenes come from world seed 2, which training (seed 0) never sees
    held = make_dataset(args.held_out, seed=2, questions_per_scene=1) if args.held_out else None
    kw.update(look_weight=args.look_weight, held_out=held)
    for name, fn, steps in (("target", train_target, args.target_steps), ("draft", train_draft, args.draft_steps)):
        if args.only not in (None, name):
            continue
        steps = steps or args.steps
        losses = fn(out, samples, steps=steps, **kw)
        tail = max(1, min(10, steps))
        print(f"{name} final train loss {sum(losses[-tail:]) / tail:.4f} (mean of last {tail} steps)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
