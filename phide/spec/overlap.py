"""Post-verify overlap: the drafter grows the NEXT tree while the target verifies this one.

The drafter assumes the target accepts the whole best path of this tree (each node's
highest-scored child, from the root down) and grows, on its lane and during the verify, a tree
rooted at the path's leaf, one level deeper than a round tree: the root's children are its guesses
of the target's bonus token. When the target really accepted the whole path and its bonus is one
of those children, that child's subtree is the next round's tree and the round skips its growth
(a hit); otherwise the speculative work is discarded (on a short path the lane is told to stop at
its next step). Either way the drafter then `settle`s: it rewinds to before the speculation and
commits the real outcome.

Drafters: the draft model (DraftRunner: the path is cached like committed tokens) and the EAGLE
head (EagleRunner: its own outputs stand in for the target's features of the path, as
`phide.distill.head_rollout` trains it to). A thread lane shares the GIL with the verify, so on a
CPU the head runs in a worker process instead (phide.spec.remote_head); its runner then carries
its own lane (`remote = True`).
"""

from __future__ import annotations

import math
import threading
from contextlib import nullcontext

import torch

from phide.runtime.cpu_lanes import CpuLane
from phide.spec.tree import Tree


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
    subtree a speculation handed over), exponentiated. A speculation needs that to hit."""
    return math.exp(tree.scores[best_path(tree)[-1]] - tree.scores[0])


class PostVerifyOverlap:
    """One round's speculative next-tree growth."""

    def __init__(self, runner, tokens: list[int], budget: int, signal, cancel, timeline=None, stream=None):
        self.runner, self.tokens, self.budget = runner, tokens, budget
        self.signal, self.cancel, self.timeline, self.stream = signal, cancel, timeline, stream

    @classmethod
    def start(cls, runner, tree: Tree, lane: CpuLane, grow_kwargs: dict, timeline=None,
              stream=None) -> "PostVerifyOverlap":
        """runner: a DraftRunner, EagleRunner or RemoteHeadRunner whose last grown (or adopted)
        tree is `tree` (len > 1); lane: where a local runner's growth runs (a remote runner has
        its own); grow_kwargs: the round trees' budget/topk/max_depth/max_expansions; stream: on
        a GPU, the stream the growth's kernels go to (`window_lanes.side_stream`), so they run
        beside the verify's instead of queueing behind them."""
        path = best_path(tree)
        tokens = [tree.tokens[n] for n in path[1:]]
        kw = dict(grow_kwargs, budget=2 * grow_kwargs["budget"], max_depth=grow_kwargs["max_depth"] + 1,
                  max_expansions=grow_kwargs["max_expansions"] + grow_kwargs["topk"])
        if getattr(runner, "remote", False):
            return cls(runner, tokens, grow_kwargs["budget"], runner.speculate_async(path, tokens, kw),
                       runner.cancel, timeline)
        cancel = threading.Event()
        if stream is not None:  # the drafter's state was written on the current stream
            stream.wait_stream(torch.cuda.current_stream(stream.device))

        def speculate():
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                if timeline is None:
                    return runner.speculate(path, tokens, cancel, **kw)
                with timeline.phase("grow_ahead", "draft"):
                    return runner.speculate(path, tokens, cancel, **kw)

        return cls(runner, tokens, grow_kwargs["budget"], lane.submit(speculate), cancel, stream=stream)

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
        span = getattr(self.signal, "span", None)
        if self.timeline is not None and span is not None:  # the worker's time, on our timeline
            self.timeline.record("grow_ahead", "draft", *span)
        return self.runner.settle(tree, accept_nodes, bonus, self.budget)

    def abandon(self) -> None:
        """The request ended during the verify: stop and join the lane."""
        self.cancel.set()
        try:
            self.signal.wait()
        except BaseException:  # noqa: S110 - the request is over; a late draft fault changes nothing
            pass
        self._join()
