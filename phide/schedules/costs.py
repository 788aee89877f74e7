"""What a schedule's cost model reads (torch-free): this machine's measured costs (`phide
calibrate`), the drafters' acceptance, the tree shape; and the round loop's time, which every
drafting schedule shares. Each schedule's own prediction is in its file (`Schedule.predict`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


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
        return split_label(self.draft_threads, self.draft_sms)


def split_label(draft_threads: int = 0, draft_sms: int = 0) -> str:
    """The planner's label of the hide schedule at a lane split ("hide@8sm", "hide@1t")."""
    if draft_sms:
        return f"hide@{draft_sms}sm"
    return f"hide@{draft_threads}t" if draft_threads else "hide@shared"


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

    @property
    def prefill_done_s(self) -> float:
        """The target's preparation and prefill, alone: where every schedule's rounds start."""
        return self.target_prepare_s + self.target_prefill_s

    @property
    def round_step_s(self) -> float:
        """One tree step of the round drafter: the head's when there is one, else the draft's."""
        return self.head_step_s if self.head_step_s > 0 else self.draft_step_s


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


@dataclass(frozen=True)
class TreeShape:
    """The round trees' depth and node budget, and the first tree's levels (SpecConfig)."""

    depth: int = 6
    budget: int = 24
    window_steps: int = 8


@dataclass(frozen=True)
class Candidate:
    """One prediction: `schedule` (its name), `label` (the name, or one per lane split:
    "hide@<split>"), its seconds, and the lane split its Plan carries."""

    schedule: str
    seconds: float
    split: dict = field(default_factory=dict)
    label: str = ""

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", self.schedule)


def rounds_time(costs: Costs, tokens: float, tau: float, shape: TreeShape, step_s: float) -> float:
    """Time to emit `tokens` with round trees: per round `shape.depth` drafter steps (`step_s`
    each) and one verify of `shape.budget` nodes. With no drafter (step_s 0) or nothing accepted
    (tau <= 1): plain decode steps."""
    if tokens <= 0:
        return 0.0
    if step_s <= 0 or tau <= 1.0:
        return tokens * costs.target_step_s
    per_round = shape.depth * step_s + costs.target_step_s + shape.budget * costs.verify_extra_per_node_s
    return math.ceil(tokens / tau) * per_round


def first_tree_time(costs: Costs, acc: Acceptance, steps: int, shape: TreeShape, new_tokens: int) -> float:
    """From the first tree (`steps` levels, ready) to the answer: its verify, then rounds for
    what it did not emit (its accepted levels, expected, and the bonus)."""
    verify = costs.target_step_s + steps * costs.verify_extra_per_node_s
    gain = min(steps, steps * acc.window_accept_rate)
    return verify + rounds_time(costs, new_tokens - gain - 1, acc.tau, shape, costs.round_step_s)
