"""`phide calibrate`: measure the planner's cost model (`phide.planner.Calibration`) for one pair
on this machine, from real requests, and save it where `phide.session.load_session` looks.

Per request set: solo target costs from target-only requests, the head's step and acceptance from
head-only requests, the draft's costs (and, with no head, its acceptance) from sequential requests,
the per-node verify cost from one-shot verifies, and per lane split the costs with both lanes busy
(hide requests, each beside a target-only request of the same sample, so a slow spell of a shared
machine hits both alike). `check` then compares the planner's predictions with measurements on
requests the calibration never saw (profiling/calibrate.py).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from phide import schedules
from phide.schedules import HEAD_ONLY, HIDE, SEQUENTIAL, TARGET_ONLY
from phide.engine import Plan, Request
from phide.planner import Acceptance, Calibration, Costs, SplitCosts


def _median(xs):
    return statistics.median(xs) if xs else 0.0


def _phase(stats: dict, name: str) -> float:
    return stats["phases"].get(name, 0.0)


def _verify_costs(engine, req: Request) -> tuple[float, float]:
    """(one bare verify of a lone root, extra seconds per verified node) from one-shot verifies of
    1 and 24 nodes on one warm runner, rewound to the prompt after each."""
    from phide.speculation.runners import TargetRunner
    from phide.speculation.tree import chain

    prep = engine.target_side.prepare(req)
    runner = TargetRunner(engine.target, len(prep.ids) + 32)
    if prep.embeds is not None:
        runner.prefill(embeds=prep.embeds[:, :-1].to(engine.target.device))
    else:
        runner.prefill(prep.ids[:-1])
    prefix = runner.length
    trees = {n: chain(prep.ids[-1], [prep.ids[-1]] * (n - 1)) for n in (1, 24)}
    times: dict[int, list[float]] = {1: [], 24: []}
    for rep in range(7):  # alternate the sizes
        for n, tree in trees.items():
            t0 = time.perf_counter()
            runner.verify(tree, 0.0, 0, 0)  # reads its outcome back: the work is done when it returns
            if rep:
                times[n].append(time.perf_counter() - t0)
            runner.length = prefix  # forget the committed path: every verify sees the same prefix
    one, many = _median(times[1]), _median(times[24])
    return one, max(0.0, (many - one) / 23)


def default_splits(device: str) -> list[dict]:
    """Lane splits to measure: on a CPU the draft lane reserves 1, 2, 4 ... threads (always
    leaving the target at least one); on a GPU 8, 16, 24, 32 SMs (a quarter of an H100 at most)."""
    if device == "cuda":
        return [{"draft_sms": n} for n in (8, 16, 24, 32)]
    total = torch.get_num_threads()
    return [{"draft_threads": n} for n in (1, 2, 4, 8) if n < total]


def calibrate(session, requests: list[Request], *, splits: list[dict] | None = None, log=None) -> Calibration:
    """Measure `session`'s pair on `requests` (each run once per schedule) for each lane split
    (default `default_splits`). Returns the Calibration (not saved: see `run_calibrate`)."""
    eng = session.engine
    device = eng.target.device.type
    splits = default_splits(device) if splits is None else splits
    say = log or (lambda msg: None)
    warm = dataclasses.replace(requests[0], max_new_tokens=4)  # first calls allocate and pick kernels
    for schedule in (TARGET_ONLY, HEAD_ONLY if eng.head else None, SEQUENTIAL if eng.draft_side else None):
        if schedule:
            eng.generate(warm, schedule)
    say("target-only requests")
    solo = [eng.generate(r, TARGET_ONLY).stats for r in requests]
    head = []
    if eng.head is not None:
        say("head-only requests")
        head = [eng.generate(r, HEAD_ONLY).stats for r in requests]
    seq = []
    if eng.draft_side is not None:
        say("sequential requests")
        seq = [eng.generate(r, SEQUENTIAL).stats for r in requests]
    _, per_node = _verify_costs(eng, requests[0])
    # A decode step as the engine runs it (verify of the lone root + commit + the loop's own
    # overhead): what a drafted round must beat per token.
    step = _median([(_phase(st, "verify") + _phase(st, "commit")) / max(1, st["verifies"]) for st in solo])
    # The draft's grow phase runs its forwards after the prefill's (the root's, then one per step).
    draft_step = _median([_phase(st, "draft_grow") / (st["draft_forwards"] - 1) for st in seq
                          if st["draft_forwards"] > 1])
    head_step = _median([_phase(st, "head_grow") / st["head_forwards"] for st in head if st["head_forwards"]])
    solo_prefill = _median([_phase(st, "target_prefill") for st in solo])
    split_costs = []
    for split in splits:
        say(f"hide requests, split {split}")
        try:
            stretch, hide = _split_runs(eng, requests, Plan(HIDE, **split))
        except Exception as exc:  # e.g. a GPU too small for this SM split: not a candidate
            say(f"split {split} skipped: {exc}")
            continue
        beside = [_phase(st, "draft_grow") / (st["draft_forwards"] - 1) for st in hide if st["draft_forwards"] > 1]
        split_costs.append(SplitCosts(
            target_prefill_s=_median(stretch) * solo_prefill,
            draft_prefill_s=_median([_phase(st, "draft_prepare") + _phase(st, "draft_prefill") for st in hide]),
            draft_step_s=_median(beside) if beside else draft_step, **split))
    costs = Costs(target_prepare_s=_median([_phase(st, "target_prepare") for st in solo]),
                  prepare_idle=False, target_prefill_s=solo_prefill, target_step_s=step,
                  verify_extra_per_node_s=per_node,
                  draft_prefill_s=_median([_phase(st, "draft_prepare") + _phase(st, "draft_prefill") for st in seq]),
                  draft_step_s=draft_step, head_step_s=head_step, splits=split_costs)
    window_rates = [min(1.0, st.get("first_verify_accepted", 0) / st["first_tree_depth"]) for st in seq
                    if st.get("first_tree_depth")]
    draft_acc = Acceptance(tau=_median([st["accepted_per_verify"] for st in seq]) if seq and eng.head is None else 1.0,
                           window_accept_rate=_median(window_rates), samples=len(seq) if eng.head is None else 0,
                           window_samples=len(window_rates))
    head_acc = Acceptance(tau=_median([st["accepted_per_verify"] for st in head]) if head else 1.0,
                          samples=len(head))
    return Calibration(costs, head_acc, draft_acc, statistics.fmean(st["new_tokens"] for st in solo))


def _split_runs(eng, requests, plan: Plan) -> tuple[list[float], list[dict]]:
    """Per request a target-only run, then a hide run under `plan`: (the hide prefill over the
    target-only one, the hide runs' stats). Neighbours, so a drifting machine drifts under both."""
    stretch, hide = [], []
    for r in requests:
        alone = _phase(eng.generate(r, TARGET_ONLY).stats, "target_prefill")
        st = eng.generate(r, plan).stats
        stretch.append(_phase(st, "target_prefill") / alone)
        hide.append(st)
    return stretch, hide


def check(session, requests: list[Request], modes=(TARGET_ONLY, HEAD_ONLY, SEQUENTIAL, HIDE)) -> list[dict]:
    """The cost model against measurements on `requests` (never seen by the calibration): per
    request and mode, the wall time the planner predicts for the plan that ran, at the answer
    length that came out (so the check measures the cost model, not the length guess), beside
    the measured wall time. Modes the session cannot run are skipped."""
    rows = []
    eng = session.engine
    frozen = session.planner.with_calibration(session.planner.calibration)  # the calibration's view only
    usable = [m for m in modes if schedules.get(m).runnable(eng)]
    for i, r in enumerate(requests):
        for mode in usable:  # interleaved: a drifting machine drifts under every mode alike
            res = session.generate(r, mode)
            st = res.stats
            plan = Plan(**{k: st["plan"][k] for k in ("schedule", "draft_threads", "draft_sms")})
            predicted = frozen.predict(plan, st["new_tokens"])
            rows.append({"request": i, "mode": mode, "schedule": plan.schedule, "new_tokens": st["new_tokens"],
                         "measured_s": st["wall_s"], "predicted_s": predicted,
                         "draft_steps_in_window": st.get("draft_steps_in_window", 0)})
    return rows


def relative_errors(rows: list[dict]) -> dict[str, float]:
    """Median |predicted - measured| / measured per mode (rows with a prediction)."""
    out = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        errs = [abs(r["predicted_s"] - r["measured_s"]) / r["measured_s"] for r in rows
                if r["mode"] == mode and r["predicted_s"] is not None]
        if errs:
            out[mode] = round(statistics.median(errs), 4)
    return out


# ----------------------------------------------------------------------------- `phide calibrate`
def requests_from(*, data=None, prompts=None, n: int, max_new_tokens: int) -> list[Request]:
    """The first `n` requests of a paired-sample directory (question, video, events) or of a
    prompts file (one per line). Checked before any model loads."""
    from pathlib import Path

    from phide.errors import PhideError

    if data is not None:
        from phide.io.paired import read_paired_dir

        samples = read_paired_dir(data)[:n]
        return [Request(prompt=s.question, video=str(s.video), events=str(s.events), max_new_tokens=max_new_tokens)
                for s in samples]
    if prompts is None:
        raise PhideError("calibrating a pair needs requests: --data PAIRED_DIR or --prompts FILE")
    try:
        lines = [ln.strip() for ln in Path(prompts).read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise PhideError(f"cannot read prompts file {prompts}: {exc}") from None
    if not lines:
        raise PhideError(f"{prompts} holds no prompt")
    return [Request(prompt=p, max_new_tokens=max_new_tokens) for p in lines[:n]]


def run_calibrate(session, requests: list[Request], *, as_json: bool = False) -> int:
    """Calibrate `session` on `requests`, save the result where `load_session` looks, and report
    the costs and what `--mode auto` will now pick."""
    import json
    import sys

    from phide.session import save_session_calibration

    def say(msg):
        print(f"phide: calibrate: {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    cal = calibrate(session, requests, log=say)
    path = save_session_calibration(session, cal)
    plan = session.planner.decide(requests[0].max_new_tokens, "auto")
    preds = session.planner.predictions(round(cal.mean_new_tokens))
    report = {"calibration": str(path), "costs": dataclasses.asdict(cal.costs),
              "head_tau": cal.head.tau, "draft_tau": cal.draft.tau,
              "window_accept_rate": cal.draft.window_accept_rate, "mean_new_tokens": cal.mean_new_tokens,
              "predicted_s": preds, "auto_picks": plan.as_stats(), "wall_s": round(time.perf_counter() - t0, 1)}
    if as_json:
        print(json.dumps(report))
        return 0
    c = cal.costs
    print(f"saved {path}")
    print(f"target: prepare {c.target_prepare_s * 1e3:.1f} ms, prefill {c.target_prefill_s * 1e3:.1f} ms, "
          f"decode step {c.target_step_s * 1e3:.2f} ms (+{c.verify_extra_per_node_s * 1e6:.0f} us per tree node)")
    if session.engine.draft_side is not None:
        print(f"draft: prepare + prefill {c.draft_prefill_s * 1e3:.1f} ms, tree step {c.draft_step_s * 1e3:.2f} ms; "
              f"first-tree acceptance {cal.draft.window_accept_rate:.2f}"
              + (f"; tau {cal.draft.tau:.2f}" if session.engine.head is None else ""))
    if session.engine.head is not None:
        print(f"head: tree step {c.head_step_s * 1e3:.2f} ms, tau {cal.head.tau:.2f}")
    for sp in c.splits:
        print(f"{sp.label}: target prefill {sp.target_prefill_s * 1e3:.1f} ms beside the draft, draft prepare + "
              f"prefill {sp.draft_prefill_s * 1e3:.1f} ms, step {sp.draft_step_s * 1e3:.2f} ms")
    print(f"predicted for a {round(cal.mean_new_tokens)}-token answer: "
          + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in sorted(preds.items(), key=lambda kv: kv[1])))
    print(f"--mode auto now runs {plan.schedule}: {plan.reason}")
    return 0
