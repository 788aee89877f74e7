"""head-only: the target's prefill, then every round drafted by the EAGLE head; the draft model
never runs."""

from __future__ import annotations

from phide.schedules import HEAD_ONLY
from phide.schedules.base import Prefilled, RequestRun, Schedule
from phide.schedules.costs import Candidate, rounds_time


class HeadOnly(Schedule):
    name = HEAD_ONLY
    needs_head = True

    def prefill(self, run: RequestRun) -> Prefilled:
        return Prefilled(*run.engine.prepare_target(run))

    def predict(self, costs, acc, shape, new_tokens):
        if costs.head_step_s <= 0:
            return []
        return [Candidate(self.name, costs.prefill_done_s
                          + rounds_time(costs, new_tokens, acc.tau, shape, costs.head_step_s))]
