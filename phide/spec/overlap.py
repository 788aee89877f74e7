"""Post-verify overlap: the draft grows the NEXT tree while the target verifies this one.

The draft assumes the optimistic outcome: the target accepts the tree's best path (each node's
highest-scored child, from the root down) and then emits the draft's own top-1 token after the
path's leaf. It grows the next tree from there on its lane, while the target runs the verify. When
the target's real outcome (accepted tokens + bonus) is exactly that guess, the next tree is ready
and the round skips its draft growth; otherwise the speculative work is discarded (the lane is
told to stop at its next step) and the draft's state is rewound: the accepted tokens and the
bonus are fed again at the next growth (their KV rows are recomputed, since the speculative run
reused the scratch rows the normal commit copies from).

Only the draft model continues this way: the EAGLE head needs the target's features of the
accepted tokens, which exist only after the verify.
"""

from __future__ import annotations

import threading

from phide.runtime.cpu_lanes import CpuLane, Signal
from phide.spec.runners import DraftRunner
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


class PostVerifyOverlap:
    """One round's speculative next-tree growth. `start` returns None when there is no guess
    (the path's leaf was never expanded by the draft, so its next token is unknown)."""

    def __init__(self, draft: DraftRunner, lane: CpuLane, grow_kwargs: dict):
        self.draft, self.lane, self.grow_kwargs = draft, lane, grow_kwargs
        self.guess: list[int] = []
        self.length = 0
        self.cancel = threading.Event()
        self.signal: Signal | None = None

    @classmethod
    def start(cls, draft: DraftRunner, tree: Tree, lane: CpuLane, grow_kwargs: dict,
              timeline=None) -> "PostVerifyOverlap | None":
        path = best_path(tree)
        nxt = draft.next_guess.get(path[-1])
        if nxt is None:
            return None
        self = cls(draft, lane, grow_kwargs)
        self.guess = [tree.tokens[n] for n in path[1:]] + [int(nxt)]
        self.length = draft.length
        self.pending_before = list(draft.pending)

        def speculate():
            draft.pending = list(self.guess)  # as if committed: the guess's tokens get cached
            if timeline is None:
                return draft.grow(stop=self.cancel, **self.grow_kwargs)
            with timeline.phase("draft_grow_ahead", "draft"):
                return draft.grow(stop=self.cancel, **self.grow_kwargs)

        self.signal = lane.submit(speculate)
        return self

    def finish(self, accepted: list[int], bonus: int) -> Tree | None:
        """accepted: the tokens of the accepted drafted nodes (root excluded); bonus: the target's
        token after them. Returns the ready next tree on a hit, else None (draft rewound).
        Re-raises the lane's exception (a draft fault) after rewinding."""
        real = [int(t) for t in accepted] + [int(bonus)]
        hit = real == self.guess
        if not hit:
            self.cancel.set()
        try:
            tree = self.signal.wait()
        except BaseException:
            self._rewind(real)
            raise
        if hit:
            return tree
        self._rewind(real)
        return None

    def abandon(self) -> None:
        """The request ended during the verify: stop and join the lane."""
        self.cancel.set()
        try:
            self.signal.wait()
        except BaseException:  # noqa: S110 - the request is over; a late draft fault changes nothing
            pass

    def _rewind(self, real: list[int]) -> None:
        self.draft.length = self.length
        self.draft.pending = self.pending_before + real
