"""Drafting across tokenizers: a draft that does not share the target's vocabulary proposes
through text.

The draft grows a chain in its own vocabulary; the chain is decoded to text and re-tokenized
with the target's tokenizer, which yields a chain of target ids for the target to verify. After
verification the committed target text is re-tokenized for the draft and the draft's cache is
rolled back to the longest common prefix, so the draft always continues from exactly the text
the target produced. The mapping is a heuristic (tokenizations may disagree at boundaries);
losslessness does not depend on it, since the target verifies every proposal.
"""

from __future__ import annotations

from dataclasses import replace

from phide.models.vocab import TextBridge
from phide.speculation.drafter import Drafter
from phide.speculation.runners import DraftRunner
from phide.speculation.tree import Tree, chain

# Root of the trees of a cross-vocabulary draft: it grows its first tree before the target's
# prompt exists (hide), so it cannot know the target's root id; `anchor` puts it there.
ROOT_FROM_TARGET = -1


class CrossVocabDraft(Drafter):
    """Wraps a DraftRunner (draft vocabulary) to propose chains of target ids through text;
    `target_vocab`: the ids it may propose (the target's vocabulary)."""

    def __init__(self, runner: DraftRunner, bridge: TextBridge, prompt_ids: list[int], target_vocab: int):
        self.runner, self.bridge = runner, bridge
        self.vocab = target_vocab
        self.prompt_rows = len(prompt_ids)  # rows after the first grow caches the last prompt token
        self.prompt_last = prompt_ids[-1]
        self.generated: list[int] = []  # committed target ids
        self.draft_gen: list[int] = []  # draft ids of the committed text (cached or pending)

    @property
    def forwards(self) -> int:
        return self.runner.forwards

    def grow(self, *, budget: int, topk: int, max_depth: int, max_expansions: int, stop=None, on_step=None) -> Tree:
        depth = max(1, min(max_depth, budget - 1))
        d_tree = self.runner.grow(budget=depth + 1, topk=1, max_depth=depth, max_expansions=depth,
                                  stop=stop, on_step=on_step)
        proposals = self.bridge.proposals(self.generated, self.draft_gen + d_tree.tokens[1:])
        return chain(ROOT_FROM_TARGET, proposals[:depth])

    def anchor(self, tree: Tree, root: int) -> Tree:
        if tree.tokens[0] != ROOT_FROM_TARGET:
            return tree
        return replace(tree, tokens=[root, *tree.tokens[1:]])

    def commit(self, tree: Tree, accept_nodes: list[int], bonus: int) -> None:
        self.generated += [tree.tokens[n] for n in accept_nodes[1:]] + [int(bonus)]
        new = self.bridge.draft_ids(self.bridge.target_text(self.generated))
        common = 0
        while common < min(len(new), len(self.draft_gen)) and new[common] == self.draft_gen[common]:
            common += 1
        keep = min(common, self.runner.length - self.prompt_rows)  # rows whose KV is still valid
        if keep == len(new):  # nothing new to feed: re-feed the last token so a root exists
            keep -= 1
        if keep < 0:
            self.runner.length, self.runner.pending = self.prompt_rows - 1, [self.prompt_last]
        else:
            self.runner.length, self.runner.pending = self.prompt_rows + keep, new[keep:]
        self.draft_gen = new
