"""The schedules: one file each, one registry (this module; torch-free, so the CLI lists them
without loading torch).

A schedule is what `Engine.generate` runs before its round loop: where the draft's work happens
relative to the target's prefill, what a request must have loaded for it, and what it costs on
this machine (the planner's prediction). `phide.schedules.base.Schedule` is the contract:

    target-only   the target alone: prefill, then decode steps (rounds with no tree)
    head-only     the target's prefill, then every round drafted by the EAGLE head
    sequential    the target's prefill, then the draft's prefill and first tree, then rounds
    hide          the draft's prefill and first tree INSIDE the target's input preparation and
                  prefill, on a reserved lane split; then rounds

A new schedule is one file (a `Schedule` subclass) and one line in REGISTRY below (or
`register(name, "module:Class")` at run time, as tests/test_schedules.py does).
"""

from __future__ import annotations

import importlib

from phide.errors import PhideError

# The names other code refers to a schedule by (never the literal strings).
TARGET_ONLY, HEAD_ONLY, SEQUENTIAL, HIDE = "target-only", "head-only", "sequential", "hide"
AUTO = "auto"  # not a schedule: the planner picks one

# name -> "module:Class", imported on first use (the classes import torch).
REGISTRY: dict[str, str] = {
    TARGET_ONLY: "phide.schedules.target_only:TargetOnly",
    HEAD_ONLY: "phide.schedules.head_only:HeadOnly",
    SEQUENTIAL: "phide.schedules.sequential:Sequential",
    HIDE: "phide.schedules.hide:Hide",
}

_loaded: dict[str, object] = {}


def names() -> tuple[str, ...]:
    """The registered schedules, in registry order."""
    return tuple(REGISTRY)


def modes() -> tuple[str, ...]:
    """What a user may ask for: "auto" (the planner picks) and every schedule."""
    return (AUTO, *REGISTRY)


def register(name: str, target: str) -> None:
    """Add (or replace) the schedule `name`, implemented by the class at "module:Class"."""
    REGISTRY[name] = target
    _loaded.pop(name, None)


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)
    _loaded.pop(name, None)


def get(name: str):
    """The schedule `name` (one instance per process; schedules keep no request state)."""
    if name not in REGISTRY:
        raise PhideError(f"unknown schedule {name!r} (choose from {', '.join(REGISTRY)})")
    if name not in _loaded:
        module, cls = REGISTRY[name].split(":")
        schedule = getattr(importlib.import_module(module), cls)()
        if schedule.name != name:
            raise RuntimeError(f"{REGISTRY[name]} says its name is {schedule.name!r}, registered as {name!r}")
        _loaded[name] = schedule
    return _loaded[name]


def all_schedules() -> list:
    return [get(n) for n in REGISTRY]
