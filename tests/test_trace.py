"""Timeline export: Chrome trace JSON, validation, lane overlap, Gantt PNG, NVTX ranges."""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter

import pytest

from phide.runtime import timeline as timeline_mod
from phide.runtime.timeline import Span, Timeline
from phide.runtime.trace import (
    busy_seconds,
    chrome_trace,
    overlap_seconds,
    timeline_png,
    validate_chrome_trace,
    write_chrome_trace,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HIDE_PHASES = {"target_prepare", "target_prefill", "draft_prepare", "draft_prefill", "draft_grow", "verify"}


def make_timeline(*spans) -> Timeline:
    """spans: (name, lane, start_s, end_s)."""
    tl = Timeline()
    tl.spans = [Span(*s) for s in spans]
    return tl


def hide_like() -> Timeline:
    return make_timeline(
        ("target_prepare", "target", 0.0, 0.001),
        ("target_prefill", "target", 0.001, 0.0035),
        ("draft_prepare", "draft", 0.0005, 0.00075),
        ("draft_prefill", "draft", 0.00075, 0.002),
        ("draft_grow", "draft", 0.002, 0.004),
        ("verify", "target", 0.004, 0.00525),
        ("commit", "target", 0.00525, 0.0053),
    )


def complete(obj):
    return [e for e in obj["traceEvents"] if e["ph"] == "X"]


# ---------------------------------------------------------------- chrome trace format
def test_complete_events_one_per_span_in_microseconds():
    tl = hide_like()
    obj = chrome_trace(tl, pid=7)
    xs = complete(obj)
    assert len(xs) == len(tl.spans)
    by_name = {e["name"]: e for e in xs}
    assert set(by_name) == {s.name for s in tl.spans}
    pre = by_name["target_prefill"]
    assert pre["ts"] == pytest.approx(1000.0) and pre["dur"] == pytest.approx(2500.0)
    assert by_name["draft_prepare"]["ts"] == pytest.approx(500.0)
    assert by_name["draft_prepare"]["dur"] == pytest.approx(250.0)
    assert by_name["commit"]["ts"] == pytest.approx(5250.0) and by_name["commit"]["dur"] == pytest.approx(50.0)
    for s in tl.spans:
        e = by_name[s.name]
        assert e["cat"] == s.lane and e["pid"] == 7
        assert e["tid"] == {"target": 1, "draft": 2}[s.lane]
    assert [e["ts"] for e in xs] == sorted(e["ts"] for e in xs)
    assert obj["displayTimeUnit"] == "ms"
    assert obj["otherData"]["time_unit"] == "us"


def test_metadata_names_both_lanes_with_their_tids():
    obj = chrome_trace(hide_like(), pid=3)
    names = {e["tid"]: e["args"]["name"] for e in obj["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {1: "target lane", 2: "draft lane"}
    assert all(e["pid"] == 3 for e in obj["traceEvents"])
    procs = [e for e in obj["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"]
    assert [p["args"]["name"] for p in procs] == ["phide"]
    # every complete event sits on a named thread
    assert {e["tid"] for e in complete(obj)} <= set(names)


def test_lane_tids_are_stable_and_extra_lanes_follow():
    only_draft = chrome_trace(make_timeline(("draft_grow", "draft", 0.0, 0.001)))
    assert complete(only_draft)[0]["tid"] == 2
    extra = chrome_trace(make_timeline(("io", "loader", 0.0, 0.001), ("verify", "target", 0.001, 0.002)))
    tids = {e["name"]: e["tid"] for e in complete(extra)}
    assert tids == {"verify": 1, "io": 3}
    names = {e["tid"]: e["args"]["name"] for e in extra["traceEvents"] if e["name"] == "thread_name"}
    assert names[3] == "loader lane"


def test_json_round_trip_validate_and_write(tmp_path):
    tl = hide_like()
    obj = chrome_trace(tl, metadata={"mode": "hide", "new_tokens": 8})
    again = json.loads(json.dumps(obj, allow_nan=False))
    assert again == obj
    validate_chrome_trace(again)
    assert again["otherData"]["mode"] == "hide" and again["otherData"]["new_tokens"] == 8
    assert again["otherData"]["overlap_s"] == pytest.approx(overlap_seconds(tl))
    out = write_chrome_trace(tl, tmp_path / "trace.json", pid=5, metadata={"mode": "hide"})
    loaded = json.loads(out.read_text())
    validate_chrome_trace(loaded)
    assert loaded == json.loads(json.dumps(chrome_trace(tl, pid=5, metadata={"mode": "hide"})))


# ---------------------------------------------------------------- validation
GOOD_X = {"name": "verify", "ph": "X", "ts": 1.0, "dur": 2.0, "pid": 1, "tid": 1}
GOOD_M = {"name": "thread_name", "ph": "M", "ts": 0, "pid": 1, "tid": 1, "args": {"name": "target lane"}}


def test_validate_accepts_good_events():
    validate_chrome_trace({"traceEvents": [GOOD_M, GOOD_X]})
    validate_chrome_trace([GOOD_M, GOOD_X])  # the bare-array form is also a valid trace
    validate_chrome_trace({"traceEvents": []})


@pytest.mark.parametrize("key", ["name", "ph", "ts", "pid", "tid", "dur"])
def test_validate_rejects_complete_event_missing_a_key(key):
    bad = {k: v for k, v in GOOD_X.items() if k != key}
    with pytest.raises(ValueError, match=key if key != "ph" else "ph|dur"):
        validate_chrome_trace({"traceEvents": [GOOD_M, bad]})


@pytest.mark.parametrize("key", ["name", "ph", "ts", "pid", "tid"])
def test_validate_rejects_metadata_event_missing_a_key(key):
    bad = {k: v for k, v in GOOD_M.items() if k != key}
    with pytest.raises(ValueError, match=key):
        validate_chrome_trace({"traceEvents": [bad]})


@pytest.mark.parametrize("bad", [
    {"traceEvents": [dict(GOOD_X, ts="1.0")]},
    {"traceEvents": [dict(GOOD_X, dur=-1.0)]},
    {"traceEvents": [dict(GOOD_X, ts=float("nan"))]},
    {"traceEvents": [dict(GOOD_X, tid="target")]},
    {"traceEvents": [dict(GOOD_X, pid=True)]},
    {"traceEvents": ["not an event"]},
    {"traceEvents": {"name": "x"}},
    {"events": []},
    "not a trace",
])
def test_validate_rejects_malformed(bad):
    with pytest.raises(ValueError):
        validate_chrome_trace(bad)


# ---------------------------------------------------------------- overlap
@pytest.mark.parametrize("spans, expected", [
    ([], 0.0),
    ([("a", "target", 0.0, 1.0)], 0.0),  # one lane only
    ([("a", "target", 0.0, 1.0), ("b", "draft", 2.0, 3.0)], 0.0),  # disjoint
    ([("a", "target", 0.0, 1.0), ("b", "draft", 1.0, 2.0)], 0.0),  # touching
    ([("a", "target", 0.0, 2.0), ("b", "draft", 1.5, 3.0)], 0.5),  # partial
    ([("a", "target", 0.0, 4.0), ("b", "draft", 1.0, 2.5)], 1.5),  # draft nested in target
    ([("a", "target", 1.0, 2.0), ("b", "draft", 0.0, 4.0)], 1.0),  # target nested in draft
    # nested spans on one lane count once: target busy [0, 4), draft [1, 3) -> 2
    ([("outer", "target", 0.0, 4.0), ("inner", "target", 1.0, 2.0), ("b", "draft", 1.0, 3.0)], 2.0),
    # several intervals each side: target [0,2) [3,5) [6,7); draft [1,3.5) [4.5,6.5)
    ([("a", "target", 0.0, 2.0), ("b", "target", 3.0, 5.0), ("c", "target", 6.0, 7.0),
      ("x", "draft", 1.0, 3.5), ("y", "draft", 4.5, 6.5)], 1.0 + 0.5 + 0.5 + 0.5),
    # overlapping (not nested) spans on the draft lane merge to [1, 5)
    ([("a", "target", 0.0, 10.0), ("x", "draft", 1.0, 3.0), ("y", "draft", 2.0, 5.0)], 4.0),
    # zero-length spans contribute nothing
    ([("a", "target", 1.0, 1.0), ("x", "draft", 0.0, 2.0)], 0.0),
])
def test_overlap_seconds_exact(spans, expected):
    tl = make_timeline(*spans)
    assert overlap_seconds(tl) == pytest.approx(expected, abs=1e-12)
    assert overlap_seconds(tl, "draft", "target") == pytest.approx(expected, abs=1e-12)  # symmetric
    # spans listed in any order give the same answer
    for perm in itertools.islice(itertools.permutations(spans), 6):
        assert overlap_seconds(make_timeline(*perm)) == pytest.approx(expected, abs=1e-12)


def test_overlap_of_the_hide_like_timeline_and_custom_lanes():
    # target busy [0, 3.5ms) and [4, 5.3ms); draft busy [0.5, 4ms) -> overlap [0.5, 3.5) = 3 ms
    tl = hide_like()
    assert overlap_seconds(tl) == pytest.approx(0.003, abs=1e-12)
    assert busy_seconds(tl, "draft") == pytest.approx(0.0035, abs=1e-12)
    assert busy_seconds(tl, "target") == pytest.approx(0.0048, abs=1e-12)
    tl2 = make_timeline(("a", "gpu0", 0.0, 3.0), ("b", "gpu1", 2.0, 5.0), ("c", "target", 0.0, 9.0))
    assert overlap_seconds(tl2, "gpu0", "gpu1") == pytest.approx(1.0)
    assert overlap_seconds(tl2) == 0.0  # no draft lane


# ---------------------------------------------------------------- PNG
def _check_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1200, 400)


@pytest.mark.parametrize("tl", [
    hide_like(),
    make_timeline(("verify", "target", 0.0, 0.002), ("commit", "target", 0.002, 0.0021)),  # no prefill
    make_timeline(),  # empty
    make_timeline(("target_prefill", "target", 0.0, 0.001), ("verify", "target", 0.001, 0.1),
                  ("draft_grow", "draft", 0.0002, 0.0009)),  # short window: zoom panel
], ids=["hide_like", "no_prefill", "empty", "zoomed"])
def test_timeline_png_is_a_valid_png(tmp_path, tl):
    out = timeline_png(tl, tmp_path / "t.png", title="test")
    assert out == tmp_path / "t.png"
    _check_png(out)


# ---------------------------------------------------------------- NVTX
class NvtxRecorder:
    """Stands in for the `nvtx` module: records start_range/end_range calls."""

    def __init__(self):
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.started: dict[int, str] = {}
        self.ended: list[int] = []

    def start_range(self, message=None, **kw):
        with self._lock:
            rid = next(self._ids)
            self.started[rid] = message
        return rid

    def end_range(self, rid, **kw):
        with self._lock:
            self.ended.append(rid)

    def assert_balanced(self):
        assert Counter(self.ended) == Counter(self.started.keys()), "every started range ends exactly once"

    def messages(self) -> Counter:
        return Counter(self.started.values())


def test_every_phase_emits_one_nvtx_range(monkeypatch):
    rec = NvtxRecorder()
    monkeypatch.setattr(timeline_mod, "_nvtx", rec)
    tl = Timeline()
    with tl.phase("target_prefill", "target"):
        with tl.phase("draft_grow", "draft"):
            pass
    with pytest.raises(RuntimeError):
        with tl.phase("verify"):  # default lane, and an exception inside
            raise RuntimeError("boom")
    rec.assert_balanced()
    assert rec.messages() == Counter(["target:target_prefill", "draft:draft_grow", "target:verify"])
    assert rec.messages() == Counter(f"{s.lane}:{s.name}" for s in tl.spans)


def test_no_nvtx_module_still_records_spans(monkeypatch):
    monkeypatch.setattr(timeline_mod, "_nvtx", None)
    tl = Timeline()
    with tl.phase("verify"):
        pass
    assert [(s.name, s.lane) for s in tl.spans] == [("verify", "target")]


# ---------------------------------------------------------------- a real hide-mode run
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from phide.models.loading import load_llama
    from phide.models.tiny import write_draft_of, write_tiny_llama

    root = tmp_path_factory.mktemp("trace_pair")
    write_tiny_llama(root / "target", seed=0)
    write_draft_of(root / "target", root / "draft", noise=0.03)
    return load_llama(root / "target"), load_llama(root / "draft")


def hide_run(tiny_models):
    from phide.engine import Engine, Request

    target, draft = tiny_models
    # a long prompt: the target prefill lasts long enough for the draft lane to start beside it,
    # even on a loaded machine
    req = Request(prompt_ids=[(7 * i) % 380 + 3 for i in range(900)], max_new_tokens=8)
    return Engine(target, draft).generate(req, "hide")


def test_real_hide_run_trace_png_and_nvtx(tiny_models, tmp_path, monkeypatch):
    rec = NvtxRecorder()
    monkeypatch.setattr(timeline_mod, "_nvtx", rec)
    result = hide_run(tiny_models)
    tl = result.timeline
    assert len(result.token_ids) == 8 and result.stats["faults"] == 0
    assert {s.name for s in tl.spans} == HIDE_PHASES

    # every phase emitted exactly one balanced NVTX range named lane:name
    rec.assert_balanced()
    assert rec.messages() == Counter(f"{s.lane}:{s.name}" for s in tl.spans)

    obj = json.loads(write_chrome_trace(tl, tmp_path / "hide.json", metadata={"stats": result.stats}).read_text())
    validate_chrome_trace(obj)
    xs = complete(obj)
    assert len(xs) == len(tl.spans)
    assert Counter((e["name"], e["cat"]) for e in xs) == Counter((s.name, s.lane) for s in tl.spans)
    for e in xs:
        assert e["tid"] == {"target": 1, "draft": 2}[e["cat"]]
        assert e["dur"] >= 0
    pre_span = next(s for s in tl.spans if s.name == "target_prefill")
    pre_ev = next(e for e in xs if e["name"] == "target_prefill")
    assert pre_ev["ts"] == pytest.approx(pre_span.start * 1e6, abs=1e-3)
    assert pre_ev["dur"] == pytest.approx((pre_span.end - pre_span.start) * 1e6, abs=2e-3)
    assert obj["otherData"]["stats"]["mode"] == "hide"

    # hide mode: the draft lane works while the target lane prefills
    ov = overlap_seconds(tl)
    assert 0 < ov <= min(busy_seconds(tl, "target"), busy_seconds(tl, "draft")) + 1e-12
    _check_png(timeline_png(tl, tmp_path / "hide.png"))


def test_target_only_run_has_no_overlap(tiny_models):
    from phide.engine import Engine, Request

    target, draft = tiny_models
    result = Engine(target, draft).generate(Request(prompt_ids=[5, 6, 7, 8], max_new_tokens=4), "target-only")
    tl = result.timeline
    assert {s.lane for s in tl.spans} == {"target"}
    assert overlap_seconds(tl) == 0.0
    obj = chrome_trace(tl)
    validate_chrome_trace(obj)
    names = {e["args"]["name"] for e in obj["traceEvents"] if e["name"] == "thread_name"}
    assert names == {"target lane", "draft lane"}
