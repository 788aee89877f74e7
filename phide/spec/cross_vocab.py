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

from phide.spec.runners import DraftRunner
from phide.spec.tree import Tree, chain

# Root placeholder of trees from a cross-vocabulary draft: the engine puts the target's root there.
ROOT_FROM_TARGET = -1


class TextBridge:
    def __init__(self, target_tok, draft_tok, target_vocab: int):
        self.target_tok, self.draft_tok, self.target_vocab = target_tok, draft_tok, target_vocab

    def target_text(self, target_ids: list[int]) -> str:
        return self.target_tok.decode(target_ids, skip_special_tokens=True)

    def draft_ids(self, text: str) -> list[int]:
        return list(self.draft_tok.encode(text, add_special_tokens=False)) if text else []

    def _encode(self, text: str) -> list[int]:
        return list(self.target_tok.encode(text, add_special_tokens=False))

    def proposals(self, generated: list[int], draft_ids: list[int]) -> list[int]:
        """Target ids continuing `generated` (target ids) with the text of `draft_ids` (draft
        ids covering the generated text followed by the draft's proposals).

        Tokenizers treat the start of a string specially (SentencePiece adds a word mark), so the
        continuation is encoded behind an anchor (the last generated tokens, else a fixed "a")
        and the anchor's ids are stripped; the first candidate whose decoded text really
        continues the committed text wins.
        """
        committed = self.target_text(generated)
        full = self.draft_tok.decode(draft_ids, skip_special_tokens=True)
        if not full.startswith(committed) or len(full) == len(committed):
            return []
        extra = full[len(committed):]
        want = (committed + extra).lstrip()
        candidates = []
        ids = self._encode(committed + extra)
        if ids[: len(generated)] == generated:
            candidates.append(ids[len(generated):])
        anchors = [self.target_text(generated[-k:]) for k in (1, 2, 3) if len(generated) >= k] + ["a"]
        for anchor in anchors:
            head, ids = self._encode(anchor), self._encode(anchor + extra)
            if head and ids[: len(head)] == head:
                candidates.append(ids[len(head):])
        candidates.append(self._encode(extra))
        for cand in candidates:
            if cand and self.target_text(generated + cand).lstrip() == want:
                return [t for t in cand if 0 <= t < self.target_vocab]
        return [t for t in candidates[-1] if 0 <= t < self.target_vocab]


class CrossVocabDraft:
    """Wraps a DraftRunner (draft vocabulary) to propose chains of target ids through text."""

    def __init__(self, runner: DraftRunner, bridge: TextBridge, prompt_ids: list[int]):
        self.runner, self.bridge = runner, bridge
        self.prompt_rows = len(prompt_ids)  # rows after the first grow caches the last prompt token
        self.prompt_last = prompt_ids[-1]
        self.generated: list[int] = []  # committed target ids
        self.draft_gen: list[int] = []  # draft ids of the committed text (cached or pending)
        self._chain_len = 0

    @property
    def forwards(self) -> int:
        return self.runner.forwards

    def grow(self, *, budget: int, topk: int, max_depth: int, max_expansions: int, stop=None, log=None,
             price=None) -> Tree:  # a chain of re-tokenised proposals: no tree to price
        depth = max(1, min(max_depth, budget - 1))
        d_tree = self.runner.grow(budget=depth + 1, topk=1, max_depth=depth, max_expansions=depth,
                                  stop=stop, log=log)
        proposals = self.bridge.proposals(self.generated, self.draft_gen + d_tree.tokens[1:])
        return chain(ROOT_FROM_TARGET, proposals[:depth])

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
