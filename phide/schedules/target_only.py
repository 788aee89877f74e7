"""target-only: the target alone. Its prefill, then rounds with no tree (plain decode steps): the
reference every other schedule's tokens equal, and what `auto` falls back to."""

from __future__ import annotations

from phide.schedules import TARGET_ONLY
from phide.schedules.base import Prefilled, RequestRun, Schedule
from phide.schedules.costs import Candidate


class TargetOnly(Schedule):
    name = TARGET_ONLY
    drafts_rounds = False

    def prefill(self, run: RequestRun) -> Prefilled:
        return Prefilled(*run.engine.prepare_target(run))

    def predict(self, costs, acc, shape, new_tokens):
        return [Candidate(self.name, costs.prefill_done_s + new_tokens * costs.target_step_s)]
