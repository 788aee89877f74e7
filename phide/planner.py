"""The planner: before a request it decides the Plan the engine runs (`decide`), after it learns
from what ran (`observe`). It predicts a request's wall time under each schedule from this
machine's measured costs (a calibration, `phide calibrate`) and the acceptance seen so far, and
picks the fastest, falling back to target-only when nothing beats it by a margin. With no
calibration it knows nothing of the draft's cost, so `auto` runs target-only (never slower).

Schedules (phide.engine.Plan)
  target-only       prepare + prefill + N decode steps
  head-only         prepare + prefill, then rounds drafted by the EAGLE head
  sequential        target prepare + prefill, then draft prepare + prefill + the first tree
                    (`window_steps` draft steps), then rounds
  hide(split)       the draft lane runs with a reserved split (SMs on a GPU, intra-op threads on a
                    CPU) during the target's input preparation and prefill; the target's prefill
                    stretches (`SplitCosts.target_prefill_s`); the draft's prepare + prefill + as
                    many tree steps as fit happen inside the window
After the first tree every schedule continues with the cheap drafter (the EAGLE head) when there is
one, else with the draft model: rounds of (tree growth + one verify) emitting `tau` tokens each.

The cost model is deliberately plain (a few measured numbers); `phide bench` prints its
predictions beside the measured times, and profiling/calibrate.py checks them on scenes the
calibration never saw.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from phide.engine import Plan
from phide.errors import PhideError

CALIBRATION_VERSION = 2


@dataclass
class SplitCosts:
    """Costs while the draft lane holds a split: `draft_threads` intra-op threads of a CPU or
    `draft_sms` SMs of a GPU (0 and 0: the lanes share everything)."""

    target_prefill_s: float      # the target's prefill with the draft lane busy alongside
    draft_prefill_s: float       # the draft's prepare + prefill on its split, alongside the target
    draft_step_s: float          # one draft tree step on its split, alongside the target
    draft_threads: int = 0
    draft_sms: int = 0

    @property
    def label(self) -> str:
        if self.draft_sms:
            return f"hide@{self.draft_sms}sm"
        return f"hide@{self.draft_threads}t" if self.draft_threads else "hide@shared"


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
    """Tokens emitted per verify (accepted drafts + the bonus) for round trees from a drafter,
    and the fraction of the first tree's levels the first verify accepts; each with the number
    of observations behind it (0: a prior, which the first observation replaces)."""

    tau: float = 1.0
    window_accept_rate: float = 0.0
    samples: int = 0
    window_samples: int = 0

    def update(self, tau: float, weight: float = 0.2) -> None:
        """Online estimate: exponential average of observed tokens per verify."""
        self.tau = tau if self.samples == 0 else (1 - weight) * self.tau + weight * tau
        self.samples += 1

    def update_window(self, rate: float, weight: float = 0.2) -> None:
        self.window_accept_rate = rate if self.window_samples == 0 else (
            (1 - weight) * self.window_accept_rate + weight * rate)
        self.window_samples += 1


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
    draft runs solo there, and only the rest of its prefill runs on its split alongside the target."""
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
            window_steps: int = 8, use_draft: bool = True) -> dict[str, float]:
    """Every candidate schedule's predicted seconds, by label: "target-only", "head-only" (with
    a head), "sequential" and one "hide@<split>" per calibrated split (with a draft)."""
    base = costs.target_prepare_s + costs.target_prefill_s
    out = {"target-only": base + new_tokens * costs.target_step_s}
    if costs.head_step_s > 0:
        out["head-only"] = base + _rounds_time(costs, new_tokens, acc.tau, depth, budget, costs.head_step_s)
    if not use_draft:
        return out
    step = costs.head_step_s if costs.head_step_s > 0 else costs.draft_step_s  # the round drafter
    # sequential: the full first tree after the prefill
    k = window_steps
    first = costs.target_step_s + k * costs.verify_extra_per_node_s  # one verify of the first tree
    gain = _first_tree_tokens(k, acc)
    out["sequential"] = (base + costs.draft_prefill_s + k * costs.draft_step_s + first
                         + _rounds_time(costs, new_tokens - gain - 1, acc.tau, depth, budget, step))
    for sp in costs.splits:
        window, spare = hide_window(costs, sp)
        k = int(window_draft_steps(costs, sp, window_steps))
        wait = max(0.0, -spare)  # the target waits for the draft's prefill to end
        gain = _first_tree_tokens(k, acc)
        out[sp.label] = (window + wait + costs.target_step_s + k * costs.verify_extra_per_node_s
                         + _rounds_time(costs, new_tokens - gain - 1, acc.tau, depth, budget, step))
    return out


