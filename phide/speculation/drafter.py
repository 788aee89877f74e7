"""The drafter contract: what the round loop (`Drafters`) asks of whoever proposes trees.

Implemented by the draft model (`runners.DraftRunner`), the EAGLE head (`eagle_runner.EagleRunner`)
and a draft across tokenizers (`cross_vocab.CrossVocabDraft`). A new drafter (an n-gram table, an
EAGLE-3 variant) subclasses `Drafter` and implements `grow` and `commit`; growing ahead
(post-verify overlap) is optional (`can_grow_ahead`).

Every tree a drafter returns is rooted at the last committed token and holds ids < `vocab`
(`checks.check_tree` enforces it); a drafter that raises is dropped and the target goes on.
"""

from __future__ import annotations

import threading

from phide.speculation.tree import Tree


class Drafter:
    kind = "draft"          # "draft" or "head": names its timeline phase ("<kind>_grow")
    vocab: int              # proposed ids are < vocab (the verifier's check)
    forwards: int = 0       # model forwards run so far (the request's stats)
    can_grow_ahead = False  # implements grow_assuming / settle (phide.speculation.overlap)

    def grow(self, *, budget: int, topk: int, max_depth: int, max_expansions: int,
             stop=None, on_step=None) -> Tree:
        """Cache what is pending, then grow a tree of at most `budget` nodes: `topk` children per
        expansion, `max_depth` levels, at most `max_expansions` nodes run through the model; stop
        early when `stop.is_set()` (the hide window) and call `on_step(candidates)` after each
        step (the engine records a device signal there)."""
        raise NotImplementedError

    def commit(self, tree: Tree, accept_nodes: list[int], bonus: int) -> None:
        """The target accepted `accept_nodes` (nodes of `tree`, root first) and emitted `bonus`:
        follow, so the next `grow` starts from the bonus."""
        raise NotImplementedError

    def anchor(self, tree: Tree, root: int) -> Tree:
        """`tree` rooted at the committed `root`. A drafter grows its trees from the root it knows;
        one that cannot know it (a draft across tokenizers: its first tree grows inside the
        target's prefill, before the target's prompt exists) roots them at ROOT_FROM_TARGET and
        puts `root` there now. Any other root is left as it is (and fails the check)."""
        return tree

    def can_follow(self, token: int) -> bool:
        """Whether the drafter can continue after the target emitted `token` (the draft model
        cannot past the shared vocabulary: the request then goes on target-only)."""
        return True

    def grow_assuming(self, path: list[int], tokens: list[int], stop: threading.Event | None = None,
                      record=None, **grow_kwargs) -> Tree:
        """Post-verify overlap: grow the next tree as if the target accepted the whole `path`
        (its `tokens` after the root); `record` marks tensors read on a side stream."""
        raise NotImplementedError(f"{type(self).__name__} does not grow ahead")

    def settle(self, tree: Tree, accept_nodes: list[int], bonus: int, budget: int) -> Tree | None:
        """After `grow_assuming`: rewind, commit the real outcome, and return the tree grown ahead
        (cut to `budget`) when it guessed right, else None."""
        raise NotImplementedError(f"{type(self).__name__} does not grow ahead")
