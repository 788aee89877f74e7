"""Stop drafting inside a request once it stops paying.

The planner decides before a request from averages; a scene where the drafter guesses badly can
still make every round (drafter steps + a verify of the whole tree) cost more than the plain
decode steps it replaces. `Payoff` watches the rounds after the first tree and says when to go
on with the target alone: the output is unchanged (a chain of the root alone is a plain decode
step), only the wasted drafting stops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Payoff:
    """plain_step_s: one plain decode step of the target (the planner's calibrated
    `Costs.target_step_s`); None disables the check (forced configurations draft throughout).
    min_rounds: drafted rounds to watch before judging. margin: drafting continues while its
    seconds per emitted token stay under (1 + margin) plain steps."""

    plain_step_s: float | None
    min_rounds: int = 3
    margin: float = 0.0
    rounds: int = 0
    spent_s: float = 0.0
    tokens: int = 0
    _t0: float | None = field(default=None, repr=False)

    def start_round(self) -> None:
        self._t0 = time.perf_counter()

    def end_round(self, drafted: bool, emitted: int) -> None:
        """drafted: this round's tree came from the drafter (not the first tree, not a bare root)."""
        if drafted and self._t0 is not None:
            self.rounds += 1
            self.spent_s += time.perf_counter() - self._t0
            self.tokens += emitted
        self._t0 = None

    def should_stop(self) -> bool:
        if not self.plain_step_s or self.rounds < self.min_rounds:
            return False
        return self.spent_s > self.tokens * self.plain_step_s * (1 + self.margin)

    def reason(self) -> str:
        return (f"drafting did not pay: {self.spent_s / max(self.tokens, 1) * 1e3:.1f} ms per token over "
                f"{self.rounds} rounds vs {self.plain_step_s * 1e3:.1f} ms per plain decode step")
