"""Measure the planner's cost model (`phide.planner.Costs`) on this machine from real requests of a
loaded pair: solo target / draft / head costs from target-only and sequential requests, the
per-node verify cost from one-shot verifies, and per lane split the costs with both lanes busy
(hide requests). Used by `profiling/calibrate.py` (which also checks the predictions) and by
`phide demo` / `phide bench` (a quick calibration when no calibration file exists)."""

from __future__ import annotations

import copy
import statistics


def _median(xs):
    return statistics.median(xs) if xs else 0.0


def _request(sample, mode, max_new_tokens=32):
    from phide.engine import Request

    return Request(prompt=sample.question, video=sample.frames, events=sample.events,
                   max_new_tokens=max_new_tokens, mode=mode)


def _verify_costs(engine, sample) -> tuple[float, float]:
    """(one bare verify of a lone root, extra seconds per verified node) from one-shot verifies of
    1 and 24 nodes."""
    import time

    from phide.spec.runners import TargetRunner
    from phide.spec.tree import chain

    prep = engine.target_side.prepare(_request(sample, "target-only"))
    runner = TargetRunner(engine.target, len(prep.ids) + 32)
    runner.prefill(embeds=prep.embeds[:, :-1])
    trees = {n: chain(prep.ids[-1], [5] * (n - 1)) for n in (1, 24)}
    times = {1: [], 24: []}
    for rep in range(7):  # alternate sizes on one warm runner (a verify leaves the prefix intact)
        for n, tree in trees.items():
            t0 = time.perf_counter()
            runner.verify(tree)
            if rep:
                times[n].append(time.perf_counter() - t0)
    one, many = _median(times[1]), _median(times[24])
    return one, max(0.0, (many - one) / 23)


def calibrate(pair, samples, draft_threads: list[int]):
    """The planner's Costs, measured on `samples` for each draft-thread split."""
    return calibrate_and_check(pair, samples, [], draft_threads)[0]


def _stretch_pair(eng, e, sample) -> tuple[float, dict]:
    """A target-only request, then a hide request on lanes `e` of the same scene: (the hide
    prefill over the target-only one, the hide request's stats). Neighbours, so a slow spell of
    a shared machine hits both alike."""
    alone = eng.generate(_request(sample, "target-only")).stats["phases"]["target_prefill"]
    st = e.generate(_request(sample, "hide")).stats
    return st["phases"]["target_prefill"] / alone, st


def calibrate_and_check(pair, samples, check_samples, draft_threads: list[int]):
    """(Costs, per split the (stretch, draft steps in the window) of each check sample). The check
    requests alternate with the calibration's own split requests, so a machine whose speed drifts
    (a shared host) drifts under both alike and the check measures the model, not the drift."""
    import dataclasses

    import torch

    from phide.planner import Costs, SplitCosts

    eng = pair.engine
    for s in samples[:1]:  # warm-up
        eng.generate(_request(s, "target-only", 4))
        eng.generate(_request(s, "sequential", 4))
    solo = [eng.generate(_request(s, "target-only")).stats for s in samples]
    seq = [eng.generate(_request(s, "sequential")).stats for s in samples]
    _, per_node = _verify_costs(eng, samples[0])
    ph = lambda st, k: st["phases"].get(k, 0.0)  # noqa: E731
    # A decode step as the engine runs it (verify of the lone root + commit + the loop's own
    # overhead), from the target-only requests: what a drafted round must beat per token.
    step = _median([(ph(st, "verify") + ph(st, "commit")) / max(1, st["verifies"]) for st in solo])
    draft_step = _median([ph(st, "draft_grow") / max(1, st["draft_forwards"] - 1) for st in seq])
    head_step = _median([ph(st, "head_grow") / max(1, st["head_forwards"]) for st in seq if st["head_forwards"]])
    total = torch.get_num_threads()
    splits, checks = [], []
    solo_prefill = _median([ph(st, "target_prefill") for st in solo])
    for d in draft_threads:
        e = copy.copy(eng)
        e.spec = dataclasses.replace(eng.spec, draft_threads=d, window="prefill")
        hide, stretch, checked = [], [], []
        for i in range(max(len(samples), len(check_samples))):
            if i < len(samples):
                ratio, st = _stretch_pair(eng, e, samples[i])
                stretch.append(ratio)
                hide.append(st)
            if i < len(check_samples):
                ratio, st = _stretch_pair(eng, e, check_samples[i])
                checked.append((ratio, st.get("draft_steps_in_window", 0)))
        checks.append(checked)
        # A draft forward alongside the target: the window's growth over the forwards it ran (all
        # complete: the one in flight when the window closes finishes inside the phase).
        beside = [ph(st, "draft_grow") / (st["draft_forwards"] - 1) for st in hide if st["draft_forwards"] > 1]
        share = d / total if d else 1.0
        splits.append(SplitCosts(
            draft_share=share,
            target_prefill_s=_median(stretch) * solo_prefill,
            draft_prefill_s=_median([ph(st, "draft_prepare") + ph(st, "draft_prefill") for st in hide]),
            draft_step_s=_median(beside) if beside else draft_step))
    return Costs(target_prepare_s=_median([ph(st, "target_prepare") for st in solo]), prepare_idle=False,
                 target_prefill_s=solo_prefill, target_step_s=step,
                 verify_extra_per_node_s=per_node,
                 draft_prefill_s=_median([ph(st, "draft_prepare") + ph(st, "draft_prefill") for st in seq]),
                 draft_step_s=draft_step, head_step_s=head_step, splits=splits), checks


