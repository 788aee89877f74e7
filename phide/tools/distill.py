"""`phide distill`: train what drafts for the target, from the target's own answers.

  --prompts FILE   text-only targets: the EAGLE continuation head on the target's answers to prompts.
  --data DIR       paired (video, events, question) samples (`phide.io.paired`): the EAGLE head on the
                   target's multimodal features and, with --draft, the draft adapter (strategy B).

One tenth of the prompts / samples (at least one) is held out and reported: top-1 agreement with
the target of the head, and of the draft before and after its adapter.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from phide.errors import PhideError


def _report(args, report: dict, text: str) -> int:
    print(json.dumps(report) if args.json else text)
    return 0


def _init_head(args, target):
    """--init-head DIR: go on training that head (e.g. on more data, at a lower --lr)."""
    if not getattr(args, "init_head", None):
        return None
    from phide.models.eagle import load_eagle_head

    return load_eagle_head(args.init_head, target_cfg=target.cfg)


def run_distill(args) -> int:
    if args.draft and not args.data:
        raise PhideError("--draft (training the draft adapter) needs --data: paired samples the draft can read")
    if getattr(args, "init_head", None):
        from phide.models.eagle import load_eagle_head

        load_eagle_head(args.init_head)  # a bad --init-head fails now, not after the target has answered
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PhideError(f"cannot create {args.out}: {exc.strerror}") from None
    return _distill_paired(args) if args.data else _distill_prompts(args)


def _distill_prompts(args) -> int:
    from phide.distill.head import Sequence, head_top1_accuracy, train_eagle_head
    from phide.engine import Engine, Request
    from phide.models.loading import llama_config, load_llama, load_tokenizer, progress, read_config
    from phide.session import eos_ids

    llama_config(read_config(args.target), str(Path(args.target) / "config.json"))  # before the tokenizer
    try:
        prompts = [ln.strip() for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise PhideError(f"cannot read prompts file {args.prompts}: {exc}") from None
    if len(prompts) < 2:
        raise PhideError("--prompts needs at least 2 non-empty lines (one is held out for evaluation)")
    tok = load_tokenizer(args.target)
    target = load_llama(args.target, label="target")
    engine = Engine(target, eos_token_ids=eos_ids(tok, target))
    seqs = []
    for i, p in enumerate(prompts):
        ids = list(tok(p)["input_ids"])
        out = engine.generate(Request(prompt_ids=ids, max_new_tokens=args.max_new_tokens), "target-only")
        seqs.append(Sequence(ids + out.token_ids))
        if (i + 1) % 20 == 0 or i + 1 == len(prompts):
            progress(f"distill: target answered {i + 1}/{len(prompts)} prompts")
    held = max(1, len(seqs) // 10)
    head = train_eagle_head(target, seqs[:-held], steps=args.steps, lr=args.lr, seed=args.seed,
                            rollout=args.rollout, head=_init_head(args, target))
    head.save(args.out)
    report = {"out": str(args.out), "train_sequences": len(seqs) - held, "held_out": held,
              "train_top1": head_top1_accuracy(target, head, seqs[:-held]),
              "held_out_top1": head_top1_accuracy(target, head, seqs[-held:])}
    return _report(args, report, f"wrote the EAGLE head to {args.out}: top-1 agreement with the target "
                                 f"{report['train_top1']:.2f} (train), {report['held_out_top1']:.2f} (held out)")


def _distill_paired(args) -> int:
    import torch

    from phide.distill.head import head_top1_accuracy, train_eagle_head
    from phide.distill.pair import agreement, collect, train_draft_adapter
    from phide.models.draft_adapter import DraftAdapter
    from phide.io.paired import read_paired_dir
    from phide.session import load_session

    t0 = time.perf_counter()
    samples = read_paired_dir(args.data, min_samples=2)  # the whole manifest is checked before loading
    session = load_session(args.target, args.draft, use_head=False, use_adapter=False, clip_dir=args.clip_dir,
                           calibration=None)
    engine = session.engine
    if args.draft and engine.bridge is not None:
        raise PhideError("the draft adapter needs a draft that shares the target's vocabulary; this pair "
                         "maps tokens through text")
    vocab = engine.shared_vocab if args.draft else engine.target.cfg.vocab_size
    examples = collect(engine, samples, max_new_tokens=args.max_new_tokens, vocab=vocab)
    held = max(1, len(examples) // 10)
    train, test = examples[:-held], examples[-held:]
    head = train_eagle_head(engine.target, [e.head_seq for e in train], steps=args.steps, lr=args.lr,
                            seed=args.seed, rollout=args.rollout, head=_init_head(args, engine.target))
    head.save(args.out)
    report = {"out": str(args.out), "train_samples": len(train), "held_out": held,
              "head_top1_train": head_top1_accuracy(engine.target, head, [e.head_seq for e in train]),
              "head_top1_held_out": head_top1_accuracy(engine.target, head, [e.head_seq for e in test]),
              # k steps ahead, reading its own predictions (tree level k), over the answers' span
              "head_top1_held_out_by_depth": {k: head_top1_accuracy(engine.target, head, [e.head_seq for e in test],
                                                                    depth=k, tail=32) for k in (1, 2, 3, 4)}}
    text = (f"wrote the EAGLE head to {args.out}: top-1 agreement with the target "
            f"{report['head_top1_train']:.2f} (train), {report['head_top1_held_out']:.2f} (held out)")
    if args.draft:
        lm = engine.draft
        torch.manual_seed(args.seed)
        adapter = DraftAdapter(lm.cfg.hidden_size, args.adapter_rank, lm.lm_head).to(lm.device)

        def draft_own(h):
            return lm.logits(h.to(device=lm.device, dtype=lm.dtype))

        def adapted(h):
            return adapter.logits(h.to(device=lm.device, dtype=lm.dtype))

        report["draft_top1_held_out_before"] = agreement(draft_own, test, vocab)
        train_draft_adapter(adapter, train, vocab=vocab, steps=args.adapter_steps, lr=args.lr, seed=args.seed)
        report["draft_top1_held_out_after"] = agreement(adapted, test, vocab)
        report["draft_top1_train_after"] = agreement(adapted, train, vocab)
        adapter.save(args.out)
        text += (f"\nwrote the draft adapter to {args.out}: the draft's top-1 agreement with the target on "
                 f"held-out answers {report['draft_top1_held_out_before']:.2f} before, "
                 f"{report['draft_top1_held_out_after']:.2f} after")
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    return _report(args, report, text)
