"""The planner: predicts a request's wall time under each schedule from measured (or projected)
lane costs and an acceptance estimate, and picks the fastest, falling back to target-only when
nothing beats it by a margin.

Schedules
  target-only       prepare + prefill + N decode steps
  sequential        target prepare + prefill, then draft prepare + prefill + the first tree
                    (`window_steps` draft steps), then rounds
  hide(split)       the draft lane runs with `split` reserved resources (SMs on a GPU, intra-op
                    threads on a CPU) during the target's input preparation and prefill; the
                    target's prefill stretches (`Costs.prefill_under`); the draft's prepare +
                    prefill + as many tree steps as fit happen inside the window
After the first tree every schedule continues with the cheap drafter (EAGLE head) when there is one:
rounds of (head tree growth + one verify) emitting `tau` tokens each.

The cost model is deliberately plain (a few measured numbers and linear interpolation); its
predictions are compared with measurements in profiling/calibrate.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from phide.errors import PhideError


@dataclass
class SplitCosts:
    """Costs while the draft lane holds `draft_share` of the machine (fraction of SMs or cores)."""

    draft_share: float
    target_prefill_s: float      # the target's prefill with the draft lane busy alongside
    draft_prefill_s: float       # the draft's prepare + prefill on its share, alongside the target
    draft_step_s: float          # one draft tree step on its share, alongside the target


@dataclass
class Costs:
    """Seconds. Solo numbers are with the whole machine; `splits` lists the lane splits a
    hide schedule may use."""

    target_prepare_s: float      # input preparation (video decode/resize, vision tower)
    prepare_idle: bool           # True when preparation leaves the device idle (GPU: CPU-side decode)
    target_prefill_s: float
    target_step_s: float         # one decode step (= verify of a lone root)
    verify_extra_per_node_s: float  # verify(n nodes) = target_step_s + n * this
    draft_prefill_s: float       # draft prepare + prefill, solo
    draft_step_s: float          # one draft tree step, solo
    head_step_s: float           # one continuation-head tree step (0 with no head)
    splits: list[SplitCosts] = field(default_factory=list)

    @staticmethod
    def from_dict(d: dict) -> "Costs":
        d = dict(d)
        d["splits"] = [SplitCosts(**s) for s in d.get("splits", [])]
        return Costs(**d)


@dataclass
class Acceptance:
    """Tokens emitted per verify (accepted drafts + the bonus) for round trees from the
    continuation drafter, and the fraction of first-tree draft steps that get accepted."""

    tau: float = 1.0
    window_accept_rate: float = 0.0
    samples: int = 0

    def update(self, tau: float, weight: float = 0.2) -> None:
        """Online estimate: exponential average of observed tokens per verify."""
        self.tau = tau if self.samples == 0 else (1 - weight) * self.tau + weight * tau
        self.samples += 1


@dataclass
class Plan:
    schedule: str                 # "target-only" | "sequential" | "hide"
    draft_share: float            # 0 unless hide
    predicted_s: float
    first_tree_steps: int         # draft steps the first tree gets (0: no draft)
    predictions: dict             # schedule label -> predicted seconds, every candidate
    reason: str


def _rounds_time(costs: Costs, tokens: float, tau: float, depth: int, budget: int, step_s: float) -> float:
    """Time to emit `tokens` with round trees: per round `depth` drafter steps (`step_s` each:
    the head's, or the draft's when there is no head) and one verify of `budget` nodes. With no
    drafter (step_s 0) or nothing accepted (tau <= 1): plain decode steps."""
    if tokens <= 0:
        return 0.0
    if step_s <= 0 or tau <= 1.0:
        return tokens * costs.target_step_s
    per_round = depth * step_s + costs.target_step_s + budget * costs.verify_extra_per_node_s
    return math.ceil(tokens / tau) * per_round


def _first_tree_tokens(steps: int, acc: Acceptance) -> float:
    """Expected tokens a first tree of `steps` levels contributes beyond the bonus."""
    return min(steps, steps * acc.window_accept_rate)


def hide_window(costs: Costs, sp: SplitCosts) -> tuple[float, float]:
    """(window seconds, seconds of it left for tree steps after the draft's prepare + prefill;
    negative: the target waits). The window is the target's preparation plus its (stretched)
    prefill. Where preparation leaves the device idle (a GPU while the CPU decodes video) the
    draft runs solo there, and only the rest of its prefill runs on its share alongside the target."""
    prep = costs.target_prepare_s
    window = prep + sp.target_prefill_s
    if costs.prepare_idle:
        solo = min(costs.draft_prefill_s, prep)
        draft_ready = solo + (costs.draft_prefill_s - solo) * sp.draft_prefill_s / costs.draft_prefill_s
    else:
        draft_ready = sp.draft_prefill_s
    return window, window - draft_ready


def window_draft_steps(costs: Costs, sp: SplitCosts, window_steps: int) -> float:
    """Draft tree steps expected to finish inside the window (fractional; capped at window_steps):
    the spare time in draft forwards, less the first (it caches the root, no tree step) and half
    a step (on average the one in flight when the window closes does not count)."""
    _, spare = hide_window(costs, sp)
    return max(0.0, min(float(window_steps), spare / sp.draft_step_s - 1.5)) if spare > 0 else 0.0


def predict(costs: Costs, acc: Acceptance, *, new_tokens: int, depth: int = 6, budget: int = 24,
            window_steps: int = 8, use_draft: bool = True) -> dict[str, tuple[float, int, float]]:
    """Every candidate schedule -> (predicted seconds, first-tree steps, draft share)."""
    base = costs.target_prepare_s + costs.target_prefill_s
    out = {"target-only": (base + new_tokens * costs.target_step_s, 0, 0.0)}
    if costs.head_step_s > 0:
        out["head-only"] = (base + _rounds_time(costs, new_tokens, acc.tau, depth, budget, costs.head_step_s), 0, 0.0)
    if not use_draft:
        return out
    step = costs.head_step_s if costs.head_step_s > 0 else costs.draft_step_s  # the round drafter
    # sequential: the full first tree after the prefill
    k = window_steps
    first = costs.target_step_s + k * costs.verify_extra_per_node_s  # one verify of the first tree
    gain = _first_tree_tokens(k, acc)
    seq = (base + costs.draft_prefill_s + k * costs.draft_step_s + first
           + _rounds_time(costs, new_tokens - gain - 1, acc.tau, depth, budget, step))
    out["sequential"] = (seq, k, 0.0)
    for sp in costs.splits:
        window, spare = hide_window(costs, sp)
        k = int(window_draft_steps(costs, sp, window_steps))
        wait = max(0.0, -spare)  # the target waits for the draft's prefill to end
        gain = _first_tree_tokens(k, acc)
        t = (window + wait + costs.target_step_s + k * costs.verify_extra_per_node_s
             + _rounds_time(costs, new_tokens - gain - 1, acc.tau, depth, budget, step))
        out[f"hide@{sp.draft_share:.3g}"] = (t, k, sp.draft_share)
    return out


def choose(costs: Costs, acc: Acceptance, *, new_tokens: int, margin: float = 0.03, **kw) -> Plan:
    """The fastest schedule; target-only unless another beats it by more than `margin` (relative)."""
    preds = predict(costs, acc, new_tokens=new_tokens, **kw)
    alone = preds["target-only"][0]
    label, (t, k, share) = min(preds.items(), key=lambda kv: kv[1][0])
    summary = {name: round(v[0], 6) for name, v in preds.items()}
    if label == "target-only" or t > alone * (1 - margin):
        return Plan("target-only", 0.0, alone, 0, summary,
                    f"no schedule beats target-only by {margin:.0%} "
                    f"(best {label} {t * 1e3:.1f} ms vs {alone * 1e3:.1f} ms)")
    schedule = "hide" if label.startswith("hide@") else label
    return Plan(schedule, share, t, k, summary,
                f"{label} predicted {t * 1e3:.1f} ms vs target-only {alone * 1e3:.1f} ms")


# ----------------------------------------------------------------------------- calibration files
def calibration_path() -> Path:
    return Path(os.environ.get("PHIDE_HOME", Path.home() / ".cache" / "phide")) / "calibration.json"


def save_costs(costs: Costs, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(asdict(costs), indent=2))


def load_costs(path: str | os.PathLike) -> Costs:
    try:
        return Costs.from_dict(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise PhideError(f"{path}: no calibration; run `python profiling/calibrate.py`") from None
    except (ValueError, TypeError) as exc:
        raise PhideError(f"{path}: not a phide calibration file ({exc})") from None


class Planner:
    """The engine's planner for `--mode hide`: before a request, picks target-only, head-only
    (no draft) or hide with a lane split from the calibrated costs and the acceptance seen so
    far; after it, updates the acceptance from the request's stats. Starts optimistic (`prior_tau`)
    so the drafters get measured, and stops using them once they prove useless."""

    def __init__(self, costs: Costs, *, prior_tau: float | None = None, prior_window_rate: float = 0.5,
                 margin: float = 0.03, window_steps: int = 8):
        self.costs = costs
        # Optimistic until measured (prior_tau None: 3/4 of a full round tree's tokens, set at the
        # first plan), so each drafter gets tried once; one observation replaces the prior.
        self.prior_tau = prior_tau
        self.head_acc = Acceptance(tau=prior_tau or 0.0, window_accept_rate=prior_window_rate)
        self.draft_acc = Acceptance(tau=prior_tau or 0.0, window_accept_rate=prior_window_rate)
        self.tokens = Acceptance(tau=0.0)  # running mean of tokens per request (EMA)
        self.margin, self.window_steps = margin, window_steps
        self.last: Plan | None = None
        self.window_samples = 0

    def plan(self, *, new_tokens: int, has_draft: bool, has_head: bool, depth: int, budget: int) -> Plan:
        """new_tokens: the request's limit; the plan uses the mean length seen so far when shorter."""
        for acc in (self.head_acc, self.draft_acc):
            if acc.samples == 0 and self.prior_tau is None:
                acc.tau = 0.75 * (depth + 1)
        if self.tokens.samples:
            new_tokens = max(1, min(new_tokens, round(self.tokens.tau)))
        costs = self.costs if has_head else _replace_head(self.costs, 0.0)
        acc = Acceptance(tau=self.head_acc.tau if has_head else self.draft_acc.tau,
                         window_accept_rate=self.draft_acc.window_accept_rate)
        self.last = choose(costs, acc, new_tokens=new_tokens, margin=self.margin, depth=depth, budget=budget,
                           window_steps=self.window_steps, use_draft=has_draft)
        return self.last

    def observe(self, stats: dict) -> None:
        """Learn from a finished request's stats (tokens per verify of the round drafter; the
        share of window draft steps that the first verify accepted)."""
        if stats.get("new_tokens"):
            self.tokens.update(float(stats["new_tokens"]))
        if stats.get("verifies", 0) < 2 or not (stats.get("draft_forwards") or stats.get("head_forwards")):
            return  # nothing drafted: nothing to learn
        tau = stats["accepted_per_verify"]
        (self.head_acc if stats.get("head_forwards") else self.draft_acc).update(tau)
        steps = stats.get("first_tree_depth")
        if steps:
            rate = min(1.0, stats.get("first_verify_accepted", 0) / steps)
            acc = self.draft_acc  # the first measurement replaces the prior, later ones average in
            acc.window_accept_rate = rate if not self.window_samples else 0.8 * acc.window_accept_rate + 0.2 * rate
            self.window_samples += 1


