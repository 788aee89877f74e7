"""The draft's static-shape tree step (phide.speculation.static_step) computes what the dynamic step does:
same hidden states for every frontier size, padding never touches real cache rows, and the engine
with `draft_graph` stays lossless. On a GPU the same step is replayed as a CUDA graph."""

import pytest
import torch

from phide.engine import Engine, Request, SpecConfig
from phide.models.loading import load_llama, load_tokenizer
from phide.speculation.runners import DraftRunner, causal_inputs
from phide.speculation.static_step import StaticStep
from phide.speculation.tree import TreeGrower

MODES = ("target-only", "sequential", "hide")  # the schedules of a pair without a head


@torch.inference_mode()
def _grow_both(model, prompt, topk, device="cpu", graph=False):
    """Prefill the same prompt into a dynamic and a static runner, then run identical expansions
    through both; returns the per-step hidden states of each and the two caches."""
    out = {}
    for static in (False, True):
        step = StaticStep(model, model.new_cache(1, 65), topk, graph=graph) if static else None
        r = DraftRunner(model, 64, model.cfg.vocab_size, static=step)
        r.prefill(prompt[:-1], last_token=prompt[-1])
        hs = []
        pos, mask = causal_inputs(r.length, 1, device)
        h = model(torch.tensor([[prompt[-1]]], device=device), positions=pos, cache=r.cache, slots=pos,
                  attn_mask=mask, kv_len=r.length + 1)
        r.length += 1
        grower = TreeGrower(prompt[-1], model.logits(h[0, -1]), topk=topk, max_depth=4)
        base = r.length
        while grower.can_grow():
            chosen = grower.next_frontier()
            tok, p, s, m, kv = grower.expansion_inputs(chosen, base)
            hid = r.static.run(tok, p, s, m) if static else model(tok, positions=p, cache=r.cache, slots=s,
                                                                   attn_mask=m, kv_len=kv)
            hs.append(hid.clone())
            grower.frontier = []
            grower._add_children(chosen, model.logits(hid[0]), grower._parent_scores)
            grower.expanded += len(chosen)
        out[static] = (hs, r)
    return out


@pytest.mark.parametrize("topk", [1, 3])
def test_static_step_matches_the_dynamic_step(tiny_pair, topk):
    model = load_llama(tiny_pair["target"])
    prompt = load_tokenizer(tiny_pair["target"])("the red car turns left")["input_ids"]
    out = _grow_both(model, prompt, topk)
    (dyn, r_dyn), (sta, r_sta) = out[False], out[True]
    assert len(dyn) == len(sta) >= 3
    for a, b in zip(dyn, sta):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    # every real cache row identical; only the static runner's trash row differs
    rows = r_dyn.cache.max_len
    assert r_sta.cache.max_len == rows + 1 and r_sta.static.capacity == rows
    torch.testing.assert_close(r_sta.cache.k[:, :, :, :rows], r_dyn.cache.k)


def test_static_step_rejects_what_it_cannot_hold(tiny_pair):
    model = load_llama(tiny_pair["target"])
    cache = model.new_cache(1, 9)
    step = StaticStep(model, cache, 2)
    with pytest.raises(ValueError):
        step.run(torch.zeros(1, 3, dtype=torch.int64), torch.zeros(1, 3, dtype=torch.int64),
                 torch.zeros(1, 3, dtype=torch.int64), torch.ones(1, 3, 4, dtype=torch.bool))


