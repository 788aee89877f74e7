"""The planner's predictions and choices on hand-computed cost tables, its decisions per mode,
and its online learning."""

import math

import pytest

from phide.engine import Plan
from phide.errors import PhideError
from phide.planner import (Acceptance, Calibration, Costs, Planner, SplitCosts, load_calibration, pick, predict,
                           save_calibration, window_draft_steps)

MS = 1e-3


def _split(target_prefill, draft_prefill, draft_step, threads=1) -> SplitCosts:
    return SplitCosts(target_prefill_s=target_prefill * MS, draft_prefill_s=draft_prefill * MS,
                      draft_step_s=draft_step * MS, draft_threads=threads)


def _costs(**kw) -> Costs:
    base = dict(target_prepare_s=10 * MS, prepare_idle=False, target_prefill_s=80 * MS, target_step_s=10 * MS,
                verify_extra_per_node_s=0.1 * MS, draft_prefill_s=20 * MS, draft_step_s=10 * MS, head_step_s=1 * MS,
                splits=[_split(120, 30, 12)])
    base.update(kw)
    return Costs(**base)


def _planner(costs=None, *, head_tau=4.0, draft_tau=4.0, window_rate=0.5, tokens=30, has_head=True, **kw):
    cal = Calibration(costs or _costs(), Acceptance(head_tau, samples=1),
                      Acceptance(draft_tau, window_accept_rate=window_rate, samples=1), tokens)
    return Planner(cal, has_draft=True, has_head=has_head, **kw)


def test_target_only_and_head_only_by_hand():
    c = _costs()
    p = predict(c, Acceptance(tau=4.0), new_tokens=30, depth=6, budget=24, window_steps=8)
    assert p["target-only"] == pytest.approx((10 + 80 + 30 * 10) * MS)
    # head-only: ceil(30 / 4) = 8 rounds of (6 head steps + a 24-node verify) = 8 * (6 + 10 + 2.4) ms
    assert p["head-only"] == pytest.approx((90 + 8 * 18.4) * MS)


def test_sequential_and_hide_by_hand():
    c = _costs()
    acc = Acceptance(tau=4.0, window_accept_rate=0.5)
    p = predict(c, acc, new_tokens=30, depth=6, budget=24, window_steps=8)
    # sequential: 90 + draft 20 + 8 steps * 10 + first verify (10 + 8*0.1) ; gain 4 tokens, 25 left:
    # ceil(25/4) = 7 rounds * 18.4
    assert p["sequential"] == pytest.approx((90 + 20 + 80 + 10.8 + 7 * 18.4) * MS)
    # hide@1t: window 10 + 120 = 130; draft ready at 30; spare 100 ms = 8.33 forwards of 12 ms,
    # less the root's and half a step in flight -> 6 steps; gain 3 tokens, 26 left: 7 rounds
    assert int(window_draft_steps(c, c.splits[0], 8)) == 6
    assert p["hide@1t"] == pytest.approx((130 + 10.6 + 7 * 18.4) * MS)


def test_hide_waits_for_a_draft_slower_than_the_window():
    c = _costs(splits=[_split(85, 150, 40)])
    t = predict(c, Acceptance(tau=4.0, window_accept_rate=0.5), new_tokens=30)["hide@1t"]
    # window 95 ms, the draft needs 150: no tree steps and the target waits 55 ms
    assert window_draft_steps(c, c.splits[0], 8) == 0
    assert t == pytest.approx((95 + 55 + 10 + math.ceil(29 / 4) * 18.4) * MS)


def test_idle_preparation_hides_the_draft_for_free():
    """GPU-like: 40 ms of idle input preparation holds the whole solo draft prefill (20 ms)."""
    c = _costs(target_prepare_s=40 * MS, prepare_idle=True)
    t = predict(c, Acceptance(tau=4.0, window_accept_rate=0.5), new_tokens=30)["hide@1t"]
    # draft ready at 20 ms (solo, inside preparation); window 40 + 120 = 160; spare 140 -> 8 steps
    assert window_draft_steps(c, c.splits[0], 8) == 8
    assert t == pytest.approx((160 + 10.8 + 7 * 18.4) * MS)


