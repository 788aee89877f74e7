"""A schedule written the way a user would add one: this file and one registry line.

draft-first: the draft prepares, prefills and grows the first tree BEFORE the target's input
preparation and prefill (sequential's draft work, moved ahead of the target's); then the shared
rounds."""

from phide.schedules.base import Prefilled, RequestRun, Schedule
from phide.schedules.costs import Candidate, first_tree_time
from phide.speculation.checks import checked_tree


class DraftFirst(Schedule):
    name = "draft-first"
    needs_draft = True
    grows_first_tree = True

    def prefill(self, run: RequestRun) -> Prefilled:
        engine = run.engine
        draft = engine.prepare_draft(run)
        with run.tl.phase("draft_grow", "draft"):
            tree = engine.grow_first_tree(draft)
        target, prepared = engine.prepare_target(run)
        return Prefilled(target, prepared, checked_tree(tree, prepared.ids[-1], draft), draft)

    def predict(self, costs, acc, shape, new_tokens):
        k = shape.window_steps
        return [Candidate(self.name, costs.draft_prefill_s + k * costs.draft_step_s + costs.prefill_done_s
                          + first_tree_time(costs, acc, k, shape, new_tokens))]
