"""`phide plan`: the planner's view of a deployment.

Default: a projection for the real pair (Video-LLaVA-7B target, EventGPT-7B draft, an EAGLE head)
on one H100 SXM in bf16, from published roofline figures; `--calibration FILE` plans for a machine
measured by `profiling/calibrate.py` instead. Both print every candidate schedule's predicted time
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
        splits.append(SplitCosts(draft_share=round(f, 4), target_prefill_s=prefill_t / (1 - f),
                                 draft_prefill_s=prefill_d / f, draft_step_s=step / min(1.0, 2 * f)))
    return Costs(target_prepare_s=0.040, prepare_idle=True, target_prefill_s=prefill_t, target_step_s=step,
                 verify_extra_per_node_s=0.00002, draft_prefill_s=prefill_d, draft_step_s=step,
                 head_step_s=0.0003, splits=splits)


def run_plan(args) -> int:
    import dataclasses

    from phide.planner import Acceptance, choose, load_costs

    if args.calibration:
        costs, source = load_costs(args.calibration), str(args.calibration)
    else:
        costs, source = h100_projection(), "H100 roofline projection (see phide/plan_cmd.py)"
    acc = Acceptance(tau=args.tau, window_accept_rate=args.window_accept_rate)
    report = {"source": source, "new_tokens": args.new_tokens, "tau": args.tau,
              "window_accept_rate": args.window_accept_rate, "costs": dataclasses.asdict(costs), "plans": {}}
    cases = {"with_head": costs, "draft_only": dataclasses.replace(costs, head_step_s=0.0)}
    for name, c in cases.items():
        plan = choose(c, acc, new_tokens=args.new_tokens, window_steps=args.window_steps)
        report["plans"][name] = dataclasses.asdict(plan)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{source}; {args.new_tokens} new tokens, tau {args.tau}, window acceptance {args.window_accept_rate}")
    for name, plan in report["plans"].items():
        print(f"\n{name}: choose {plan['schedule']}"
              + (f" (draft share {plan['draft_share']:.3f})" if plan["schedule"] == "hide" else "")
              + f" - {plan['reason']}")
        for label, t in sorted(plan["predictions"].items(), key=lambda kv: kv[1]):
            print(f"  {label:16} {t * 1e3:8.1f} ms")
    return 0