def test_a_draft_as_costly_as_the_target_never_pays():
    """No head, a draft step as slow as a target step (both 7B): even at tau 4 the rounds cost
    more per token than plain decoding, so target-only."""
    plan = _planner(_costs(head_step_s=0.0, splits=[]), has_head=False).decide(30)
    assert plan.schedule == "target-only" and "no schedule beats" in plan.reason


def test_chooses_target_only_for_an_always_wrong_draft_and_no_head():
    plan = _planner(_costs(head_step_s=0.0), draft_tau=1.0, window_rate=0.0, has_head=False).decide(30)
    assert plan.schedule == "target-only"
    # ... and the same costs with an accurate cheap draft do pick it: the choice follows acceptance
    cheap = _costs(head_step_s=0.0, draft_step_s=1 * MS, splits=[_split(85, 20, 1)])
    assert _planner(cheap, draft_tau=4.0, window_rate=0.9, has_head=False).decide(30).schedule != "target-only"


def test_chooses_the_head_when_hiding_costs_more_than_it_saves():
    """On 2 CPU cores the split stretches the prefill by 40 ms for a window tree worth little."""
    plan = _planner(window_rate=0.1).decide(30)
    assert plan.schedule == "head-only" and plan.draft_threads == 0
    assert plan.predicted_s == pytest.approx(predict(_costs(), Acceptance(4.0, 0.1), new_tokens=30)["head-only"])


def test_chooses_hide_with_its_split_when_the_window_is_cheap_and_accurate():
    c = _costs(target_prepare_s=40 * MS, prepare_idle=True,
               splits=[_split(120, 60, 15, threads=1), _split(82, 60, 15, threads=2)])
    plan = _planner(c, head_tau=3.0, window_rate=0.9).decide(30)
    assert plan == Plan("hide", draft_threads=2, predicted_s=plan.predicted_s, reason=plan.reason)
    assert "hide@2t" in plan.reason


def test_margin_keeps_target_only_on_a_near_tie():
    preds = {"target-only": 100 * MS, "head-only": 98 * MS}  # 2% faster
    assert pick(preds, margin=0.03)[0] == "target-only"
    assert pick(preds, margin=0.01)[0] == "head-only"


def test_forced_modes_and_no_calibration():
    """A forced mode runs that schedule (hide: the best calibrated split); without a calibration
    `auto` is target-only and a forced hide takes the default split."""
    c = _costs(splits=[_split(120, 30, 12, threads=1), _split(100, 30, 12, threads=2)])
    p = _planner(c)
    assert p.decide(30, "sequential").schedule == "sequential"
    hide = p.decide(30, "hide")
    assert (hide.schedule, hide.draft_threads) == ("hide", 2)  # the 100 ms stretch beats the 120 ms one
    assert hide.predicted_s == pytest.approx(p.predict(hide, 30))
    blind = Planner(None, has_draft=True, has_head=True, default_split={"draft_threads": 1})
    assert blind.decide(30).schedule == "target-only" and "no calibration" in blind.decide(30).reason
    forced = blind.decide(30, "hide")
    assert (forced.schedule, forced.draft_threads, forced.predicted_s) == ("hide", 1, None)


def test_acceptance_is_updated_online():
    acc = Acceptance()
    acc.update(4.0)
    assert acc.tau == 4.0
    acc.update(2.0, weight=0.5)
    assert acc.tau == pytest.approx(3.0) and acc.samples == 2


def test_calibration_round_trip_and_errors(tmp_path):
    cal = Calibration(_costs(), Acceptance(3.5, samples=4), Acceptance(2.0, 0.4, 4), 27.5, {"machine": "x"})
    save_calibration(cal, tmp_path / "cal.json")
    assert load_calibration(tmp_path / "cal.json") == cal
    with pytest.raises(PhideError, match="no calibration"):
        load_calibration(tmp_path / "missing.json")
    for text in ('{"target_prepare_s": 1}', "[1, 2]", "not json"):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(PhideError, match="not a phide calibration"):
            load_calibration(tmp_path / "bad.json")


