"""Command line: `phide generate` and `phide demo` (the contract is in ARCHITECTURE.md).

Bad input prints exactly one line `phide: error: ...` on stderr and exits 2; progress goes to
stderr; with --json, stdout carries one JSON object and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from phide.errors import PhideError


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one `phide: error:` line (no usage dump)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise PhideError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _add_request_args(gen: argparse.ArgumentParser) -> None:
    gen.add_argument("--target", required=True, help="target checkpoint directory (HF format)")
    gen.add_argument("--draft", help="draft checkpoint directory (HF format); required unless --mode target-only")
    gen.add_argument("--head", help="EAGLE continuation head directory (from `phide distill`); default: the "
                     "target directory's own eagle_head.* if present")
    gen.add_argument("--prompt", required=True, help="prompt text")
    gen.add_argument("--video", help="video file or frame folder (needs a Video-LLaVA target)")
    gen.add_argument("--events", help="event file: DSEC events.h5, .npz, or .npy (needs an EventGPT draft)")
    gen.add_argument("--clip-dir", help="CLIP ViT-L/14-336 directory for an EventGPT checkpoint whose "
                     "mm_visual_tower path does not exist on this machine")
    gen.add_argument("--allow-pickle", action="store_true",
                     help="allow EventGPT's pickled .npy event files (only for files you trust)")
    gen.add_argument("--mode", choices=["hide", "sequential", "target-only"], default="hide")
    gen.add_argument("--max-new-tokens", type=_positive_int, default=64)
    gen.add_argument("--temperature", type=_nonneg_float, default=0.0, help="0 = greedy")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    gen.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                     help="auto = float32 on cpu, bfloat16 on cuda")
    _add_spec_args(gen)


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speculation")
    g.add_argument("--topk", type=_positive_int, default=4, help="children per expanded draft node")
    g.add_argument("--depth", type=_positive_int, default=6, help="tree depth per round")
    g.add_argument("--budget", type=_positive_int, default=24, help="tree nodes per verify (root included)")
    g.add_argument("--window-budget", type=_positive_int, default=64,
                   help="nodes of the first tree, grown inside the target prefill (hide mode)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="phide", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, required=True)

    gen = sub.add_parser("generate", help="generate with a target and a draft from local checkpoints")
    _add_request_args(gen)
    gen.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    trace = sub.add_parser("trace", help="run one request and write its Chrome trace and timeline PNG")
    _add_request_args(trace)
    trace.add_argument("--out", required=True, help="output directory for trace.json and timeline.png")
    trace.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    distill = sub.add_parser("distill", help="train the EAGLE continuation head on a target's own answers")
    distill.add_argument("--target", required=True, help="target checkpoint directory (text LLaMA)")
    distill.add_argument("--prompts", required=True, help="text file, one training prompt per line")
    distill.add_argument("--out", required=True, help="directory to write eagle_head.safetensors/.json into")
    distill.add_argument("--max-new-tokens", type=_positive_int, default=48)
    distill.add_argument("--steps", type=_positive_int, default=400)
    distill.add_argument("--lr", type=_nonneg_float, default=3e-3)
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--json", action="store_true")

    demo = sub.add_parser("demo", help="run the embedded default pair in every mode and compare")
    demo.add_argument("--json", action="store_true")
    demo.add_argument("--max-new-tokens", type=_positive_int, default=32)
    return parser


def _version() -> str:
    from phide import __version__

    return f"phide {__version__}"


def _resolve_device(device: str, dtype: str):
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise PhideError("--device cuda requested but no CUDA device is available")
    if dtype == "auto":
        return device, torch.float32 if device == "cpu" else torch.bfloat16
    return device, getattr(torch, dtype)


def _run_request(args):
    """Load the pair (and head) per args, run one request; returns (result, target adapter)."""
    from phide.engine import Engine, Request, SpecConfig
    from phide.models.eagle import has_eagle_head, load_eagle_head
    from phide.models.loading import read_config
    from phide.models.registry import load_adapter
    from phide.models.vocab import bridge_vocabularies

    if not args.prompt.strip():
        raise PhideError("the prompt is empty")
    if args.mode != "target-only" and not args.draft:
        raise PhideError(f"--draft is required for --mode {args.mode}")
    device, dtype = _resolve_device(args.device, args.dtype)
    use_draft = bool(args.draft) and args.mode != "target-only"
    read_config(args.target)  # fail fast on a bad directory, before any loading
    if use_draft:
        read_config(args.draft)
    head_dir = args.head or (args.target if has_eagle_head(args.target) else None)
    events = args.events
    if events is not None and args.allow_pickle:
        from phide.io.events import load_events

        events = load_events(events, allow_pickle=True)
    target = load_adapter(args.target, role="target", device=device, dtype=dtype)
    draft = shared = bridge = head = None
    if use_draft:
        draft = load_adapter(args.draft, role="draft", device=device, dtype=dtype, clip_dir=args.clip_dir)
        shared, bridge = bridge_vocabularies(target.tokenizer, draft.tokenizer, target.lm.cfg.vocab_size)
    if head_dir is not None and args.mode != "target-only":
        head = load_eagle_head(head_dir, target_cfg=target.lm.cfg, device=device, dtype=dtype)
    spec = SpecConfig(topk=args.topk, depth=args.depth, budget=args.budget, window_budget=args.window_budget)
    engine = Engine(target, draft, eos_token_ids=_eos_ids(target.tokenizer, target.lm), shared_vocab=shared,
                    spec=spec, vocab_bridge=bridge, head=head)
    result = engine.generate(Request(prompt=args.prompt, video=args.video, events=events,
                                     max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                     seed=args.seed, mode=args.mode))
    return result, target


def cmd_generate(args) -> int:
    result, target = _run_request(args)
    text = target.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    if args.json:
        print(json.dumps({"text": text, "token_ids": result.token_ids, "stats": result.stats}))
    else:
        print(text)
        s = result.stats
        print(f"phide: {s['mode']}: {s['new_tokens']} tokens in {s['wall_s']:.3f}s, "
              f"{s['target_forwards']} target forwards, {s['accepted_per_verify']:.2f} tokens/verify",
              file=sys.stderr)
    return 0


def cmd_trace(args) -> int:
    from pathlib import Path

    from phide.runtime.trace import overlap_seconds, timeline_png, write_chrome_trace

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PhideError(f"cannot create {out}: {exc.strerror}") from None
    result, target = _run_request(args)
    trace_path = write_chrome_trace(result.timeline, out / "trace.json", metadata={"stats": result.stats})
    try:
        png_path = timeline_png(result.timeline, out / "timeline.png", title=f"phide {args.mode}: {args.prompt[:60]}")
    except ImportError as exc:
        raise PhideError(f"the timeline PNG needs matplotlib ({exc}); pip install matplotlib") from None
    overlap = overlap_seconds(result.timeline)
    if args.json:
        print(json.dumps({"trace": str(trace_path), "timeline_png": str(png_path), "overlap_s": overlap,
                          "token_ids": result.token_ids, "stats": result.stats}))
    else:
        print(f"wrote {trace_path} (open in https://ui.perfetto.dev) and {png_path}")
        print(f"lanes overlapped for {overlap * 1e3:.1f} ms of {result.stats['wall_s'] * 1e3:.1f} ms")
    return 0


def cmd_distill(args) -> int:
    from pathlib import Path

    from phide.distill import Sequence, head_top1_accuracy, train_eagle_head
    from phide.engine import Engine, Request
    from phide.models.loading import load_llama, load_tokenizer, progress, read_config

    read_config(args.target)
    try:
        prompts = [ln.strip() for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise PhideError(f"cannot read prompts file {args.prompts}: {exc}") from None
    if len(prompts) < 2:
        raise PhideError("--prompts needs at least 2 non-empty lines (one is held out for evaluation)")
    tok = load_tokenizer(args.target)
    target = load_llama(args.target, label="target")
    engine = Engine(target, eos_token_ids=_eos_ids(tok, target))
    seqs = []
    for i, p in enumerate(prompts):
        ids = list(tok(p)["input_ids"])
        out = engine.generate(Request(prompt_ids=ids, max_new_tokens=args.max_new_tokens, mode="target-only"))
        seqs.append(Sequence(ids + out.token_ids))
        if (i + 1) % 20 == 0 or i + 1 == len(prompts):
            progress(f"distill: target answered {i + 1}/{len(prompts)} prompts")
    held = max(1, len(seqs) // 10)
    head = train_eagle_head(target, seqs[:-held], steps=args.steps, lr=args.lr, seed=args.seed)
    head.save(args.out)
    report = {"out": str(args.out), "train_sequences": len(seqs) - held, "held_out": held,
              "train_top1": head_top1_accuracy(target, head, seqs[:-held]),
              "held_out_top1": head_top1_accuracy(target, head, seqs[-held:])}
    print(json.dumps(report) if args.json else
          f"wrote the EAGLE head to {args.out}: top-1 agreement with the target "
          f"{report['train_top1']:.2f} (train), {report['held_out_top1']:.2f} (held out)")
    return 0


def _eos_ids(tokenizer, model) -> list[int]:
    ids = set(model.cfg.eos_token_id)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models load from local directories only
    try:
        args = build_parser().parse_args(argv)
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "trace":
            return cmd_trace(args)
        if args.command == "distill":
            return cmd_distill(args)
        if args.command == "demo":
            from phide.demo import run_demo

            return run_demo(args)
    except PhideError as exc:
        print(f"phide: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("phide: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