def pick(preds: dict[str, float], margin: float = 0.03) -> tuple[str, str]:
    """(label, reason): the fastest of `predict`'s candidates, or target-only unless another
    beats it by more than `margin` (relative): a near tie is not worth a draft's risk."""
    alone = preds["target-only"]
    label, t = min(preds.items(), key=lambda kv: kv[1])
    if label == "target-only" or t > alone * (1 - margin):
        return "target-only", (f"no schedule beats target-only by {margin:.0%} "
                               f"(best {label} {t * 1e3:.1f} ms vs {alone * 1e3:.1f} ms)")
    return label, f"{label} predicted {t * 1e3:.1f} ms vs target-only {alone * 1e3:.1f} ms"


# ----------------------------------------------------------------------------- calibration files
@dataclass
class Calibration:
    """What `phide calibrate` measured for one pair on one machine: the costs, each drafter's
    acceptance, and the mean answer length. `key` says which pair, machine and tree shape."""

    costs: Costs
    head: Acceptance
    draft: Acceptance
    mean_new_tokens: float
    key: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": CALIBRATION_VERSION, **asdict(self)}, indent=2)

    @staticmethod
    def from_json(text: str) -> "Calibration":
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"expected a version {CALIBRATION_VERSION} calibration object")
        return Calibration(Costs.from_dict(d["costs"]), Acceptance(**d["head"]), Acceptance(**d["draft"]),
                           float(d["mean_new_tokens"]), dict(d.get("key", {})))


def calibration_dir() -> Path:
    return Path(os.environ.get("PHIDE_HOME", Path.home() / ".cache" / "phide")) / "calibration"


