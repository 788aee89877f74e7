"""The hide window's lanes (phide.runtime.window_lanes): a core split on the CPU, green-context
streams on a GPU with draft_sms; the engine's hide mode runs through them and stays lossless."""

import threading
from types import SimpleNamespace

import pytest
import torch

from phide.engine import Engine, Plan, Request
from phide.models.loading import load_llama, load_tokenizer
from phide.runtime.window_lanes import LaneSplits, WindowLanes


def test_cpu_lanes_split_the_cores(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    lanes = WindowLanes.for_engine(LaneSplits(torch.device("cpu")), 1, 0)
    assert (lanes.target_threads, lanes.draft_threads) == (3, 1)
    assert lanes.describe() == "threads: draft 1, target 3"
    shared = WindowLanes.for_engine(LaneSplits(torch.device("cpu")), 0, 16)  # draft_sms means nothing here
    assert (shared.target_threads, shared.draft_threads, shared.describe()) == (0, 0, "shared")


class _FakeStream:
    def __init__(self, name):
        self.name, self.waited = name, []

    def wait_stream(self, other):
        self.waited.append(other.name)


def test_gpu_lanes_enter_their_streams_and_join(monkeypatch):
    """With draft_sms the split is made once per SM count; the target's work runs under the
    target stream, the draft's under the draft stream, and join makes the current stream wait
    for both. (torch.cuda is faked: this machine has no GPU; gpu_check runs the real thing.)"""
    made = []
    current = _FakeStream("current")
    split = SimpleNamespace(draft_sms=16, target_sms=116)

    def fake_lanes_for_device(device, draft_sms):
        made.append(draft_sms)
        return (SimpleNamespace(stream=_FakeStream("target"), device=device, green_split=split),
                SimpleNamespace(stream=_FakeStream("draft"), device=device, green_split=split))

    entered = []

    class _StreamCtx:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            entered.append((threading.current_thread().name, self.stream.name))

        def __exit__(self, *exc):
            return False

    import phide.runtime.cuda_lanes as cuda_lanes

    monkeypatch.setattr(cuda_lanes, "lanes_for_device", fake_lanes_for_device)
    monkeypatch.setattr(torch.cuda, "stream", _StreamCtx)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
    splits = LaneSplits(torch.device("cuda", 0))
    lanes = WindowLanes.for_engine(splits, 0, 16)
    assert WindowLanes.for_engine(splits, 0, 16).cuda_lanes is lanes.cuda_lanes and made == [16]
    assert lanes.describe() == "green contexts: draft 16 SMs, target 116"
    with lanes.target():
        pass
    worker = threading.Thread(target=lambda: lanes.draft().__enter__(), name="draft-lane")
    worker.start()
    worker.join()
    assert entered == [("MainThread", "target"), ("draft-lane", "draft")]
    lanes.join()
    assert current.waited == ["target", "draft"]


def test_gpu_without_a_split_still_gives_the_draft_its_own_stream(monkeypatch):
    """No SM split asked (draft_sms 0): the real lanes_for_device makes two ordinary streams, the
    draft's at the highest priority; neither is the current stream, so the draft's kernels run
    beside the target's prefill instead of queueing behind it. (torch.cuda.Stream is faked.)"""
    made = []

    class _Stream(_FakeStream):
        def __init__(self, device=None, priority=0):
            super().__init__(f"stream{len(made)}")
            self.priority = priority
            made.append(self)

    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    splits = LaneSplits(torch.device("cuda", 0))
    lanes = WindowLanes.for_engine(splits, 0, 0)
    target, draft = (lane.stream for lane in lanes.cuda_lanes)
    assert target is not draft and {target, draft} == set(made)
    assert draft.priority < target.priority  # CUDA: lower is higher priority
    assert lanes.describe() == "streams: draft (high priority), target; no SM split"
    assert WindowLanes.for_engine(splits, 0, 0).cuda_lanes is lanes.cuda_lanes and len(made) == 2


def test_engine_reports_its_window_lanes(tiny_pair):
    target, near = load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"])
    ids = load_tokenizer(tiny_pair["target"])("What is moving?")["input_ids"]
    ref = Engine(target).generate(Request(prompt_ids=ids, max_new_tokens=12), "target-only")
    res = Engine(target, near).generate(Request(prompt_ids=ids, max_new_tokens=12), Plan("hide", draft_threads=1))
    assert res.token_ids == ref.token_ids
    assert res.stats["window_lanes"].startswith("threads: draft 1")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_hide_on_green_context_lanes_is_lossless(tiny_pair):
    """On a GPU: the draft's window on a green context of 16 SMs, the target on the remainder;
    tokens identical to target-only, several requests in a row (the split is reused)."""
    pytest.importorskip("cuda.bindings.driver")
    target = load_llama(tiny_pair["target"], device="cuda")
    near = load_llama(tiny_pair["near"], device="cuda")
    tok = load_tokenizer(tiny_pair["target"])
    engine = Engine(target, near)
    for prompt in ("What is moving?", "Describe the scene.", "the red car turns left"):
        ids = tok(prompt)["input_ids"]
        ref = Engine(target).generate(Request(prompt_ids=ids, max_new_tokens=16), "target-only")
        res = engine.generate(Request(prompt_ids=ids, max_new_tokens=16), Plan("hide", draft_sms=16))
        assert res.token_ids == ref.token_ids
        assert res.stats["window_lanes"].startswith("green contexts: draft")
    torch.cuda.synchronize()
