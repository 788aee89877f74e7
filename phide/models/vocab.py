"""Vocabulary bridging between a target and a draft.

Fast path: draft ids pass to the target unchanged when both tokenizers give the same token for
every id below a common bound; phide restricts draft proposals to that prefix. Otherwise the
general path drafts through text (`phide.spec.cross_vocab`). Either way the target's own
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
        from phide.spec.cross_vocab import TextBridge

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
