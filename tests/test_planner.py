"""The planner's predictions and choices on hand-computed cost tables."""

import math

import pytest

from phide.errors import PhideError
from phide.planner import Acceptance, Costs, SplitCosts, choose, load_costs, predict, save_costs

MS = 1e-3


def _costs(**kw) -> Costs:
    base = dict(target_prepare_s=10 * MS, prepare_idle=False, target_prefill_s=80 * MS, target_step_s=10 * MS,
                verify_extra_per_node_s=0.1 * MS, draft_prefill_s=20 * MS, draft_step_s=10 * MS, head_step_s=1 * MS,
                splits=[SplitCosts(0.5, target_prefill_s=120 * MS, draft_prefill_s=30 * MS, draft_step_s=12 * MS)])
    base.update(kw)
    return Costs(**base)


def test_target_only_and_head_only_by_hand():
    c = _costs()
    p = predict(c, Acceptance(tau=4.0), new_tokens=30, depth=6, budget=24, window_steps=8)
    assert p["target-only"][0] == pytest.approx((10 + 80 + 30 * 10) * MS)
    # head-only: ceil(30 / 4) = 8 rounds of (6 head steps + a 24-node verify) = 8 * (6 + 10 + 2.4) ms
    assert p["head-only"][0] == pytest.approx((90 + 8 * 18.4) * MS)


def test_sequential_and_hide_by_hand():
    c = _costs()
    acc = Acceptance(tau=4.0, window_accept_rate=0.5)
    p = predict(c, acc, new_tokens=30, depth=6, budget=24, window_steps=8)
    # sequential: 90 + draft 20 + 8 steps * 10 + first verify (10 + 8*0.1) ; gain 4 tokens, 25 left:
    # ceil(25/4) = 7 rounds * 18.4
    assert p["sequential"][0] == pytest.approx((90 + 20 + 80 + 10.8 + 7 * 18.4) * MS)
    # hide@0.5: window 10 + 120 = 130; draft ready at 30; spare 100 ms = 8.33 forwards of 12 ms,
    # less the root's and half a step in flight -> 6 steps; gain 3 tokens, 26 left: 7 rounds
    t, k, share = p["hide@0.5"]
    assert k == 6 and share == 0.5
    assert t == pytest.approx((130 + 10.6 + 7 * 18.4) * MS)


def test_hide_waits_for_a_draft_slower_than_the_window():
    c = _costs(splits=[SplitCosts(0.25, target_prefill_s=85 * MS, draft_prefill_s=150 * MS, draft_step_s=40 * MS)])
    t, k, _ = predict(c, Acceptance(tau=4.0, window_accept_rate=0.5), new_tokens=30)["hide@0.25"]
    # window 95 ms, the draft needs 150: no tree steps and the target waits 55 ms
    assert k == 0
    assert t == pytest.approx((95 + 55 + 10 + math.ceil(29 / 4) * 18.4) * MS)


def test_idle_preparation_hides_the_draft_for_free():
    """GPU-like: 40 ms of idle input preparation holds the whole solo draft prefill (20 ms)."""
    c = _costs(target_prepare_s=40 * MS, prepare_idle=True)
    t, k, _ = predict(c, Acceptance(tau=4.0, window_accept_rate=0.5), new_tokens=30)["hide@0.5"]
    # draft ready at 20 ms (solo, inside preparation); window 40 + 120 = 160; spare 140 -> 8 steps
    assert k == 8
    assert t == pytest.approx((160 + 10.8 + 7 * 18.4) * MS)


def test_a_draft_as_costly_as_the_target_never_pays():
    """No head, a draft step as slow as a target step (both 7B): even at tau 4 the rounds cost
    more per token than plain decoding, so target-only."""
    plan = choose(_costs(head_step_s=0.0, splits=[]), Acceptance(tau=4.0, window_accept_rate=0.5), new_tokens=30)
    assert plan.schedule == "target-only"


def test_chooses_target_only_for_an_always_wrong_draft_and_no_head():
    c = _costs(head_step_s=0.0)
    plan = choose(c, Acceptance(tau=1.0, window_accept_rate=0.0), new_tokens=30)
    assert plan.schedule == "target-only" and plan.first_tree_steps == 0
    assert "no schedule beats" in plan.reason