def save_calibration(cal: Calibration, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(cal.to_json())
    tmp.replace(path)  # atomic: a reader never sees half a file


def load_calibration(path: str | os.PathLike) -> Calibration:
    try:
        return Calibration.from_json(Path(path).read_text())
    except FileNotFoundError:
        raise PhideError(f"{path}: no calibration; run `phide calibrate`") from None
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise PhideError(f"{path}: not a phide calibration file ({exc})") from None


# ----------------------------------------------------------------------------- the planner
class Planner:
    """Decides each request's Plan (`decide`) and learns from what ran (`observe`).

    calibration: this machine's measurements for this pair, or None (then `auto` is
    target-only and a forced hide takes `default_split`). has_draft / has_head: what the session
    loaded. depth / budget / window_steps: the tree shape (SpecConfig)."""

    def __init__(self, calibration: Calibration | None, *, has_draft: bool, has_head: bool, depth: int = 6,
                 budget: int = 24, window_steps: int = 8, default_split: dict | None = None,
                 margin: float = 0.03):
        self.calibration = calibration
        self.has_draft, self.has_head = has_draft, has_head
        self.depth, self.budget, self.window_steps, self.margin = depth, budget, window_steps, margin
        self.default_split = default_split or {}
        cal = calibration
        self.head_acc = dataclasses.replace(cal.head) if cal else Acceptance()
        self.draft_acc = dataclasses.replace(cal.draft) if cal else Acceptance()
        self.tokens = Acceptance(tau=cal.mean_new_tokens, samples=1) if cal else Acceptance(tau=0.0)
        # The machine now vs when it was calibrated: a moving average of log(measured / predicted)
        # over finished requests (one factor for every cost: load slows them together), so
        # predictions follow the load; decisions compare predictions, which it scales alike.
        self.load_log_scale = 0.0
        self.off_streak = 0  # requests in a row whose prediction was off by more than OFF_FACTOR

    LOAD_ALPHA = 0.5   # weight of the newest request in the load factor
    OFF_FACTOR = 2.0   # a prediction this far off (either way) counts towards a warning
    OFF_STREAK = 3     # ... for this many requests in a row

    @property
    def load_scale(self) -> float:
        return math.exp(self.load_log_scale)

    def with_calibration(self, calibration: Calibration) -> "Planner":
        """The same planner, starting over from `calibration`."""
        return Planner(calibration, has_draft=self.has_draft, has_head=self.has_head, depth=self.depth,
                       budget=self.budget, window_steps=self.window_steps, default_split=self.default_split,
                       margin=self.margin)

    @property
    def costs(self) -> Costs | None:
        return self.calibration.costs if self.calibration else None

    def _expected_tokens(self, max_new_tokens: int) -> int:
        """The answer length to plan for: the mean seen so far, at most the request's limit."""
        return max(1, min(max_new_tokens, round(self.tokens.tau))) if self.tokens.samples else max_new_tokens

    def predictions(self, new_tokens: int) -> dict[str, float]:
        """Every candidate's predicted seconds for an answer of `new_tokens` (empty without a
        calibration)."""
        if self.costs is None:
            return {}
        costs = self.costs if self.has_head else dataclasses.replace(self.costs, head_step_s=0.0)
        acc = Acceptance(tau=self.head_acc.tau if self.has_head else self.draft_acc.tau,
                         window_accept_rate=self.draft_acc.window_accept_rate)
        preds = predict(costs, acc, new_tokens=new_tokens, depth=self.depth, budget=self.budget,
                        window_steps=self.window_steps, use_draft=self.has_draft)
        return {k: v * self.load_scale for k, v in preds.items()}

    def predict(self, plan: Plan, new_tokens: int) -> float | None:
        """The predicted seconds of `plan` for an answer of `new_tokens` (None: no calibration,
        or a split the calibration did not measure)."""
        label = plan.schedule
        if plan.schedule == "hide":
            label = SplitCosts(0, 0, 0, draft_threads=plan.draft_threads, draft_sms=plan.draft_sms).label
        return self.predictions(new_tokens).get(label)

    def decide(self, max_new_tokens: int, mode: str = "auto", split: dict | None = None) -> Plan:
        """The Plan for a request of at most `max_new_tokens` under `mode`: "auto" (the fastest
        predicted schedule, target-only unless another beats it by `margin`), or a forced
        schedule ("hide" takes the best calibrated split). `split` ({"draft_threads": n} or
        {"draft_sms": n}) forces the lane split: hide is considered at that split only, and
        every plan carries it (it is also where post-verify overlap grows)."""
        preds = self.predictions(self._expected_tokens(max_new_tokens))
        if split:
            forced = SplitCosts(0, 0, 0, **split).label
            preds = {k: v for k, v in preds.items() if not k.startswith("hide@") or k == forced}
        if mode == "auto":
            if not preds:
                plan = Plan("target-only", reason="no calibration of this pair on this machine: target-only "
                                                  "(run `phide calibrate`, or `phide eval --calibrate N`)")
            else:
                plan = self._plan(*pick(preds, self.margin), preds)
        elif mode == "hide":
            hides = {k: v for k, v in preds.items() if k.startswith("hide@")}
            if hides:
                label = min(hides, key=hides.get)
                plan = self._plan(label, f"forced; the best calibrated split, {label}", preds)
            else:
                plan = Plan("hide", **(split or self.default_split),
                            reason="forced; " + ("the given split, not calibrated" if split else
                                                 "no calibrated split, the default one"))
        else:
            plan = self._plan(mode, "forced", preds)
        return dataclasses.replace(plan, **split) if split else plan

    def _observe_load(self, plan: Plan, stats: dict) -> None:
        wall, n = stats.get("wall_s"), stats.get("new_tokens")
        predicted = self.predict(plan, n) if wall and n else None  # scaled by the load so far
        if not predicted:
            return
        ratio = wall / predicted
        calibrated = ratio * self.load_scale  # against the calibration's own prediction
        self.load_log_scale += self.LOAD_ALPHA * math.log(ratio)
        off = calibrated > self.OFF_FACTOR or calibrated < 1 / self.OFF_FACTOR
        self.off_streak = self.off_streak + 1 if off else 0
        info = {"predicted_s": round(predicted, 6), "measured_over_predicted": round(ratio, 3),
                "measured_over_calibrated": round(calibrated, 3), "load_scale": round(self.load_scale, 3)}
        if self.off_streak >= self.OFF_STREAK:
            info["warning"] = (f"the calibration's predictions were off by more than {self.OFF_FACTOR:g}x for "
                               f"{self.off_streak} requests in a row (last {calibrated:.2f}x): this machine is not "
                               f"as it was calibrated; the planner now scales its costs by {self.load_scale:.2f} "
                               "(re-run `phide calibrate` if it stays)")
            if self.off_streak == self.OFF_STREAK:
                import sys

                print(f"phide: warning: {info['warning']}", file=sys.stderr, flush=True)
        stats["prediction"] = info

    def _plan(self, label: str, reason: str, preds: dict) -> Plan:
        split = {}
        if label.startswith("hide@"):
            sp = next(s for s in self.costs.splits if s.label == label)
            split = dict(draft_threads=sp.draft_threads, draft_sms=sp.draft_sms)
        return Plan("hide" if label.startswith("hide@") else label, predicted_s=preds.get(label), reason=reason,
                    **split)

    def observe(self, plan: Plan, stats: dict) -> None:
        """Learn from a finished request's stats: its length, the tokens per verify of the round
        drafter, the share of the first tree's levels the first verify accepted; and how fast
        the machine is now (`load_scale`), from the request's time against its prediction for the
        tokens it made. stats["prediction"] says both, and when predictions have been off by more
        than OFF_FACTOR for OFF_STREAK requests in a row, why (also on stderr, once a streak)."""
        self._observe_load(plan, stats)
        if stats.get("new_tokens"):
            self.tokens.update(float(stats["new_tokens"]))
        if stats.get("verifies", 0) < 2 or plan.schedule == "target-only":
            return
        if stats.get("head_forwards"):
            self.head_acc.update(stats["accepted_per_verify"])
        elif stats.get("draft_forwards"):
            self.draft_acc.update(stats["accepted_per_verify"])
        steps = stats.get("first_tree_depth")
        if steps and plan.schedule in ("sequential", "hide"):
            self.draft_acc.update_window(min(1.0, stats.get("first_verify_accepted", 0) / steps))


H100_SMS = 132


def h100_projection(draft_sms=(8, 16, 24, 32)) -> "Costs":
    """Costs of the real pair (Video-LLaVA-7B target, EventGPT-7B draft, an EAGLE head) on one
    H100 SXM in bf16, projected from published roofline figures (stated, not measured here).

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
    prefill_t, prefill_d, step = 0.048, 0.016, 0.0065
    splits = []
    for n in draft_sms:
        f = n / H100_SMS
        splits.append(SplitCosts(target_prefill_s=prefill_t / (1 - f), draft_prefill_s=prefill_d / f,
                                 draft_step_s=step / min(1.0, 2 * f), draft_sms=n))
    return Costs(target_prepare_s=0.040, prepare_idle=True, target_prefill_s=prefill_t, target_step_s=step,
                 verify_extra_per_node_s=0.00002, draft_prefill_s=prefill_d, draft_step_s=step,
                 head_step_s=0.0003, splits=splits)