def test_planner_drops_an_always_wrong_draft(tiny_pair):
    """auto through a session: the first request tries the draft (an optimistic prior, not yet a
    measurement), sees that nothing is accepted, and every later request runs target-only, with
    identical tokens."""
    from phide.engine import Engine, Request
    from phide.models.loading import load_llama
    from phide.session import Session

    target, wrong = load_llama(tiny_pair["target"]), load_llama(tiny_pair["wrong"])
    # no head: the draft is the only drafter, and cheap enough that an accurate one would pay
    costs = _costs(head_step_s=0.0, draft_step_s=1 * MS, draft_prefill_s=5 * MS, splits=[])
    prior = Calibration(costs, Acceptance(), Acceptance(3.0, window_accept_rate=0.9, samples=0), 12)
    session = Session(Engine(target, wrong, eos_token_ids=[]),
                      Planner(prior, has_draft=True, has_head=False), target_side=None)
    alone = Engine(target, eos_token_ids=[])
    plans = []
    for i in range(4):
        ids = [1, 7 + i, 42, 99]
        out = session.generate(Request(prompt_ids=ids, max_new_tokens=12), "auto")
        assert out.token_ids == alone.generate(Request(prompt_ids=ids, max_new_tokens=12), "target-only").token_ids
        assert out.stats["mode"] == "auto"
        plans.append(out.stats["plan"]["schedule"])
    assert plans == ["sequential"] + ["target-only"] * 3, plans
    assert session.planner.draft_acc.tau < 1.6


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
    save_calibration(Calibration(_costs(), Acceptance(), Acceptance(), 30), tmp_path / "cal.json")
    assert main(["plan", "--calibration", str(tmp_path / "cal.json"), "--tau", "4", "--window-accept-rate", "0.1",
                 "--new-tokens", "30", "--window-steps", "8", "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["source"] == str(tmp_path / "cal.json")
    # the calibration's costs with --tau 4: the hand-computed head-only case above
    assert obj["plans"]["with_head"]["schedule"] == "head-only"
    assert obj["plans"]["with_head"]["predictions"]["head-only"] == pytest.approx((90 + 8 * 18.4) * MS)
    assert main(["plan", "--calibration", str(tmp_path / "nope.json")]) == 2
    assert "phide: error:" in capsys.readouterr().err


def test_a_forced_split_is_the_only_hide_candidate_and_every_plan_carries_it():
    c = _costs(splits=[_split(120, 30, 12, threads=1), _split(100, 30, 12, threads=2)])
    p = _planner(c)
    hide = p.decide(30, "hide", {"draft_threads": 1})
    assert (hide.schedule, hide.draft_threads) == ("hide", 1)  # not the faster 2-thread split
    assert hide.predicted_s == pytest.approx(predict(c, Acceptance(4.0, 0.5), new_tokens=30)["hide@1t"])
    head = p.decide(30, "head-only", {"draft_threads": 1})
    assert (head.schedule, head.draft_threads) == ("head-only", 1)
    uncalibrated = p.decide(30, "hide", {"draft_sms": 16})  # a split the calibration never measured
    assert (uncalibrated.draft_sms, uncalibrated.predicted_s) == (16, None)
    assert "not calibrated" in uncalibrated.reason


def test_predictions_follow_the_machine_and_a_streak_of_misses_is_said(capsys):
    """Calibrated on a busy machine: every request now runs in a third of its predicted time.
    The load factor (a moving average of measured / predicted) brings predictions to within 25%
    in a few requests; the choice between schedules does not change (every cost scales alike);
    three misses by more than 2x in a row are said once on stderr and in the stats."""
    planner = _planner()
    plan = planner.decide(30, "auto")
    base = planner.predictions(30)
    errors, warned = [], []
    for _ in range(6):
        truth = planner.predict(plan, 30) / planner.load_scale / 3  # the quiet machine: 3x faster
        stats = {"wall_s": truth, "new_tokens": 30, "verifies": 0}
        before = planner.predict(plan, 30)
        errors.append(abs(before - truth) / truth)
        planner.observe(plan, stats)
        warned.append("warning" in stats["prediction"])
    assert errors[0] == pytest.approx(2.0) and errors[-1] < 0.25
    assert all(b > a for a, b in zip(errors[1:], errors))  # shrinking every request
    assert planner.decide(30, "auto").schedule == plan.schedule
    assert {k: v * planner.load_scale for k, v in base.items()} == pytest.approx(planner.predictions(30))
    assert warned == [False, False, True, True, True, True]  # 1/3 of the calibration's prediction each time
    err = capsys.readouterr().err
    assert err.count("phide: warning: the calibration's predictions were off by more than 2x for 3 requests") == 1
