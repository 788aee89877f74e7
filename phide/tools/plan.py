"""`phide plan`: the planner's view of a deployment.

Default: a projection for the real pair (Video-LLaVA-7B target, EventGPT-7B draft, an EAGLE head)
on one H100 SXM in bf16, from published roofline figures; `--calibration FILE` plans for a machine
measured by `phide calibrate` instead. Both print every candidate schedule's predicted time
and the choice.

Roofline assumptions of the H100 projection (stated, not measured here):
  - 989 TFLOP/s dense bf16 peak, ~60% reached by a long prefill: target prefill 2,073 tokens x
    2 x 7B ≈ 30 TFLOP ≈ 48 ms; draft prefill 641 tokens ≈ 10 TFLOP ≈ 16 ms;
  - 3.35 TB/s HBM, ~65% reached by a decode step: 13.5 GB of bf16 weights ≈ 6.5 ms per step for
    either 7B model; a verify of n tree nodes adds ~0.02 ms per node (still memory bound);
  - EAGLE head: one decoder layer + the LM head ≈ 0.6 GB ≈ 0.3 ms per step;
  - input preparation (decode 8 frames, resize, CLIP towers on the CPU side) ≈ 40 ms during which
    the GPU is idle;
  - an SM split gives the draft a fraction f of the 132 SMs: the target's prefill stretches by
    1/(1-f), the draft's compute-bound prefill takes 16 ms / f, and its memory-bound step
    6.5 ms / min(1, 2f) (about half the SMs saturate HBM bandwidth).
"""

from __future__ import annotations

import json

H100_SMS = 132


def h100_projection(draft_sms=(8, 16, 24, 32)):
    from phide.planner import Costs, SplitCosts

    prefill_t, prefill_d, step = 0.048, 0.016, 0.0065
    splits = []
    for n in draft_sms:
        f = n / H100_SMS
        splits.append(SplitCosts(target_prefill_s=prefill_t / (1 - f), draft_prefill_s=prefill_d / f,
                                 draft_step_s=step / min(1.0, 2 * f), draft_sms=n))
    return Costs(target_prepare_s=0.040, prepare_idle=True, target_prefill_s=prefill_t, target_step_s=step,
                 verify_extra_per_node_s=0.00002, draft_prefill_s=prefill_d, draft_step_s=step,
                 head_step_s=0.0003, splits=splits)


def run_plan(args) -> int:
    import dataclasses

    from phide.planner import Acceptance, Calibration, Planner, load_calibration

    acc = Acceptance(tau=args.tau, window_accept_rate=args.window_accept_rate, samples=1)
    if args.calibration:
        cal, source = load_calibration(args.calibration), str(args.calibration)
        cal = dataclasses.replace(cal, head=acc, draft=acc, mean_new_tokens=args.new_tokens)
    else:
        cal = Calibration(h100_projection(), head=acc, draft=acc, mean_new_tokens=args.new_tokens)
        source = "H100 roofline projection (see phide/tools/plan.py)"
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
