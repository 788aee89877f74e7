"""`phide distill`: train what drafts for the target, from the target's own answers, at data-set scale.

    phide distill --target DIR (--data PAIRED_DIR | --prompts FILE) --out OUT [--draft DIR]
                  [--head-kind eagle3|eagle2] [--features FEATURES_DIR] [--steps N] [--batch G]
                  [--resume] [--plan]
    torchrun --nproc_per_node N -m phide distill ...   (the same flags; ranks share the samples)

  stage 1  every sample answered by the target alone, greedy (the engine's target-only path):
           OUT/answers.jsonl, a row per sample as it completes (phide.distill.answers)
  stage 2  the head trained on those answers over its own unrolled steps (phide.distill.ttt),
           in padded batches, features from the frozen target per batch (online) or from bf16
           files written once (--features, offline) (phide.distill.features); validated on
           held-out samples with the real engine in head-only (phide.distill.validate):
           OUT/train_log.csv, OUT/train_curve.png; checkpoints in OUT/checkpoints/head
  adapter  with --draft: the draft adapter (strategy B) from the same batches
           (phide.distill.pair): OUT/draft_adapter.*

OUT ends holding the head (EAGLE-3: config.json + model.safetensors in the layout SGLang and vLLM
load; EAGLE-2: eagle_head.*), answers.jsonl, train_log.csv, train_curve.png, distill.json (what
the run is) and report.json (what it measured). A run directory is never overwritten: `--resume`
finishes it (missing answers, missing feature files, training from the newest checkpoint) and
must be the same run. The last held-out tenth of the samples (at most --held-out) is never
trained on. `--plan` prints the cost from the configs alone (phide.distill.cost).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from phide.schedules import TARGET_ONLY
from phide.errors import PhideError
from phide.io.rows import open_run_dir

RUN, REPORT = "distill.json", "report.json"
# What makes two runs the same (a resume must match every one).
RUN_PATHS = ("target", "draft", "data", "prompts", "features", "init_head", "clip_dir")
RUN_ARGS = ("head_kind", "max_new_tokens", "steps", "batch", "micro_batch", "lr", "warmup", "ttt_steps", "noise",
            "draft_vocab", "held_out", "adapter_steps", "adapter_batch", "adapter_rank", "seed", "device", "dtype")


def default_lr(hidden: int) -> float:
    """3e-3 for the toy's 128-wide head, ~1e-4 (SpecForge's recipe) for a 4096-wide one: ~1/width."""
    return 3e-3 * 128 / max(hidden, 128)


def _say(msg: str) -> None:
    from phide.distill import dist

    if dist.is_main():
        print(f"phide: distill: {msg}", file=sys.stderr, flush=True)


def run_distill(args) -> int:
    if args.plan:
        return _plan(args)
    if not (args.data or args.prompts):
        raise PhideError("distill needs --data PAIRED_DIR or --prompts FILE")
    if not args.out:
        raise PhideError("distill needs --out DIR (the run directory)")
    if args.draft and not args.data:
        raise PhideError("--draft (training the draft adapter) needs --data: paired samples the draft can read")
    if args.init_head:
        from phide.models.heads import check_head_dir

        check_head_dir(args.init_head)  # a bad --init-head fails now, not after the target has answered
    items = _items(args)
    out = Path(args.out)
    t0 = time.perf_counter()
    from phide.distill import dist
    from phide.session import resolve_device

    device, dtype = resolve_device(args.device, args.dtype)
    device = dist.init(device)
    try:
        # Rank 0 opens the run directory; every rank learns whether it could (and stops with it).
        problem = None
        if dist.is_main():
            try:
                _open_run(out, _run_identity(args), args.resume)
            except PhideError as exc:
                problem = str(exc)
        problem = dist.broadcast_object(problem)
        if problem:
            raise PhideError(problem)
        report = _distill(args, items, out, device, dtype)
    finally:
        dist.shutdown()
    if report is None:  # not rank 0
        return 0
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / REPORT).write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report))
    else:
        print(_text(report))
    return 0


# ----------------------------------------------------------------------------------- the run
def _items(args) -> list[dict]:
    """The samples as work items ({"sample", "question", "video", "events"}), checked up front."""
    if args.data:
        from phide.tools.eval_runs import paired_items

        items = paired_items(args.data)
    else:
        try:
            prompts = [ln.strip() for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise PhideError(f"cannot read prompts file {args.prompts}: {exc}") from None
        items = [{"sample": str(i), "question": p} for i, p in enumerate(prompts)]
    if len(items) < 2:
        raise PhideError(f"{args.data or args.prompts} has {len(items)} sample(s): distill needs at least 2 "
                         "(held-out samples validate the head)")
    if len({it["sample"] for it in items}) != len(items):
        raise PhideError(f"{args.data}: sample ids repeat (the manifest's \"id\" values must be unique)")
    return items


def _run_identity(args) -> dict:
    ident = {k: str(Path(getattr(args, k)).resolve()) if getattr(args, k, None) else None for k in RUN_PATHS}
    ident.update({k: getattr(args, k, None) for k in RUN_ARGS})
    return ident


def _open_run(out: Path, run: dict, resume: bool) -> None:
    started = (out / RUN).is_file() or (out / "answers.jsonl").is_file()
    if started and not resume and out.is_dir():
        raise PhideError(f"{out} already holds a distillation: pass --resume to finish it, or another --out")
    open_run_dir(out, RUN, run, resume)


def _distill(args, items: list[dict], out: Path, device: str, dtype) -> dict | None:
    import torch

    from phide.distill import dist
    from phide.distill.answers import answer_samples
    from phide.distill.features import Entry, item_request
    from phide.session import load_session

    torch.manual_seed(args.seed)
    if device == "cpu" and dist.world_size() > 1:  # the ranks share the machine's cores
        import os

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.world_size()))
    session = load_session(args.target, args.draft, use_head=False, use_adapter=False, device=device, dtype=dtype,
                           clip_dir=args.clip_dir, calibration=None)
    engine = session.engine
    if args.draft and engine.bridge is not None:
        raise PhideError("the draft adapter needs a draft that shares the target's vocabulary; this pair maps "
                         "tokens through text")

    def generate(item):
        res = engine.generate(item_request(item, args.max_new_tokens), TARGET_ONLY)
        return res.token_ids, session.decode(res.token_ids)

    answers = answer_samples(generate, items, out, quiet=args.json)
    entries = [Entry(i, it, list(answers[str(it["sample"])]["token_ids"])) for i, it in enumerate(items)]
    held = max(1, min(args.held_out, len(entries) // 10))
    train, test = entries[:-held], entries[-held:]
    _say(f"{len(entries)} answers ({len(train)} to train on, {held} held out)")
    report = {"out": str(out), "head_kind": args.head_kind, "samples": len(entries), "train_samples": len(train),
              "held_out": held, "ranks": dist.world_size()}
    head, source, lr = _train_head(args, engine, train, test, out, device, report)
    if args.draft:
        _train_adapter(args, engine, source, train, test, out, lr, report)
    if not dist.is_main():
        return None
    _save_head(head, args.head_kind, out, report)
    from phide.distill.validate import plot_curve

    png = plot_curve(out / "train_log.csv", out / "train_curve.png")
    report["train_curve"] = str(png) if png else None
    return report


def _source(args, engine, entries, capture, out: Path):
    """Online (the frozen target per batch) or offline (--features: files written now, then read)."""
    from phide.distill import dist
    from phide.distill.features import (OfflineSource, OnlineSource, features_identity, open_features_dir,
                                        write_features)

    online = OnlineSource(engine, capture)
    if not args.features:
        return online
    root = Path(args.features)
    ident = features_identity(engine, capture, with_draft=bool(args.draft))
    if dist.is_main():
        open_features_dir(root, ident, create=True)
    dist.barrier()
    open_features_dir(root, ident, create=False)
    mine = entries[dist.rank()::dist.world_size()]
    n = write_features(online, mine, root, with_draft=bool(args.draft), batch=args.micro_batch or 4, quiet=args.json)
    if n:
        _say(f"wrote {n} feature files to {root}")
    dist.barrier()
    return OfflineSource(root, capture, engine.target)


def _train_head(args, engine, train, test, out: Path, device, report: dict):
    import torch

    from phide.distill import dist
    from phide.distill.head import HeadObjective, answer_counts, new_head
    from phide.distill.trainer import TrainConfig, train as run_train
    from phide.distill.validate import val_columns, validate_head

    target = engine.target
    if args.init_head:
        from phide.models.heads import load_head

        head = load_head(args.init_head, target_cfg=target.cfg, device=target.device)
        if head.kind != args.head_kind:
            raise PhideError(f"--init-head {args.init_head} is an {head.kind} head, --head-kind is {args.head_kind}")
    else:
        counts = answer_counts([e.answer for e in train], target.cfg.vocab_size) if args.head_kind == "eagle3" else None
        head = new_head(args.head_kind, target, draft_vocab=args.draft_vocab, answer_counts=counts)
    head = head.float().train()  # fp32 master weights; bf16 autocast on a GPU
    source = _source(args, engine, train + test, head.capture, out)
    lr = args.lr if args.lr is not None else default_lr(target.cfg.hidden_size)
    world = dist.world_size()
    micro = args.micro_batch or (max(1, args.batch // world) if device == "cpu" else 2)
    cfg = TrainConfig(steps=args.steps, batch=args.batch, micro_batch=micro, lr=lr,
                      warmup=args.warmup if args.warmup is not None else max(1, args.steps // 20), seed=args.seed,
                      checkpoint_every=args.checkpoint_every, validate_every=args.validate_every)
    objective = HeadObjective(head, source, target.lm_head.weight, ttt_steps=args.ttt_steps, noise=args.noise,
                              seed=args.seed)
    cols = val_columns(engine.spec.depth, args.ttt_steps)

    def validate(step: int) -> dict:
        return validate_head(engine, head, test, source, max_new_tokens=args.max_new_tokens, ttt_steps=args.ttt_steps)

    _say(f"training the {args.head_kind} head: {args.steps} steps x {args.batch} samples ({world} rank(s), "
         f"micro-batch {micro}), lr {lr:g}, {args.ttt_steps} unrolled steps, features "
         f"{'from ' + str(args.features) if args.features else 'online'}")
    rows = run_train(objective, head, train, cfg, ckpt_dir=out / "checkpoints" / "head", resume=args.resume,
                     log_path=out / "train_log.csv", validate=validate, desc=f"{args.head_kind} head", quiet=args.json,
                     val_columns=cols)
    head.eval()
    if dist.is_main():
        last = rows[-1] if rows else {}
        final = {k: v for k, v in last.items() if k.startswith("val_")}
        if not final:  # resumed after the last step: validate what was trained
            final = validate(args.steps)
        report.update(steps=args.steps, lr=lr, micro_batch=micro,
                      samples_per_s=round(sum(r["samples_per_s"] for r in rows[-10:]) / max(1, len(rows[-10:])), 2)
                      if rows else None,
                      final_loss=last.get("loss"), **{k: (round(v, 4) if isinstance(v, float) else v)
                                                      for k, v in final.items()})
    torch.manual_seed(args.seed + 1)
    return head, source, lr


def _train_adapter(args, engine, source, train, test, out: Path, lr: float, report: dict) -> None:
    import torch

    from phide.distill import dist
    from phide.distill.pair import AdapterObjective, agreement
    from phide.distill.trainer import TrainConfig, train as run_train
    from phide.models.draft_adapter import DraftAdapter

    lm = engine.draft
    vocab = engine.shared_vocab
    torch.manual_seed(args.seed)
    adapter = DraftAdapter(lm.cfg.hidden_size, args.adapter_rank, lm.lm_head).to(lm.device).float()

    def draft_own(h):
        return lm.logits(h.to(device=lm.device, dtype=lm.dtype))

    def adapted(h):
        return adapter.logits(h.to(device=lm.device, dtype=adapter.w_in.weight.dtype))

    if dist.is_main():
        report["draft_top1_held_out_before"] = round(agreement(draft_own, source, test, vocab), 4)
    cfg = TrainConfig(steps=args.adapter_steps, batch=args.adapter_batch,
                      micro_batch=max(1, args.adapter_batch // dist.world_size()), lr=lr,
                      warmup=max(1, args.adapter_steps // 20), seed=args.seed + 7,
                      checkpoint_every=args.checkpoint_every, clip=1.0, betas=(0.9, 0.999))
    _say(f"training the draft adapter: {args.adapter_steps} steps x {args.adapter_batch} samples")
    run_train(AdapterObjective(adapter, source, engine.target.lm_head.weight, vocab), adapter, train, cfg,
              ckpt_dir=out / "checkpoints" / "adapter", resume=args.resume, log_path=out / "adapter_log.csv",
              desc="draft adapter", quiet=args.json)
    adapter.eval()
    if dist.is_main():
        report["draft_top1_held_out_after"] = round(agreement(adapted, source, test, vocab), 4)
        adapter.save(out)


def _save_head(head, kind: str, out: Path, report: dict) -> None:
    """The head at the top of OUT: EAGLE-3 in SGLang/vLLM's layout (bf16), EAGLE-2 in phide's files."""
    if kind == "eagle3":
        head.save(out, extra={"kind": "eagle3", "trained_by": "phide distill", "steps": report.get("steps")})
    else:
        head.save(out)


def _text(report: dict) -> str:
    lines = [f"wrote the {report['head_kind']} head to {report['out']} ({report['train_samples']} samples trained on, "
             f"{report['held_out']} held out, {report.get('samples_per_s')} samples/s)"]
    if report.get("val_tau") is not None:
        acc = ", ".join(f"d{k[12:]} {v:.2f}" for k, v in report.items() if k.startswith("val_accept_d"))
        top = ", ".join(f"{v:.2f}" for k, v in report.items() if k.startswith("val_top1_step"))
        lines.append(f"held out, head-only: τ {report['val_tau']:.2f}, identical {report['val_identical']:.0%}; "
                     f"acceptance by depth {acc}; top-1 by unrolled step {top}")
    if "draft_top1_held_out_after" in report:
        lines.append(f"wrote the draft adapter to {report['out']}: the draft's top-1 agreement with the target on "
                     f"held-out answers {report['draft_top1_held_out_before']:.2f} before, "
                     f"{report['draft_top1_held_out_after']:.2f} after")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- --plan
def _plan(args) -> int:
    from phide.distill.cost import distill_plan, format_plan

    samples = args.samples
    if samples is None and args.data:
        from phide.io.paired import read_paired_dir

        samples = len(read_paired_dir(args.data))
    elif samples is None and args.prompts:
        samples = sum(1 for ln in Path(args.prompts).read_text().splitlines() if ln.strip())
    if samples is None:
        raise PhideError("--plan needs --samples N (or --data / --prompts to count them)")
    plan = distill_plan(args.target, args.draft, head_kind=args.head_kind, samples=samples,
                        max_new_tokens=args.max_new_tokens, steps=args.steps, batch=args.batch,
                        micro_batch=args.micro_batch or 2, ttt_steps=args.ttt_steps, gpus=args.gpus,
                        features="offline" if args.features else "online",
                        adapter_steps=args.adapter_steps if args.draft else 0, adapter_batch=args.adapter_batch,
                        held_out=max(1, min(args.held_out, samples // 10)),
                        validations=max(1, args.steps // args.validate_every) if args.validate_every else 1,
                        draft_vocab=args.draft_vocab)
    print(json.dumps(plan) if args.json else format_plan(plan))
    return 0
