"""phide: lossless speculative decoding, the draft hidden inside the target's prefill.

Commands: generate | trace | calibrate | demo | bench | eval | dsec-clips | plan | distill (their flags and
JSON output, the fixed contract: docs/cli.md). Every command that runs requests loads its pair through
`phide.session.load_session` and runs them through `Session.generate`.

Bad input prints exactly one line `phide: error: ...` on stderr and exits 2; progress goes to
stderr; with --json, stdout carries one JSON object and nothing else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from phide.errors import PhideError
from phide import schedules

QUANT_SCHEMES = ("none", "int8", "nf4", "int4")  # phide.models.quant.SCHEMES (not imported: the CLI starts light)


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


def _positive_float(text: str) -> float:
    value = _nonneg_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be a number > 0")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _add_pair_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--target", required=required, help="target checkpoint directory (HF format)")
    p.add_argument("--draft", help="draft checkpoint directory (HF format); needed by --mode hide / sequential")
    p.add_argument("--head", help="EAGLE-2 or EAGLE-3 head directory (from `phide distill`, or an EAGLE-3 head in "
                   "SGLang/vLLM layout); default: the target directory's eagle_head.* or eagle_head/ if present")
    p.add_argument("--adapter", help="distilled draft adapter directory (from `phide distill`); default: the "
                   "draft directory's own draft_adapter.* if present")
    p.add_argument("--no-head", action="store_true", help="run without an EAGLE head (rounds drafted by the draft)")
    p.add_argument("--no-adapter", action="store_true", help="run the draft without its distilled adapter")
    p.add_argument("--overlap", action="store_true", help="post-verify overlap: the drafter grows the next tree "
                   "while the target verifies (a side stream on a GPU; measured no gain on a 2-core CPU)")
    p.add_argument("--draft-graph", action="store_true", help="the draft's tree steps with static shapes, "
                   "replayed as a CUDA graph on a GPU (captured once per engine)")
    p.add_argument("--clip-dir", help="CLIP ViT-L/14-336 directory for an EventGPT checkpoint whose "
                   "mm_visual_tower path does not exist on this machine")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="auto = float32 on cpu, bfloat16 on cuda")
    p.add_argument("--draft-quant", choices=["auto", *QUANT_SCHEMES], default="auto",
                   help="weight format of the draft's language model: int8 (torchao), nf4 (bitsandbytes), int4 "
                   "(torchao, CUDA only); the answer stays the target's. auto (default): on a GPU the memory "
                   "planner's pick for the card (`phide plan`), on a CPU none. Needs pip install 'phide[quant]'")
    p.add_argument("--target-quant", choices=list(QUANT_SCHEMES), default="none",
                   help="weight format of the target's language model (default none). Quantized, the answer "
                   "is the quantized target's own and may differ from the exact model's (stats say so)")
    _add_spec_args(p)


def _add_request_args(gen: argparse.ArgumentParser) -> None:
    _add_pair_args(gen)
    gen.add_argument("--prompt", required=True, help="prompt text")
    gen.add_argument("--video", help="video file or frame folder (needs a Video-LLaVA target)")
    gen.add_argument("--events", help="event file: DSEC events.h5, .npz, or .npy (needs an EventGPT draft)")
    gen.add_argument("--allow-pickle", action="store_true",
                     help="allow EventGPT's pickled .npy event files (only for files you trust)")
    gen.add_argument("--mode", choices=list(schedules.modes()), default="auto",
                     help="auto (default): the planner picks from this machine's calibration; hide: the draft "
                     "prefills and drafts inside the target's prefill; head-only: the EAGLE head drafts; "
                     "sequential; target-only")
    split = gen.add_mutually_exclusive_group()
    split.add_argument("--draft-sms", type=_positive_int, help="GPU: SMs the draft lane's green context reserves "
                       "while both lanes run (default: the calibration's best split, else no split: a stream each)")
    split.add_argument("--draft-threads", type=_positive_int, help="CPU: intra-op threads the draft lane reserves "
                       "while both lanes run (default: the calibration's best split, else 1)")
    gen.add_argument("--calibration", help="planner calibration file (default: this machine's saved calibration "
                     "of this pair, from `phide calibrate`)")
    gen.add_argument("--max-new-tokens", type=_positive_int, default=64)
    gen.add_argument("--temperature", type=_nonneg_float, default=0.0, help="0 = greedy")
    gen.add_argument("--seed", type=int, default=0)


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tree shape (default: the target directory's tree_shape.json, else phide's defaults)")
    g.add_argument("--topk", type=_positive_int, help="children per expanded draft node (default 4)")
    g.add_argument("--depth", type=_positive_int, help="tree depth per round (default 6)")
    g.add_argument("--budget", type=_positive_int, help="tree nodes per verify, root included (default 24)")
    g.add_argument("--window-depth", type=_positive_int, help="levels of the draft's first tree (default 32)")
    g.add_argument("--window-budget", type=_positive_int,
                   help="nodes of the draft's first tree, grown inside the target prefill in hide (default 64)")


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
                             "adapter) on the target's own answers; also under torchrun --nproc_per_node N")
    distill.add_argument("--target", required=True, help="target checkpoint directory")
    distill.add_argument("--draft", help="draft checkpoint directory: also train its adapter (needs --data)")
    src = distill.add_mutually_exclusive_group()
    src.add_argument("--data", help="directory of paired samples (samples.jsonl with question, video, events)")
    src.add_argument("--prompts", help="text file, one training prompt per line (text-only targets)")
    distill.add_argument("--out", help="run directory: the head (EAGLE-3: config.json + model.safetensors; EAGLE-2: "
                         "eagle_head.*), draft_adapter.*, answers.jsonl, train_log.csv, checkpoints/")
    distill.add_argument("--resume", action="store_true", help="finish the run in --out (after a kill or a stop)")
    distill.add_argument("--head-kind", choices=["eagle3", "eagle2"], default="eagle3",
                         help="eagle3 (default; fuses the target's low/middle/high layers, its own LM head) or eagle2 "
                         "(the target's final features and LM head)")
    distill.add_argument("--features", help="offline features: bf16 files written once into this directory and read "
                         "back each epoch (default: online, the target computes each batch's)")
    distill.add_argument("--max-new-tokens", type=_positive_int, default=128, help="longest target answer (default 128)")
    distill.add_argument("--steps", type=_positive_int, default=400, help="head optimizer steps (default 400)")
    distill.add_argument("--batch", type=_positive_int, default=8,
                         help="samples per optimizer step, all processes together (default 8)")
    distill.add_argument("--micro-batch", type=_positive_int,
                         help="samples per forward in one process (gradients accumulate over the rest of its share; "
                         "default: the whole share on a CPU, 2 on a GPU)")
    distill.add_argument("--lr", type=_nonneg_float, help="peak learning rate (default ~1/width: 3e-3 for a "
                         "128-wide target, ~1e-4 for a 4096-wide one)")
    distill.add_argument("--warmup", type=int, help="linear warm-up steps (default: 5%% of --steps)")
    distill.add_argument("--ttt-steps", "--rollout", dest="ttt_steps", type=_positive_int, default=5,
                         help="training-time test: the head is trained on this many of its own steps (default 5)")
    distill.add_argument("--noise", type=_nonneg_float, default=0.05,
                         help="uniform noise on the input features (EAGLE's robustness trick; default 0.05)")
    distill.add_argument("--draft-vocab", type=_positive_int,
                         help="EAGLE-3: rows of the head's LM head, the most frequent answer ids (default: "
                         "the target's vocabulary, at most 32000)")
    distill.add_argument("--held-out", type=_positive_int, default=32,
                         help="validation samples, the last of the data set (at most a tenth; default 32)")
    distill.add_argument("--validate-every", type=int, default=0,
                         help="validate (head-only τ, acceptance by depth) every N steps (default: at the end only)")
    distill.add_argument("--checkpoint-every", type=_positive_int, default=500, help="steps between checkpoints (default 500)")
    distill.add_argument("--adapter-steps", type=_positive_int, default=300, help="draft adapter training steps (default 300)")
    distill.add_argument("--adapter-batch", type=_positive_int, default=16, help="samples per adapter step (default 16)")
    distill.add_argument("--adapter-rank", type=_positive_int, default=64, help="adapter MLP width (default 64)")
    distill.add_argument("--init-head", help="head directory to go on training (default: a new head)")
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--clip-dir", help="CLIP directory for an EventGPT draft (see generate)")
    distill.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                         help="auto (default): cuda when there is one")
    distill.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                         help="the frozen models' dtype: auto = float32 on cpu, bfloat16 on cuda (the head trains "
                         "in fp32 with bf16 autocast on a GPU)")
    distill.add_argument("--plan", action="store_true", help="print what the run costs (target forwards, disk, GPU "
                         "memory per rank, H100 hours) from the configs alone, and exit")
    distill.add_argument("--samples", type=_positive_int, help="--plan: the data set's size (default: --data's count)")
    distill.add_argument("--gpus", type=_positive_int, default=1, help="--plan: data-parallel ranks")
    distill.add_argument("--json", action="store_true")

    cal = sub.add_parser("calibrate", help="measure this machine's costs for a pair, so `--mode auto` can plan "
                         "(default: the bundled toy pair on toy scenes)")
    _add_pair_args(cal, required=False)
    samples = cal.add_mutually_exclusive_group()
    samples.add_argument("--data", help="directory of paired samples (samples.jsonl) to calibrate on")
    samples.add_argument("--prompts", help="text file, one prompt per line (text-only pairs)")
    cal.add_argument("--samples", type=_positive_int, default=4, help="requests per schedule (default 4)")
    cal.add_argument("--max-new-tokens", type=_positive_int, default=48)
    cal.add_argument("--json", action="store_true")

    ev = sub.add_parser("eval", help="run a pair over a paired data set: results.jsonl (resumable), summary.json, "
                        "summary.png")
    ev.add_argument("data", metavar="DATA", help="paired directory (samples.jsonl: question, video, events)")
    _add_pair_args(ev)
    ev.add_argument("--out", required=True, help="run directory for results.jsonl, summary.json, summary.png")
    ev.add_argument("--modes", default="auto,target-only", help="comma-separated modes per sample "
                    "(default auto,target-only; target-only is the reference for speedup and identical tokens)")
    ev.add_argument("--limit", type=_positive_int, help="the first N samples only")
    ev.add_argument("--max-new-tokens", type=_positive_int, default=64)
    ev.add_argument("--temperature", type=_nonneg_float, default=0.0, help="0 = greedy")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--resume", action="store_true", help="keep the rows RUN_DIR already holds, run the rest")
    ev.add_argument("--json", action="store_true", help="print the summary as one JSON object (no progress bar)")
    ev.add_argument("--ray", metavar="auto|ADDRESS", help="spread the samples over a Ray cluster: auto (the "
                    "cluster RAY_ADDRESS or `ray start` names, else a local one) or its address; needs "
                    "pip install 'phide[scale]'")
    ev.add_argument("--workers", type=_positive_int, help="--ray: engines in the pool (default: one per GPU, "
                    "else the CPUs less one)")
    ev.add_argument("--calibrate", type=_positive_int, metavar="N", help="calibrate the planner on the first N "
                    "samples first (as `phide calibrate --data`; saved for this pair and machine), then run the "
                    "rest: the N calibration samples are left out of the table")

    dsec = sub.add_parser("dsec-clips", help="cut DSEC sequences into a paired directory (8 frames + the "
                          "events each clip ends with, one sample per question) for eval and distill")
    dsec.add_argument("sequences", nargs="+", metavar="SEQUENCE_DIR",
                      help="DSEC sequence directory (events/left/events.h5, images/left/rectified/, "
                      "images/timestamps.txt)")
    dsec.add_argument("--out", required=True, help="paired directory to write")
    dsec.add_argument("--questions", required=True, help="text file, one question per line (every clip gets each)")
    dsec.add_argument("--clip-ms", type=_positive_int, default=1000, help="clip length (default 1000 ms)")
    dsec.add_argument("--event-ms", type=_positive_int, default=50,
                      help="the events the draft reads: the last N ms of each clip (default 50; EventGPT "
                      "refuses 100 ms or more)")
    dsec.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="the demo over many toy scenes: medians, spread, speedups, CSV")
    bench.add_argument("--scenes", type=_positive_int, default=24, help="held-out toy scenes (one question each)")
    bench.add_argument("--max-new-tokens", type=_positive_int, default=48)
    bench.add_argument("--repeats", type=_positive_int, default=1,
                       help="runs per scene and configuration (interleaved); the median-wall run counts")
    bench.add_argument("--configs", help="comma-separated configurations (default: all but 'hide --overlap'; "
                       "target-only always runs: it is the reference)")
    bench.add_argument("--csv", help="CSV to append results to (default: profiling/results/bench_e2e.csv in a "
                       "source checkout, else $PHIDE_HOME/bench_e2e.csv)")
    bench.add_argument("--allow-dirty", action="store_true",
                       help="write rows measured on a tree with uncommitted changes (marked dirty)")
    bench.add_argument("--json", action="store_true")

    plan = sub.add_parser("plan", help="with --gpu-memory: the memory plans of a pair (config files only) and the "
                          "fastest that fits; without: the predicted time per schedule and its choice (default: the "
                          "real 7B pair on an H100, projected)")
    plan.add_argument("--gpu-memory", type=_positive_float, metavar="GB",
                      help="plan the pair's memory for a card of this size, in GiB as nvidia-smi reports it "
                      "(MiB / 1024: a '24 GB' card is 24, an '80 GB' H100 79.6); plans fit in 95%% of it")
    plan.add_argument("--target", help="target checkpoint directory (config.json is enough)")
    plan.add_argument("--draft", help="draft checkpoint directory (config.json is enough)")
    plan.add_argument("--head", help="EAGLE head directory (EAGLE-2 eagle_head.json, or an EAGLE-3 config.json); "
                      "default: the target directory's own (or its eagle_head/)")
    plan.add_argument("--no-head", action="store_true", help="plan without an EAGLE head")
    plan.add_argument("--clip-dir", help="CLIP directory of an EventGPT draft (see generate)")
    plan.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                      help="the unquantized weights' dtype (default bfloat16)")
    plan.add_argument("--calibration", help="plan from a calibration file written by `phide calibrate` (its costs; --tau and the rest as given)")
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
    from phide.session import resolve_device

    return resolve_device(device, dtype)


SHAPE_FIELDS = ("topk", "depth", "budget", "window_depth", "window_budget")


def _runs_target_alone(mode: str) -> bool:
    """A schedule that drafts nothing (target-only) needs no draft or head loaded."""
    sch = schedules.get(mode)
    return not (sch.drafts_rounds or sch.needs_draft)


def session_from_args(args, *, calibration="auto"):
    """The session the pair arguments describe (`phide.session.load_session`: the one loader).
    `--mode target-only` loads the target alone: nothing else would run."""
    from phide.session import load_session

    device, dtype = _resolve_device(args.device, args.dtype)
    shape = {k: getattr(args, k) for k in SHAPE_FIELDS if getattr(args, k, None) is not None}
    mode = getattr(args, "mode", None)
    alone = mode in schedules.names() and _runs_target_alone(mode)
    if args.target_quant != "none":
        print(f"phide: the target is quantized ({args.target_quant}): the answer is the quantized target's own and "
              "may differ from the exact model's", file=sys.stderr)
    return load_session(args.target, None if alone else args.draft, head_dir=args.head, adapter_dir=args.adapter,
                        use_head=not (args.no_head or alone), use_adapter=not args.no_adapter, device=device,
                        dtype=dtype, shape=shape, overlap=args.overlap, draft_graph=args.draft_graph,
                        clip_dir=args.clip_dir, calibration=calibration, draft_quant=args.draft_quant,
                        target_quant=args.target_quant)


def _run_request(args):
    """Load the session per args and run one request through it; returns (result, session)."""
    from phide.engine import Request

    if not args.prompt.strip():
        raise PhideError("the prompt is empty")
    if args.mode in schedules.names() and schedules.get(args.mode).needs_draft and not args.draft:
        raise PhideError(f"--draft is required for --mode {args.mode}")
    events = args.events
    if events is not None and args.allow_pickle:
        from phide.io.events import load_events

        events = load_events(events, allow_pickle=True)
    if args.draft_sms and args.device != "cuda":
        raise PhideError("--draft-sms splits a GPU's SMs: it needs --device cuda (on a CPU: --draft-threads)")
    if args.draft_threads and args.device == "cuda":
        raise PhideError("--draft-threads splits a CPU's cores: on a GPU use --draft-sms")
    split = {"draft_sms": args.draft_sms} if args.draft_sms else (
        {"draft_threads": args.draft_threads} if args.draft_threads else None)
    session = session_from_args(args, calibration=args.calibration or "auto")
    result = session.generate(Request(prompt=args.prompt, video=args.video, events=events,
                                      max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                      seed=args.seed), args.mode, split)
    return result, session


def cmd_generate(args) -> int:
    result, session = _run_request(args)
    text = session.decode(result.token_ids)
    if args.json:
        print(json.dumps({"text": text, "token_ids": result.token_ids, "stats": result.stats}))
    else:
        print(text)
        s = result.stats
        print(f"phide: {s['mode']} ran {s['plan']['schedule']}: {s['new_tokens']} tokens in {s['wall_s']:.3f}s, "
              f"{s['target_forwards']} target forwards, {s['accepted_per_verify']:.2f} tokens/verify",
              file=sys.stderr)
    return 0


def cmd_trace(args) -> int:
    from pathlib import Path

    from phide.runtime.trace import busy_seconds, overlap_seconds, timeline_png, write_chrome_trace

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PhideError(f"cannot create {out}: {exc.strerror}") from None
    result, _ = _run_request(args)
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
        busy = {lane: busy_seconds(result.timeline, lane) * 1e3 for lane in ("target", "draft")}
        print(f"{result.stats['plan']['schedule']}: target lane busy {busy['target']:.1f} ms, draft lane "
              f"{busy['draft']:.1f} ms, both at once {overlap * 1e3:.1f} ms, of {result.stats['wall_s'] * 1e3:.1f} ms")
    return 0


def cmd_calibrate(args) -> int:
    from phide.tools.calibrate import requests_from, run_calibrate

    if args.target is None:  # the bundled toy pair, on toy scenes the demo and bench never measure
        given = [f for f in ("draft", "head", "adapter", "data", "prompts") if getattr(args, f)]
        if given:
            raise PhideError(f"--{given[0]} needs --target (without one, the bundled toy pair is calibrated)")
        from phide.tools.bench import bundled_session, toy_request, toy_samples
        from phide.toy.bundle import CALIBRATION_SEED

        session = bundled_session(calibration=None)
        requests = [toy_request(s, args.max_new_tokens) for s in toy_samples(args.samples, CALIBRATION_SEED)]
    else:
        requests = requests_from(data=args.data, prompts=args.prompts, n=args.samples,
                                 max_new_tokens=args.max_new_tokens)
        session = session_from_args(args, calibration=None)
    return run_calibrate(session, requests, as_json=args.json)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models load from local directories only
    # transformers imports torchao when it is installed (phide[quant]); torch then warns, on every
    # run, that torchao registers Enums the old way. Not the user's concern: keep stderr for phide.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        args = build_parser().parse_args(argv)
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "trace":
            return cmd_trace(args)
        if args.command == "calibrate":
            return cmd_calibrate(args)
        if args.command == "distill":
            from phide.tools.distill import run_distill

            return run_distill(args)
        if args.command == "plan":
            from phide.tools.plan import run_memory_plan, run_plan

            return run_memory_plan(args) if args.gpu_memory is not None else run_plan(args)
        if args.command == "eval":
            from phide.tools.eval_runs import run_eval

            # --calibrate: run_eval sets args.calibration_file once it has calibrated
            return run_eval(args, lambda: session_from_args(
                args, calibration=getattr(args, "calibration_file", None) or "auto"))
        if args.command == "dsec-clips":
            from phide.tools.dsec_clips import run_dsec_clips

            return run_dsec_clips(args)
        if args.command == "bench":
            from phide.tools.bench import run_bench

            return run_bench(args)
        if args.command == "demo":
            from phide.tools.demo import run_demo

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
