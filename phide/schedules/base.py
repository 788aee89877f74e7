"""The schedule contract: what runs before `Engine.generate`'s shared round loop, and its cost.

A schedule validates a request against what the engine loaded, runs its prefill phase (returning
the target runner, the first tree and the drafter that grew it) and predicts its seconds from a
calibration. It keeps no request state: everything a request owns travels in its `RequestRun`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from phide.errors import PhideError
from phide.schedules.costs import Acceptance, Candidate, Costs, TreeShape
from phide.speculation.stats import RequestStats
from phide.speculation.tree import Tree


@dataclass
class RequestRun:
    """One request as the schedules see it: the engine (its public prefill steps: `prepare_target`,
    `prepare_draft`, `grow_first_tree`, `lane_splits`), the request and its plan, the timeline,
    the device clock, the request's counted transfers and its stats."""

    engine: Any
    req: Any
    plan: Any
    schedule: "Schedule"
    tl: Any
    clock: Any
    transfers: Any
    stats: RequestStats


@dataclass
class Prefilled:
    """What a prefill phase leaves: the target runner (prompt minus its last token cached), the
    target's Prepared input, the first tree (or None: the rounds grow it) and the drafter that
    runs on (None when the schedule runs no draft model, or the draft failed)."""

    target: Any
    prepared: Any
    first_tree: Tree | None = None
    draft: Any = None


class Schedule:
    name: str = ""
    needs_draft = False       # the request needs the draft model loaded
    needs_head = False        # ... the EAGLE head
    drafts_rounds = True      # rounds after the first tree are drafted (by the head, else the draft)
    grows_first_tree = False  # the draft grows a window-shaped first tree (the planner learns its acceptance)
    uses_lanes = False        # the request's work runs on the engine's window lanes

    def runnable(self, engine) -> bool:
        """Whether `engine` loaded what this schedule needs."""
        return not (self.needs_draft and engine.draft_side is None or self.needs_head and engine.head is None)

    def validate(self, engine, req) -> None:
        if self.needs_draft and engine.draft_side is None:
            raise PhideError(f"the {self.name} schedule needs a draft model")
        if self.needs_head and engine.head is None:
            raise PhideError(f"the {self.name} schedule needs an EAGLE head (phide distill)")

    def prefill(self, run: RequestRun) -> Prefilled:
        raise NotImplementedError

    def predict(self, costs: Costs, acc: Acceptance, shape: TreeShape, new_tokens: int) -> list[Candidate]:
        """This schedule's candidates (one per lane split it may take) with their predicted
        seconds; none when this machine's costs say it cannot run (no head, no draft)."""
        raise NotImplementedError

    def label(self, plan) -> str:
        """The label of `plan`'s candidate among `predict`'s."""
        return self.name
