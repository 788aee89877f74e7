"""What the verifier may take from a drafter: a tree hanging off the committed root whose ids all
lie in the drafter's vocabulary (the shared one for the draft model, the target's for the head).
Anything else is a DraftFault: the drafter is dropped and the target goes on alone."""

from __future__ import annotations

from phide.errors import DraftFault
from phide.speculation.tree import Tree


def checked_tree(tree: Tree, root: int, drafter) -> Tree:
    """`drafter`'s tree, anchored at the committed `root` (`Drafter.anchor`) and checked."""
    tree = drafter.anchor(tree, root)
    check_tree(tree, root, drafter.vocab)
    return tree


def check_tree(tree: Tree, root: int, vocab: int) -> None:
    if tree.tokens[0] != root:
        raise DraftFault("draft tree root is not the last committed token")
    if any(not 0 <= t < vocab for t in tree.tokens[1:]):
        raise DraftFault("draft proposed a token outside the shared vocabulary")
