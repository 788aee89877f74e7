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
    gen.add_argument("--adapter", help="distilled draft adapter directory (from `phide distill`); default: the "
                     "draft directory's own draft_adapter.* if present")
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

    distill = sub.add_parser("distill", help="train the EAGLE continuation head (and, with --draft, the draft "
                             "adapter) on the target's own answers")
    distill.add_argument("--target", required=True, help="target checkpoint directory")
    distill.add_argument("--draft", help="draft checkpoint directory: also train its adapter (needs --data)")
    src = distill.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="directory of paired samples (samples.jsonl with question, video, events)")
    src.add_argument("--prompts", help="text file, one training prompt per line (text-only targets)")
    distill.add_argument("--out", required=True, help="directory to write eagle_head.* and draft_adapter.* into")
    distill.add_argument("--max-new-tokens", type=_positive_int, default=48)
    distill.add_argument("--steps", type=_positive_int, default=400, help="EAGLE head training steps")
    distill.add_argument("--rollout", type=_positive_int, default=3,
                         help="train the head on its own predictions this many steps ahead (1: teacher forcing only)")
    distill.add_argument("--adapter-steps", type=_positive_int, default=300, help="draft adapter training steps")
    distill.add_argument("--adapter-rank", type=_positive_int, default=64)
    distill.add_argument("--lr", type=_nonneg_float, default=3e-3)
    distill.add_argument("--init-head", help="EAGLE head directory to go on training (default: a new head)")
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--clip-dir", help="CLIP directory for an EventGPT draft (see generate)")
    distill.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="the demo over many toy scenes: medians, spread, speedups, CSV")
    bench.add_argument("--scenes", type=_positive_int, default=24, help="held-out toy scenes (one question each)")
    bench.add_argument("--max-new-tokens", type=_positive_int, default=48)
    bench.add_argument("--repeats", type=_positive_int, default=1,
                       help="runs per scene and configuration (interleaved); the median-wall run counts")
    bench.add_argument("--csv", help="CSV to append results to (default: profiling/results/bench_e2e.csv in a "
                       "source checkout, else $PHIDE_HOME/bench_e2e.csv)")
    bench.add_argument("--json", action="store_true")

    plan = sub.add_parser("plan", help="the planner's predicted time per schedule and its choice (default: the "
                          "real 7B pair on an H100, projected)")
    plan.add_argument("--calibration", help="plan for a machine measured by profiling/calibrate.py instead")
    plan.add_argument("--new-tokens", type=_positive_int, default=64)
    plan.add_argument("--tau", type=_nonneg_float, default=3.5, help="tokens per verify of the round drafter")
    plan.add_argument("--window-accept-rate", type=_nonneg_float, default=0.5,
                      help="share of the first tree's levels the first verify accepts")
    plan.add_argument("--window-steps", type=_positive_int, default=8, help="levels of the first tree")
    plan.add_argument("--json", action="store_true")

    demo = sub.add_parser("demo", help="the bundled toy pair on held-out scenes, in every mode, compared")
    demo.add_argument("--scenes", type=_positive_int, default=4, help="held-out toy scenes to run")
    demo.add_argument("--max-new-tokens", type=_positive_int, default=48)
    demo.add_argument("--out", default="phide-demo", help="directory for timeline.png and trace.json")
    demo.add_argument("--json", action="store_true")
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
    """Load the pair (and head, adapter) per args, run one request; returns (result, target adapter)."""
    from phide.engine import Request, SpecConfig
    from phide.pipeline import load_pair

    if not args.prompt.strip():
        raise PhideError("the prompt is empty")
    if args.mode != "target-only" and not args.draft:
        raise PhideError(f"--draft is required for --mode {args.mode}")
    device, dtype = _resolve_device(args.device, args.dtype)
    use_draft = bool(args.draft) and args.mode != "target-only"
    events = args.events
    if events is not None and args.allow_pickle:
        from phide.io.events import load_events

        events = load_events(events, allow_pickle=True)
    spec = SpecConfig(topk=args.topk, depth=args.depth, budget=args.budget, window_budget=args.window_budget)
    pair = load_pair(args.target, args.draft if use_draft else None, head_dir=args.head, adapter_dir=args.adapter,
                     use_head=args.mode != "target-only", device=device, dtype=dtype, spec=spec,
                     clip_dir=args.clip_dir)
    result = pair.engine.generate(Request(prompt=args.prompt, video=args.video, events=events,
                                          max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                          seed=args.seed, mode=args.mode))
    return result, pair.target


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


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models load from local directories only
    try:
        args = build_parser().parse_args(argv)
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "trace":
            return cmd_trace(args)
        if args.command == "distill":
            from phide.distill_cmd import run_distill

            return run_distill(args)
        if args.command == "plan":
            from phide.plan_cmd import run_plan

            return run_plan(args)
        if args.command == "bench":
            from phide.bench import run_bench

            return run_bench(args)
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