def _replace_head(costs: Costs, head_step_s: float) -> Costs:
    import dataclasses

    return dataclasses.replace(costs, head_step_s=head_step_s)


def run_planned(engine, req):
    """`hide` under the planner (`engine.planner`): run what it picks (target-only, head-only,
    sequential, or hide with its lane split) on a shallow copy of the engine, then let the
    planner learn from the request's stats. Returns the engine's Result."""
    import copy

    import torch

    spec = engine.spec
    use_head = engine.head is not None and spec.continuation == "head"
    plan = engine.planner.plan(new_tokens=req.max_new_tokens, has_draft=engine.draft_side is not None,
                               has_head=use_head, depth=spec.depth, budget=spec.budget)
    run = copy.copy(engine)
    run.planner = None
    run.costs = engine.planner.costs  # for SpecConfig.price_trees
    mode = {"target-only": "target-only", "head-only": "sequential", "sequential": "sequential"}.get(
        plan.schedule, "hide")
    if plan.schedule == "head-only":
        run.draft_side, run.draft = None, None
    if plan.schedule == "hide" and engine.target.device.type == "cpu":
        share = plan.draft_share
        threads = 0 if share >= 1.0 else max(1, round(share * torch.get_num_threads()))
        run.spec = dataclasses.replace(spec, draft_threads=threads)
    result = run.generate(dataclasses.replace(req, mode=mode))
    result.stats.update(mode=req.mode, plan=plan.schedule, plan_reason=plan.reason,
                        plan_predicted_s=round(plan.predicted_s, 6))
    engine.planner.observe(result.stats)
    return result
