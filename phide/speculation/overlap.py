"""Post-verify overlap: the drafter grows the NEXT tree while the target verifies this one.

The drafter assumes the target accepts the whole best path of this tree (each node's
highest-scored child, from the root down) and grows, on its lane and during the verify, a tree
rooted at the path's leaf, one level deeper than a round tree: the root's children are its guesses
of the target's bonus token. When the target really accepted the whole path and its bonus is one
of those children, that child's subtree is the next round's tree and the round skips its growth
(a hit); otherwise the tree grown ahead is discarded (on a short path the lane is told to stop at
its next step). Either way the drafter then `settle`s: it rewinds to before the growth ahead and
commits the real outcome.

Drafters: the draft model (DraftRunner: the path is cached like committed tokens) and the EAGLE
head (EagleRunner: its own outputs stand in for the target's features of the path, as
`phide.distill.head.head_rollout` trains it to). On a GPU the growth runs on a side stream (the
design's path: the drafter's kernels beside the verify's); on a CPU it runs on a thread lane, the
CPU twin, which shares the GIL with the verify and so measured no gain on 2 cores (docs/measured.md).
"""

from __future__ import annotations

import math
import threading
from contextlib import nullcontext

import torch

from phide.runtime.cpu_lanes import CpuLane
from phide.speculation.tree import Tree

# Grow ahead only when the drafter's own odds that the target accepts the whole best path reach
# this: the growth costs the verify its lane's cores and only pays when it hits.
MIN_PATH_PROB = 0.5


def best_path(tree: Tree) -> list[int]:
    """Node indices root -> leaf, taking at every node its first (highest-scored) child."""
    first_child: dict[int, int] = {}
    for node in range(1, len(tree)):
        first_child.setdefault(tree.parents[node], node)
    path = [0]
    while path[-1] in first_child:
        path.append(first_child[path[-1]])
    return path


def full_path_probability(tree: Tree) -> float:
    """The drafter's own probability that the target accepts the whole best path: the path
    leaf's cumulative score (a log-prob) over the root's (0, or the adopted child's score in a
    subtree grown ahead and adopted), exponentiated. Growing ahead needs that to hit."""
    return math.exp(tree.scores[best_path(tree)[-1]] - tree.scores[0])


class PostVerifyOverlap:
    """One round's next-tree growth, beside the verify."""

    def __init__(self, runner, tokens: list[int], budget: int, signal, cancel, stream=None):
        self.runner, self.tokens, self.budget = runner, tokens, budget
        self.signal, self.cancel, self.stream = signal, cancel, stream

    @classmethod
    def start(cls, runner, tree: Tree, lane: CpuLane, grow_kwargs: dict, timeline=None,
              side=None) -> "PostVerifyOverlap":
        """runner: a DraftRunner or EagleRunner whose last grown (or adopted) tree is `tree`
        (len > 1); lane: where the growth runs on a CPU; grow_kwargs: the round trees'
        budget/topk/max_depth/max_expansions; side: on a GPU, the CudaLane whose stream the
        growth's kernels go to (`window_lanes.side_lane`), so they run beside the verify's instead
        of queueing behind them; what the growth reads from the current stream is marked with
        its `record`."""
        stream = side.stream if side is not None else None
        record = side.record if side is not None else None
        path = best_path(tree)
        tokens = [tree.tokens[n] for n in path[1:]]
        kw = dict(grow_kwargs, budget=2 * grow_kwargs["budget"], max_depth=grow_kwargs["max_depth"] + 1,
                  max_expansions=grow_kwargs["max_expansions"] + grow_kwargs["topk"])
        cancel = threading.Event()
        if stream is not None:  # the drafter's state was written on the current stream
            stream.wait_stream(torch.cuda.current_stream(stream.device))

        def grow():
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                if timeline is None:
                    return runner.grow_assuming(path, tokens, cancel, record=record, **kw)
                with timeline.phase("grow_ahead", "draft"):
                    return runner.grow_assuming(path, tokens, cancel, record=record, **kw)

        return cls(runner, tokens, grow_kwargs["budget"], lane.submit(grow), cancel, stream=stream)

    def _join(self) -> None:
        """The growth's host work has ended: the current stream waits for its kernels too."""
        if self.stream is not None:
            torch.cuda.current_stream(self.stream.device).wait_stream(self.stream)

    def finish(self, tree: Tree, accept_nodes: list[int], bonus: int) -> Tree | None:
        """accept_nodes: the accepted path (root first); bonus: the target's token after it.
        Returns the next round's tree on a hit, else None; the runner is settled either way.
        Re-raises the lane's exception (a draft fault)."""
        if [tree.tokens[n] for n in accept_nodes[1:]] != self.tokens:
            self.cancel.set()  # a miss already: stop the growth at its next step
        self.signal.wait()
        self._join()
        return self.runner.settle(tree, accept_nodes, bonus, self.budget)

    def abandon(self) -> None:
        """The request ended during the verify: stop and join the lane."""
        self.cancel.set()
        try:
            self.signal.wait()
        except BaseException:  # noqa: S110 - the request is over; a late draft fault changes nothing
            pass
        self._join()
