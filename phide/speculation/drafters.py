"""The drafters of one request, as the round loop sees them.

Who grows each round's tree: the first tree comes from the prefill (the draft's window tree, or
none); after it the EAGLE head drafts when the request has one, else the draft model keeps
drafting, else every round verifies the root alone (a plain decode step). A drafter that raises,
returns NaN or proposes a token the verifier cannot take is dropped (`stats["faults"]`) and the
target goes on: the drafters can only change how many target forwards a request needs, never its
tokens.

Post-verify overlap (phide.speculation.overlap) lives here too: `grow_ahead` starts the next tree
beside the verify when it may pay, `advance` settles it and keeps its tree on a hit.
"""

from __future__ import annotations

import torch

from phide.runtime.cpu_lanes import CpuLane, ThreadShare, cpu_split
from phide.runtime.window_lanes import side_lane
from phide.speculation.checks import checked_tree
from phide.speculation.drafter import Drafter
from phide.speculation.overlap import MIN_PATH_PROB, PostVerifyOverlap, full_path_probability
from phide.speculation.stats import RequestStats
from phide.speculation.tree import Tree, chain


class Drafters:
    """spec: the engine's SpecConfig (round trees' shape, `overlap`); stats: the request's;
    lane_splits / draft_threads / draft_sms: the engine's lanes and the plan's split (where a
    drafter grows ahead); draft: the draft model's drafter or None; head: the head's or None;
    first_tree: the tree the prefill produced (grown by the draft), or None."""

    def __init__(self, spec, stats: RequestStats, timeline, *, lane_splits, draft_threads: int, draft_sms: int,
                 draft: Drafter | None, head: Drafter | None, first_tree: Tree | None):
        self.spec, self.stats, self.tl = spec, stats, timeline
        # Who drafts the rounds after the first tree: the head when there is one, else the draft.
        self.drafter: Drafter | None = head if head is not None else draft
        self.ready, self.grown_by = first_tree, draft  # the next tree, and whose it is
        self.grow_kwargs = dict(budget=spec.budget, topk=spec.topk, max_depth=spec.depth,
                                max_expansions=spec.topk * spec.depth)
        device = lane_splits.device
        target_threads, lane_threads = cpu_split(torch.get_num_threads(), draft_threads if device.type == "cpu" else 0)
        self.lane = CpuLane("draft", lane_threads)
        self.side = None  # a GPU drafter grows ahead on its own stream (a CudaLane)
        if device.type == "cuda" and spec.overlap:
            self.side = side_lane(lane_splits, draft_sms)
        # While a drafter grows ahead its lane holds its cores through the verify, the commit and
        # the hand-over; the target keeps the rest until then (using every core while the lane
        # still runs makes the OpenMP pool wait on it).
        self.share = ThreadShare(target_threads)

    # ------------------------------------------------------------------ the round
    def next_tree(self, root: int) -> Tree:
        """The ready tree (the prefill's, or one grown ahead that hit), else one grown now."""
        tree, self.ready = self.ready, None
        if tree is not None:
            return tree
        self.grown_by = None
        drafter = self.drafter
        if drafter is None:
            return chain(root, [])
        try:
            with self.tl.phase(f"{drafter.kind}_grow", "draft"):
                tree = drafter.grow(**self.grow_kwargs)
            tree = checked_tree(tree, root, drafter)
        except Exception as exc:  # any drafter failure: drop it, keep going
            self._drop(exc)
            return chain(root, [])
        self.grown_by = drafter
        return tree

    def grow_ahead(self, tree: Tree) -> PostVerifyOverlap | None:
        """Post-verify overlap: start growing the next tree beside the verify of `tree`, when
        the drafter grew `tree` itself and its own odds that the target takes the whole best
        path reach `overlap.MIN_PATH_PROB`."""
        drafter = self.drafter
        if (not self.spec.overlap or drafter is None or drafter is not self.grown_by or len(tree) < 2
                or not drafter.can_grow_ahead or full_path_probability(tree) < MIN_PATH_PROB):
            return None
        self.share.lower()
        try:
            ahead = PostVerifyOverlap.start(drafter, tree, self.lane, self.grow_kwargs, self.tl, self.side)
        except Exception as exc:
            self.share.restore()
            self._drop(exc)
            return None
        self.stats.overlap_rounds += 1
        return ahead

    def advance(self, tree: Tree, path: list[int], bonus: int, ahead: PostVerifyOverlap | None) -> None:
        """The target accepted `path` (nodes of `tree`, root first) and emitted `bonus`: the
        drafter follows; a tree grown ahead is settled, and kept when it hit."""
        drafter = self.drafter
        try:
            if drafter is None:
                return
            if not drafter.can_follow(bonus):
                self.drafter = None  # the drafter cannot follow: quietly go target-only
                self.stats.draft_stopped = "bonus token outside the shared vocabulary"
                self.abandon(ahead)
                return
            if ahead is None:
                drafter.commit(tree, path, bonus)
                return
            ready = ahead.finish(tree, path, bonus)
            if ready is not None:
                self.ready, self.grown_by = checked_tree(ready, bonus, drafter), drafter
                self.stats.overlap_hits += 1
        except Exception as exc:  # a drafter fault while committing or growing ahead
            self._drop(exc)
        finally:
            self.share.restore()  # the lane is idle again

    def abandon(self, ahead: PostVerifyOverlap | None) -> None:
        """The request ended (or the draft stopped) while a tree grew ahead: stop and join it."""
        if ahead is not None:
            ahead.abandon()
        self.share.restore()

    # ------------------------------------------------------------------ pieces
    def _drop(self, exc: BaseException) -> None:
        self.stats.fault(exc)
        self.drafter = None
        self.ready = None
