"""The planner: before a request it decides the Plan the engine runs (`decide`), after it learns
from what ran (`observe`). It predicts a request's wall time under each schedule from this
machine's measured costs (a calibration, `phide calibrate`) and the acceptance seen so far, and
picks the fastest, falling back to target-only when nothing beats it by a margin. With no
calibration it knows nothing of the draft's cost, so `auto` runs target-only (never slower).

Each schedule predicts its own cost (`Schedule.predict`, in its file under phide/schedules/; the
hide schedule one candidate per calibrated lane split, labelled "hide@<split>"). After the first
tree every schedule continues with the cheap drafter (the EAGLE head) when there is one, else with
the draft model: rounds of (tree growth + one verify) emitting `tau` tokens each.

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

from phide import schedules
from phide.engine import Plan
from phide.errors import PhideError
from phide.schedules.costs import Acceptance, Candidate, Costs, SplitCosts, TreeShape, split_label
from phide.schedules.hide import hide_window, window_draft_steps

__all__ = ["Acceptance", "Calibration", "Costs", "Planner", "SplitCosts", "hide_window", "pick", "predict",
           "window_draft_steps", "h100_projection", "load_calibration", "save_calibration", "calibration_dir"]

CALIBRATION_VERSION = 2


def candidates(costs: Costs, acc: Acceptance, *, new_tokens: int, depth: int = 6, budget: int = 24,
               window_steps: int = 8, use_draft: bool = True) -> list[Candidate]:
    """Every registered schedule's candidates (`Schedule.predict`); without a draft, none of the
    schedules that need one."""
    shape = TreeShape(depth=depth, budget=budget, window_steps=window_steps)
    return [c for sch in schedules.all_schedules() if use_draft or not sch.needs_draft
            for c in sch.predict(costs, acc, shape, new_tokens)]


def predict(costs: Costs, acc: Acceptance, **kw) -> dict[str, float]:
    """Every candidate's predicted seconds, by label (`candidates`)."""
    return {c.label: c.seconds for c in candidates(costs, acc, **kw)}


def pick(preds: dict[str, float], margin: float = 0.03) -> tuple[str, str]:
    """(label, reason): the fastest of `predict`'s candidates, or target-only unless another
    beats it by more than `margin` (relative): a near tie is not worth a draft's risk."""
    base = schedules.TARGET_ONLY
    alone = preds[base]
    label, t = min(preds.items(), key=lambda kv: kv[1])
    if label == base or t > alone * (1 - margin):
        return base, (f"no schedule beats {base} by {margin:.0%} "
                      f"(best {label} {t * 1e3:.1f} ms vs {alone * 1e3:.1f} ms)")
    return label, f"{label} predicted {t * 1e3:.1f} ms vs {base} {alone * 1e3:.1f} ms"


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

    def candidates(self, new_tokens: int) -> list[Candidate]:
        """Every candidate (`planner.candidates`) for an answer of `new_tokens`, its seconds
        scaled by the load (empty without a calibration)."""
        if self.costs is None:
            return []
        costs = self.costs if self.has_head else dataclasses.replace(self.costs, head_step_s=0.0)
        acc = Acceptance(tau=self.head_acc.tau if self.has_head else self.draft_acc.tau,
                         window_accept_rate=self.draft_acc.window_accept_rate)
        found = candidates(costs, acc, new_tokens=new_tokens, depth=self.depth, budget=self.budget,
                           window_steps=self.window_steps, use_draft=self.has_draft)
        return [dataclasses.replace(c, seconds=c.seconds * self.load_scale) for c in found]

    def predictions(self, new_tokens: int) -> dict[str, float]:
        """Every candidate's predicted seconds by label (empty without a calibration)."""
        return {c.label: c.seconds for c in self.candidates(new_tokens)}

    def predict(self, plan: Plan, new_tokens: int) -> float | None:
        """The predicted seconds of `plan` for an answer of `new_tokens` (None: no calibration,
        or a split the calibration did not measure)."""
        return self.predictions(new_tokens).get(schedules.get(plan.schedule).label(plan))

    def decide(self, max_new_tokens: int, mode: str = schedules.AUTO, split: dict | None = None) -> Plan:
        """The Plan for a request of at most `max_new_tokens` under `mode`: "auto" (the fastest
        predicted candidate, target-only unless another beats it by `margin`), or a forced
        schedule (its best candidate: for hide, the best calibrated split). `split`
        ({"draft_threads": n} or {"draft_sms": n}) forces the lane split: candidates with a split
        are considered at that split only, and every plan carries it (it is also where post-verify
        overlap grows)."""
        cands = self.candidates(self._expected_tokens(max_new_tokens))
        if split:
            forced = split_label(**split)
            cands = [c for c in cands if not c.split or c.label == forced]
        if mode == schedules.AUTO:
            if not cands:
                plan = Plan(schedules.TARGET_ONLY, reason="no calibration of this pair on this machine: "
                            f"{schedules.TARGET_ONLY} (run `phide calibrate`, or `phide eval --calibrate N`)")
            else:
                plan = self._plan(*pick({c.label: c.seconds for c in cands}, self.margin), cands)
        else:
            mine = [c for c in cands if c.schedule == mode]
            if mine:
                best = min(mine, key=lambda c: c.seconds)
                plan = self._plan(best.label, f"forced; the best calibrated split, {best.label}" if best.split
                                  else "forced", cands)
            elif schedules.get(mode).uses_lanes:
                plan = Plan(mode, **(split or self.default_split),
                            reason="forced; " + ("the given split, not calibrated" if split else
                                                 "no calibrated split, the default one"))
            else:
                plan = Plan(mode, reason="forced")
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

    @staticmethod
    def _plan(label: str, reason: str, cands: list[Candidate]) -> Plan:
        c = next(c for c in cands if c.label == label)
        return Plan(c.schedule, predicted_s=c.seconds, reason=reason, **c.split)

    def observe(self, plan: Plan, stats: dict) -> None:
        """Learn from a finished request's stats: its length, the tokens per verify of the round
        drafter, the share of the first tree's levels the first verify accepted; and how fast
        the machine is now (`load_scale`), from the request's time against its prediction for the
        tokens it made. stats["prediction"] says both, and when predictions have been off by more
        than OFF_FACTOR for OFF_STREAK requests in a row, why (also on stderr, once a streak)."""
        self._observe_load(plan, stats)
        if stats.get("new_tokens"):
            self.tokens.update(float(stats["new_tokens"]))
        schedule = schedules.get(plan.schedule)
        if stats.get("verifies", 0) < 2 or not schedule.drafts_rounds:
            return
        if stats.get("head_forwards"):
            self.head_acc.update(stats["accepted_per_verify"])
        elif stats.get("draft_forwards"):
            self.draft_acc.update(stats["accepted_per_verify"])
        steps = stats.get("first_tree_depth")
        if steps and schedule.grows_first_tree:
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
