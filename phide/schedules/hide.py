"""hide: the draft prepares, prefills and grows the first tree INSIDE the target's input
preparation and prefill, on a reserved lane split (intra-op threads on a CPU, SMs of a green
context on a GPU; `runtime.window_lanes`). The window ends when the target's prefill is DONE on
the device (a signal recorded after it), not when its launch returns; what the draft had finished
by then, in device time, is what the window hid.

Cost: the window is the target's preparation plus its prefill, stretched by the split; the draft
spends its prepare + prefill there and as many tree steps as fit (`hide_window`,
`window_draft_steps`); where preparation leaves the device idle the draft runs solo meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from phide.errors import DraftFault, PhideError
from phide.runtime.cpu_lanes import CpuLane
from phide.runtime.signals import Window
from phide.runtime.window_lanes import WindowLanes
from phide.speculation.checks import checked_tree
from phide.schedules import HIDE
from phide.schedules.base import Prefilled, RequestRun, Schedule
from phide.schedules.costs import Candidate, Costs, SplitCosts, first_tree_time, split_label


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


@dataclass
class _DraftLane:
    """The draft lane's side of the window, run on its own thread: prepare, prefill and grow the
    first tree until the window closes, recording a device signal after every step."""

    run: RequestRun
    lanes: WindowLanes
    window: Window
    progress: list = field(default_factory=list)  # (signal after the step, candidates so far): the root, then each step
    runner: object = None
    tree: object = None
    error: BaseException | None = None

    def __call__(self) -> None:
        engine, clock = self.run.engine, self.run.clock
        try:
            with self.lanes.draft():
                self.runner = engine.prepare_draft(self.run)
                with self.run.tl.phase("draft_grow", "draft"):
                    self.tree = engine.grow_first_tree(
                        self.runner, stop=self.window, on_step=lambda n: self.progress.append((clock.record(), n)))
        except BaseException as exc:  # reported on the main thread
            self.error = exc

    def finished_inside(self) -> list[int]:
        """Candidates after each step the draft had FINISHED when the target's prefill finished,
        both in device time."""
        end = self.window.end().done_at()
        return [n for sig, n in self.progress if sig.done_at() <= end]


class Hide(Schedule):
    name = HIDE
    needs_draft = True
    grows_first_tree = True
    uses_lanes = True

    def prefill(self, run: RequestRun) -> Prefilled:
        engine, plan, stats = run.engine, run.plan, run.stats
        window = Window()
        lanes = WindowLanes.for_engine(engine.lane_splits, plan.draft_threads, plan.draft_sms)
        stats.window_lanes = lanes.describe()
        lane = _DraftLane(run, lanes, window)
        done = CpuLane("draft", lanes.draft_threads).submit(lane)
        try:
            with lanes.target():
                target, prepared = engine.prepare_target(run)
                window.arm(run.clock.record())  # on the target's stream, after its prefill
        finally:
            window.close()  # the target lane failed before arming it: end the window now
            done.wait()  # the lane keeps its own errors
            lanes.join()
        if isinstance(lane.error, PhideError):
            raise lane.error
        if lane.error is not None:
            stats.fault(lane.error)
            return Prefilled(target, prepared)
        try:
            tree = checked_tree(lane.tree, prepared.ids[-1], lane.runner)
        except DraftFault as exc:
            stats.fault(exc)
            return Prefilled(target, prepared)
        inside = lane.finished_inside()
        stats.draft_tokens_in_window = min(max(inside, default=0), len(tree) - 1)
        stats.draft_steps_in_window = max(0, len(inside) - 1)  # the first entry is the root's
        return Prefilled(target, prepared, tree, lane.runner)

    def predict(self, costs, acc, shape, new_tokens):
        out = []
        for sp in costs.splits:
            window, spare = hide_window(costs, sp)
            k = int(window_draft_steps(costs, sp, shape.window_steps))
            wait = max(0.0, -spare)  # the target waits for the draft's prefill to end
            out.append(Candidate(self.name, window + wait + first_tree_time(costs, acc, k, shape, new_tokens),
                                 dict(draft_threads=sp.draft_threads, draft_sms=sp.draft_sms), label=sp.label))
        return out

    def label(self, plan) -> str:
        return split_label(plan.draft_threads, plan.draft_sms)
