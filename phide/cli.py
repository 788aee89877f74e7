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
    gen.add_argument("--target", required=True, help="target checkpoint directory (HF format)")
    gen.add_argument("--draft", help="draft checkpoint directory (HF format); required unless --mode target-only")
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
    gen.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    _add_spec_args(gen)

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


def cmd_generate(args) -> int:
    from phide.engine import Engine, Request, SpecConfig
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
    events = args.events
    if events is not None and args.allow_pickle:
        from phide.io.events import load_events

        events = load_events(events, allow_pickle=True)
    target = load_adapter(args.target, role="target", device=device, dtype=dtype)
    draft = shared = bridge = None
    if use_draft:
        draft = load_adapter(args.draft, role="draft", device=device, dtype=dtype, clip_dir=args.clip_dir)
        shared, bridge = bridge_vocabularies(target.tokenizer, draft.tokenizer, target.lm.cfg.vocab_size)
    spec = SpecConfig(topk=args.topk, depth=args.depth, budget=args.budget, window_budget=args.window_budget)
    engine = Engine(target, draft, eos_token_ids=_eos_ids(target.tokenizer, target.lm), shared_vocab=shared,
                    spec=spec, vocab_bridge=bridge)
    result = engine.generate(Request(prompt=args.prompt, video=args.video, events=events,
                                     max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                     seed=args.seed, mode=args.mode))
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
