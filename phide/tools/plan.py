"""`phide plan`: the planner's view of a deployment.

With `--gpu-memory GB --target DIR --draft DIR`: the memory plans of the pair on a card of that
size, from config files alone (phide.memory_plan), and the fastest that fits with the target
exact. Without: the schedules. Default: a projection for the real pair (Video-LLaVA-7B target, EventGPT-7B draft, an EAGLE head)
on one H100 SXM in bf16, from published roofline figures; `--calibration FILE` plans for a machine
measured by `phide calibrate` instead. Both print every candidate schedule's predicted time
and the choice.

The H100 roofline assumptions are in phide.planner.h100_projection.
"""

from __future__ import annotations

import json

from phide.errors import PhideError


def run_plan(args) -> int:
    import dataclasses

    given = [f for f in ("target", "draft", "head", "clip_dir") if getattr(args, f, None)]
    if given:
        raise PhideError(f"--{given[0].replace('_', '-')} plans memory: it needs --gpu-memory")

    from phide.planner import Acceptance, Calibration, Planner, h100_projection, load_calibration

    acc = Acceptance(tau=args.tau, window_accept_rate=args.window_accept_rate, samples=1)
    if args.calibration:
        cal, source = load_calibration(args.calibration), str(args.calibration)
        cal = dataclasses.replace(cal, head=acc, draft=acc, mean_new_tokens=args.new_tokens)
    else:
        cal = Calibration(h100_projection(), head=acc, draft=acc, mean_new_tokens=args.new_tokens)
        source = "H100 roofline projection (see phide.planner.h100_projection)"
    report = {"source": source, "new_tokens": args.new_tokens, "tau": args.tau,
              "window_accept_rate": args.window_accept_rate, "costs": dataclasses.asdict(cal.costs), "plans": {}}
    for name, has_head in (("with_head", True), ("draft_only", False)):
        planner = Planner(cal, has_draft=True, has_head=has_head, window_steps=args.window_steps)
        plan = planner.decide(args.new_tokens, "auto")
        report["plans"][name] = {**plan.as_stats(), "predictions": planner.predictions(args.new_tokens)}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{source}; {args.new_tokens} new tokens, tau {args.tau}, window acceptance {args.window_accept_rate}")
    for name, plan in report["plans"].items():
        split = f" ({plan['draft_sms']} SMs)" if plan["draft_sms"] else (
            f" ({plan['draft_threads']} threads)" if plan["draft_threads"] else "")
        print(f"\n{name}: choose {plan['schedule']}{split} - {plan['reason']}")
        for label, t in sorted(plan["predictions"].items(), key=lambda kv: kv[1]):
            print(f"  {label:16} {t * 1e3:8.1f} ms")
    return 0


def run_memory_plan(args) -> int:
    """Print every memory plan of the pair and the chosen one (exit 2 when none fits)."""
    import dataclasses
    import sys

    from phide import memory_plan as mp
    from phide.engine import SpecConfig
    from phide.planner import load_calibration
    from phide.session import tree_shape

    if not args.target:
        raise PhideError("--gpu-memory plans a pair: it needs --target (and --draft)")
    spec = SpecConfig(**tree_shape(args.target))
    head = None if args.no_head else (args.head or "auto")
    pair = mp.PairShape.read(args.target, args.draft, head_dir=head, clip_dir=args.clip_dir)
    cal = mp.default_calibration(args.tau, args.window_accept_rate, args.new_tokens)
    source = "H100 roofline projection (phide.planner.h100_projection)"
    if args.calibration:
        cal = dataclasses.replace(load_calibration(args.calibration), head=cal.head, draft=cal.draft,
                                  mean_new_tokens=args.new_tokens)
        source = str(args.calibration)
    candidates = mp.plans(pair, args.gpu_memory, cal=cal, spec=spec, max_new=args.new_tokens, dtype=args.dtype)
    chosen = mp.choose(candidates)
    missing = None if chosen is not None else mp.shortfall(candidates, args.gpu_memory)
    if args.json:
        print(json.dumps({"gpu_memory_gb": args.gpu_memory, "plans": [p.as_json() for p in candidates],
                          "chosen": chosen.name if chosen else None, "new_tokens": args.new_tokens,
                          "headroom": mp.HEADROOM, "speed_source": source, "speed_assumptions": mp.SPEED_SOURCES,
                          **({"missing": missing} if missing else {})}))
    else:
        print(f"{args.gpu_memory:g} GB card (a plan fits in {1 - mp.HEADROOM:.0%} of it), {args.new_tokens} new tokens; "
              f"speed: {source}, weight formats projected (see --json speed_assumptions)")
        print(f"  {'plan':24} {'target':>7} {'draft':>7} {'GB':>7}  fits  speedup")
        for p in candidates:
            mark = "->" if p is chosen else "  "
            fits = ("yes" if p.fits else "no") + ("" if p.runnable else "*")
            print(f"{mark}{p.name:24} {p.target_quant:>7} {p.draft_quant or '-':>7} {p.predicted_gb:7.2f}  "
                  f"{fits:4} {p.predicted_speedup:6.2f}x")
        for note in sorted({p.note for p in candidates if p.note}):
            print(f"  {'*' if any(not p.runnable and p.note == note for p in candidates) else ' '} {note}")
        if chosen is not None:
            why = "the fastest that fits" + (" with the target exact" if chosen.target_quant == "none" else
                                              "; no plan with the target exact fits: the answer is the quantized target's")
            print(f"chosen: {chosen.name} ({why})")
    if missing:
        print(f"phide: error: {missing}", file=sys.stderr)
        return 2
    return 0
