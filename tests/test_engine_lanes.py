"""The engine over CUDA lanes that cannot be split (torch.cuda and the green-context driver faked
on a CPU): a request still completes, with target-only's tokens, and says why it had no split."""

import warnings
from functools import partial

import torch

from test_green_ctx import FakeDriver, fake_cuda, plain_streams  # noqa: F401  (fixtures)


def test_a_hide_request_whose_split_is_refused_completes_with_the_target_only_tokens(tiny_pair, plain_streams):
    from phide.engine import Engine, Plan, Request
    from phide.models.loading import load_llama
    from phide.runtime.cuda_lanes import lanes_for_device
    from phide.runtime.window_lanes import LaneSplits

    target, near = load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"])
    ids = [1, 17, 42, 99, 5]
    ref = Engine(target, eos_token_ids=[]).generate(Request(prompt_ids=ids, max_new_tokens=12), "target-only")
    engine = Engine(target, near, eos_token_ids=[])
    driver = FakeDriver(fail=("cuDevSmResourceSplitByCount", 1))  # e.g. under MPS
    engine.lane_splits = LaneSplits(torch.device("cuda", 0), make=partial(lanes_for_device, driver=driver))
    for i in range(2):
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            res = engine.generate(Request(prompt_ids=ids, max_new_tokens=12), Plan("hide", draft_sms=16))
        assert [str(w.message).startswith("phide: no SM split") for w in warned] == ([True] if i == 0 else [])
        assert res.token_ids == ref.token_ids and res.stats["faults"] == 0
        assert "no SM split (PhideError: CUDA driver call cuDevSmResourceSplitByCount failed" in res.stats["window_lanes"]
    assert engine.lane_splits.attempts == 1 and driver.names().count("cuDevSmResourceSplitByCount") == 1


def test_a_request_that_raises_in_its_rounds_still_drains_its_lanes(tiny_pair, plain_streams, monkeypatch):
    """finish_request runs however a hide request ends: its caches were allocated on the lanes'
    streams, and work queued there must drain before the allocator reuses their memory."""
    from phide.engine import Engine, Plan, Request
    from phide.models.loading import load_llama
    from phide.runtime.window_lanes import LaneSplits, WindowLanes
    from phide.speculation.runners import TargetRunner

    target, near = load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"])
    engine = Engine(target, near, eos_token_ids=[])
    engine.lane_splits = LaneSplits(torch.device("cuda", 0))  # plain (fake) streams
    drained = []
    monkeypatch.setattr(WindowLanes, "finish_request", lambda self: drained.append(self.cuda_lanes))

    def broken_verify(self, *a, **k):
        raise RuntimeError("an illegal memory access was encountered")

    monkeypatch.setattr(TargetRunner, "verify", broken_verify)
    try:
        engine.generate(Request(prompt_ids=[1, 17, 42, 99, 5], max_new_tokens=4), Plan("hide"))
    except RuntimeError as exc:
        assert "illegal memory access" in str(exc)
    else:
        raise AssertionError("the verify's error was swallowed")
    assert drained == [engine.lane_splits.get(0)[0]]
