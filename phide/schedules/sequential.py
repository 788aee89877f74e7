"""sequential: the target prepares and prefills, then the draft prepares, prefills and (with an
EAGLE head) grows the first tree; then rounds. The same draft work as hide, after the target's
prefill instead of inside it."""

from __future__ import annotations

from phide.errors import PhideError
from phide.speculation.checks import checked_tree
from phide.schedules import SEQUENTIAL
from phide.schedules.base import Prefilled, RequestRun, Schedule
from phide.schedules.costs import Candidate, first_tree_time


class Sequential(Schedule):
    name = SEQUENTIAL
    needs_draft = True
    grows_first_tree = True

    def prefill(self, run: RequestRun) -> Prefilled:
        engine = run.engine
        target, prepared = engine.prepare_target(run)
        try:
            draft = engine.prepare_draft(run)
            if engine.head is None:  # the draft drafts every round: no separate first tree
                return Prefilled(target, prepared, None, draft)
            with run.tl.phase("draft_grow", "draft"):
                tree = engine.grow_first_tree(draft)
            tree = checked_tree(tree, prepared.ids[-1], draft)
            return Prefilled(target, prepared, tree, draft)
        except PhideError:
            raise  # bad input for the draft side is the user's error, not a draft fault
        except Exception as exc:
            run.stats.fault(exc)
            return Prefilled(target, prepared)

    def predict(self, costs, acc, shape, new_tokens):
        k = shape.window_steps  # the full first tree, after the prefill
        return [Candidate(self.name, costs.prefill_done_s + costs.draft_prefill_s + k * costs.draft_step_s
                          + first_tree_time(costs, acc, k, shape, new_tokens))]
