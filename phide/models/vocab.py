"""Vocabulary bridging between a target and a draft.

Fast path: draft ids pass to the target unchanged when both tokenizers give the same token for
every id below a common bound; phide restricts draft proposals to that prefix. Otherwise the
general path drafts through text: `TextBridge` maps proposals, `phide.speculation.cross_vocab`
drives the draft with it. Either way the target's own
distribution is never sliced, so its output stays exactly its own.
"""

from __future__ import annotations

from phide.errors import PhideError

# Below this share of the smaller vocabulary the pair is treated as not sharing one.
MIN_SHARED_FRACTION = 0.9


def _id_to_token(tok) -> dict[int, str]:
    return {i: t for t, i in tok.get_vocab().items()}


def bridge_vocabularies(target_tok, draft_tok, target_vocab: int):
    """(shared vocabulary size, None) for the fast path, else (None, TextBridge)."""
    try:
        return shared_vocab_size(target_tok, draft_tok), None
    except PhideError:
        return None, TextBridge(target_tok, draft_tok, target_vocab)


def shared_vocab_size(target_tok, draft_tok) -> int:
    """Largest n such that ids [0, n) decode to the same token in both tokenizers."""
    a, b = _id_to_token(target_tok), _id_to_token(draft_tok)
    n = 0
    while n in a and n in b and a[n] == b[n]:
        n += 1
    smaller = min(len(a), len(b))
    if n < MIN_SHARED_FRACTION * smaller:
        where = f"id {n}: target {a.get(n)!r} vs draft {b.get(n)!r}"
        raise PhideError(
            f"target and draft vocabularies differ ({where}; only {n} of {smaller} ids agree); "
            "phide needs a draft that shares the target's vocabulary"
        )
    return n


class TextBridge:
    """Target ids for the text a draft proposes (tokenizers that do not share ids)."""

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
