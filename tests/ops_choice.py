"""Tests switch the ops' backend the way a user does (PHIDE_OPS) and make the next op call read it
(ops choose their backend once, not per call)."""

from phide import ops


def use_ops(monkeypatch, name: str) -> None:
    monkeypatch.setenv("PHIDE_OPS", name)
    monkeypatch.setattr(ops, "_chosen", None)
