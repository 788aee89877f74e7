"""The schedules as objects: one registry, a new schedule in one file (tests/toy_schedule.py) and
one registry line, and no schedule named by a string literal outside the registry."""

import ast
from pathlib import Path

import pytest
import torch

from phide import schedules
from phide.engine import Engine, Request, SpecConfig
from phide.errors import PhideError
from phide.models.loading import load_llama
from phide.planner import Acceptance, Planner, candidates
from phide.schedules.costs import Costs, SplitCosts

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def draft_first():
    schedules.register("draft-first", "toy_schedule:DraftFirst")  # the one registry line
    yield schedules.get("draft-first")
    schedules.unregister("draft-first")


def test_a_schedule_in_one_file_runs_end_to_end_with_target_only_tokens(tiny_pair, draft_first):
    torch.manual_seed(0)
    engine = Engine(load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"]), eos_token_ids=[2],
                    spec=SpecConfig(topk=3, depth=5, budget=16, window_budget=40))
    for ids in ([1, 5, 9, 13, 4, 7], [1, 22, 3, 18, 30, 11, 6, 2 + 40]):
        alone = engine.generate(Request(prompt_ids=ids, max_new_tokens=20), schedules.TARGET_ONLY)
        res = engine.generate(Request(prompt_ids=ids, max_new_tokens=20), "draft-first")
        assert res.token_ids == alone.token_ids
        assert res.stats["plan"]["schedule"] == "draft-first" and res.stats["faults"] == 0
        # it really ran its own prefill phase: the draft grew the first tree, the verify took from it
        assert res.stats["first_tree_depth"] > 0 and res.stats["draft_forwards"] > 1
        assert res.stats["verifies"] < alone.stats["verifies"]
    phases = list(res.stats["phases"])
    assert phases.index("draft_grow") < phases.index("target_prefill")  # before the target's prefill


def test_the_planner_prices_a_registered_schedule(draft_first):
    costs = Costs(target_prepare_s=0.01, prepare_idle=False, target_prefill_s=0.1, target_step_s=0.01,
                  verify_extra_per_node_s=0.0, draft_prefill_s=0.05, draft_step_s=0.002, head_step_s=0.0,
                  splits=[SplitCosts(0.12, 0.06, 0.003, draft_threads=1)])
    acc = Acceptance(tau=3.0, window_accept_rate=0.5)
    labels = {c.label for c in candidates(costs, acc, new_tokens=30)}
    assert labels == {"target-only", "sequential", "hide@1t", "draft-first"}  # no head: no head-only
    assert "draft-first" not in {c.label for c in candidates(costs, acc, new_tokens=30, use_draft=False)}
    from phide.planner import Calibration

    planner = Planner(Calibration(costs, Acceptance(), acc, 30.0), has_draft=True, has_head=False)
    plan = planner.decide(30, "draft-first")
    assert plan.schedule == "draft-first" and plan.predicted_s == pytest.approx(
        planner.predictions(30)["draft-first"])


def test_an_unknown_schedule_is_the_callers_error():
    with pytest.raises(PhideError, match="unknown schedule 'fast'"):
        schedules.get("fast")


def _literals_outside_the_registry() -> list[str]:
    names = set(schedules.names())
    found = []
    for path in sorted((ROOT / "phide").rglob("*.py")):
        if path == ROOT / "phide" / "schedules" / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    return found


def test_schedule_names_are_not_string_literals_outside_the_registry():
    found = _literals_outside_the_registry()
    assert len(found) <= 5, found