def test_engine_with_static_draft_steps_is_lossless(tiny_pair):
    target, near = load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"])
    ids = load_tokenizer(tiny_pair["target"])("Describe the scene.")["input_ids"]
    ref = Engine(target, eos_token_ids=[]).generate(Request(prompt_ids=ids, max_new_tokens=20), "target-only")
    spec = SpecConfig(topk=3, depth=4, budget=10, draft_graph=True)
    for mode in MODES:
        res = Engine(target, near, spec=spec, eos_token_ids=[]).generate(
            Request(prompt_ids=ids, max_new_tokens=20), mode)
        assert res.token_ids == ref.token_ids and len(ref.token_ids) == 20
        assert res.stats["faults"] == 0 and (mode == "target-only" or res.stats["draft_forwards"] > 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_step_matches_the_dynamic_step(tiny_pair):
    model = load_llama(tiny_pair["target"], device="cuda")
    prompt = load_tokenizer(tiny_pair["target"])("the red car turns left")["input_ids"]
    out = _grow_both(model, prompt, 3, device="cuda", graph=True)
    assert out[True][1].static.graphed and out[True][1].static.replays.get(None, 0) > 0
    for a, b in zip(out[False][0], out[True][0]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_the_graph_step_is_made_once_per_engine_outside_any_window(tiny_pair, monkeypatch):
    """The draft's static step (a CUDA graph on a GPU) is built when the engine is, on the
    engine's thread, over one cache of the engine; requests (their hide windows on the draft
    lane's thread) reuse it and never build one."""
    import threading

    from phide.engine import DRAFT_GRAPH_ROWS

    target, near = load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"])
    made = []
    init = StaticStep.__init__

    def recording_init(self, *a, **kw):
        made.append(threading.current_thread().name)
        init(self, *a, **kw)

    monkeypatch.setattr(StaticStep, "__init__", recording_init)
    engine = Engine(target, near, spec=SpecConfig(topk=3, depth=4, budget=10, draft_graph=True), eos_token_ids=[])
    assert made == [threading.current_thread().name]
    step = engine._draft_step
    assert step.capacity == min(near.cfg.max_position_embeddings, DRAFT_GRAPH_ROWS)
    ids = load_tokenizer(tiny_pair["target"])("Describe the scene.")["input_ids"]
    for mode in ("hide", "sequential", "hide"):
        res = engine.generate(Request(prompt_ids=ids, max_new_tokens=12), mode)
        assert res.stats["faults"] == 0 and "draft_graph" not in res.stats
    assert len(made) == 1 and engine._draft_step is step


def test_graph_capture_is_thread_local(tiny_pair, monkeypatch):
    """Capture uses thread-local mode: the target lane's allocations on another thread must not be
    captured (global mode would break them). torch.cuda's graph API is faked: no GPU here."""
    model = load_llama(tiny_pair["target"])
    captured = {}

    class FakeGraph:
        def replay(self):
            pass

    class FakeGraphCtx:
        def __init__(self, graph, **kw):
            captured.update(kw)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class FakeStream:
        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: FakeGraphCtx(None))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", FakeGraphCtx)
    step = StaticStep(model, model.new_cache(1, 17), 2, graph=True)
    assert captured["capture_error_mode"] == "thread_local" and step.graphed


def test_a_green_split_gets_its_own_graph_captured_and_replayed_on_its_draft_stream(tiny_pair, monkeypatch):
    """torch.cuda faked as a device behaves: a graph's kernels run in the context of the stream it
    was captured on, whatever stream replays it. The engine's graph step is captured in the
    primary context when the engine is built and, when a green split is made, again on that
    split's draft stream after warm-ups there; a step on the split's draft stream replays that
    graph (its kernels on the split's SMs), a step on any plain stream the primary one, and a
    green stream without a graph runs eagerly. Evicting the split drops its graph."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from phide.runtime.window_lanes import LaneSplits

    class Stream:
        def __init__(self, name, context="primary"):
            self.name, self.context, self.cuda_stream = name, context, id(self)

        def wait_stream(self, other):
            pass

    state = {"current": Stream("default")}
    forwards, replays = [], []

    class Graph:
        def __init__(self):
            self.context = None

        def replay(self):  # the captured kernels run in the capture stream's context
            replays.append((self.context, state["current"].name))

    @contextmanager
    def stream(s):
        before, state["current"] = state["current"], s
        try:
            yield
        finally:
            state["current"] = before

    @contextmanager
    def graph(g, stream=None, capture_error_mode="global"):
        assert capture_error_mode == "thread_local" and stream is not None
        g.context = stream.context
        with globals_stream(stream):
            yield

    globals_stream = stream
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None, priority=0: Stream("side"))
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: state["current"])
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    model = load_llama(tiny_pair["target"])
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: forwards.append(state["current"].context) or forward(*a, **k))
    step = StaticStep(model, model.new_cache(1, 17), 2, graph=True)
    assert forwards == ["primary"] * 3 and replays == []  # two warm-ups and the capture

    green = Stream("green draft", context="green:16")
    closed = []
    split = SimpleNamespace(close=lambda: closed.append(16))
    lanes = (SimpleNamespace(stream=Stream("green target", "green:rest"), green_split=split),
             SimpleNamespace(stream=green, green_split=split))
    engine = SimpleNamespace(_draft_step=step, _target_step=None)
    splits = LaneSplits(torch.device("cpu"), make=lambda device, sms: lanes, max_splits=1,
                        on_new=lambda sms, l: Engine._split_made(engine, sms, l),
                        on_evict=lambda sms, l: Engine._split_evicted(engine, sms, l))
    forwards.clear()
    splits.get(16)
    assert forwards == ["green:16"] * 3  # warm-ups and capture on the split's draft stream

    args = (torch.zeros(1, 2, dtype=torch.int64), torch.zeros(1, 2, dtype=torch.int64),
            torch.tensor([[3, 4]]), torch.ones(1, 2, 5, dtype=torch.bool))
    with torch.cuda.stream(green):
        step.run(*args)
    with torch.cuda.stream(Stream("plain draft lane")):
        step.run(*args)
    step.run(*args)
    assert replays == [("green:16", "green draft"), ("primary", "plain draft lane"), ("primary", "default")]
    assert step.replays == {16: 1, None: 2}

    # evicted (another split made): its graph is gone, its stream is a plain one no more
    plain = (SimpleNamespace(stream=Stream("p0"), green_split=None), SimpleNamespace(stream=Stream("p1"), green_split=None))
    splits._make = lambda device, sms: plain
    splits.get(0)
    assert 16 not in step.graphs and set(step.graphs) == {None} and closed == [16]