def test_chooses_the_head_when_hiding_costs_more_than_it_saves():
    """On 2 CPU cores the split stretches the prefill by 40 ms for a window tree worth little."""
    plan = choose(_costs(), Acceptance(tau=4.0, window_accept_rate=0.1), new_tokens=30)
    assert plan.schedule == "head-only"


def test_chooses_hide_when_the_window_is_cheap_and_accurate():
    c = _costs(target_prepare_s=40 * MS, prepare_idle=True,
               splits=[SplitCosts(0.1, target_prefill_s=82 * MS, draft_prefill_s=60 * MS, draft_step_s=15 * MS)])
    plan = choose(c, Acceptance(tau=3.0, window_accept_rate=0.9), new_tokens=30)
    assert plan.schedule == "hide" and plan.draft_share == 0.1 and plan.first_tree_steps > 0


def test_margin_keeps_target_only_on_a_near_tie():
    c = _costs(head_step_s=0.0, splits=[])
    # sequential barely wins: 1% better than target-only with these numbers? Make it a tie.
    plan = choose(c, Acceptance(tau=1.0, window_accept_rate=0.0), new_tokens=1, margin=0.03)
    assert plan.schedule == "target-only"


def test_acceptance_is_updated_online():
    acc = Acceptance()
    acc.update(4.0)
    assert acc.tau == 4.0
    acc.update(2.0, weight=0.5)
    assert acc.tau == pytest.approx(3.0) and acc.samples == 2


def test_calibration_round_trip_and_errors(tmp_path):
    c = _costs()
    save_costs(c, tmp_path / "cal.json")
    assert load_costs(tmp_path / "cal.json") == c
    with pytest.raises(PhideError, match="no calibration"):
        load_costs(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"target_prepare_s": 1}')
    with pytest.raises(PhideError, match="not a phide calibration"):
        load_costs(tmp_path / "bad.json")


def test_engine_planner_drops_an_always_wrong_draft(tiny_pair):
    """hide under the planner: the first request tries the draft (optimistic prior), sees that
    nothing is accepted, and every later request runs target-only, with identical tokens."""
    from phide.engine import Engine, Request
    from phide.models.loading import load_llama
    from phide.planner import Planner

    target, wrong = load_llama(tiny_pair["target"]), load_llama(tiny_pair["wrong"])
    # no head: the draft is the only drafter, and cheap enough that an accurate one would pay
    costs = _costs(head_step_s=0.0, draft_step_s=1 * MS, draft_prefill_s=5 * MS, splits=[])
    planner = Planner(costs, prior_tau=3.0, prior_window_rate=0.9)
    engine = Engine(target, wrong, eos_token_ids=[], planner=planner)
    alone = Engine(target, eos_token_ids=[])
    plans = []
    for i in range(4):
        ids = [1, 7 + i, 42, 99]
        out = engine.generate(Request(prompt_ids=ids, max_new_tokens=12, mode="hide"))
        assert out.token_ids == alone.generate(Request(prompt_ids=ids, max_new_tokens=12, mode="target-only")).token_ids
        assert out.stats["mode"] == "hide"
        plans.append(out.stats["plan"])
    assert plans[0] == "sequential" and plans[1:] == ["target-only"] * 3, plans
    assert planner.draft_acc.tau < 1.6


def test_plan_command_projects_the_real_pair(capsys, tmp_path):
    import json

    from phide.cli import main

    assert main(["plan", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    plans = obj["plans"]
    # with 7B-class drafting costs only the head pays; the draft alone never beats target-only
    assert plans["draft_only"]["schedule"] == "target-only"
    assert plans["with_head"]["schedule"] != "target-only"
    assert {"target-only", "sequential", "head-only"} <= set(plans["with_head"]["predictions"])
    assert sum(k.startswith("hide@") for k in plans["with_head"]["predictions"]) == 4  # 8/16/24/32 SMs
    save_costs(_costs(), tmp_path / "cal.json")
    assert main(["plan", "--calibration", str(tmp_path / "cal.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == str(tmp_path / "cal.json")
    assert main(["plan", "--calibration", str(tmp_path / "nope.json")]) == 2
    assert "phide: error:" in capsys.readouterr().err
