"""Green-context SM split and CUDA lanes, against a fake driver (no GPU); GPU checks are marked."""

from __future__ import annotations

import enum
import gc
import importlib
import sys
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from phide.errors import PhideError
from phide.runtime.cuda_lanes import CudaLane, hand_over, lanes_for_device
from phide.runtime.green_ctx import (HIGHEST_STREAM_PRIORITY, CudaBindingsDriver, DeviceSmResource,
                                     GreenSplit, SmGranularity, candidate_draft_sms,
                                     default_granularity, plan_sm_split)

HOPPER = SmGranularity(8, 8)


class FakeDriver:
    """Records every call under its CUDA driver name. grant_fewer=(draft, target): SMs the split
    withholds from each side; fail=(call name, nth occurrence) makes that call raise."""

    def __init__(self, total_sms=132, granularity=HOPPER, grant_fewer=(0, 0), fail=None):
        self.total_sms, self.granularity = total_sms, granularity
        self.grant_fewer, self.fail = grant_fewer, fail
        self.calls: list[tuple] = []
        self.created: dict[str, list] = {"context": [], "stream": []}
        self.destroyed: list[tuple[str, object]] = []

    def _record(self, name, *args):
        self.calls.append((name, *args))
        if self.fail and self.fail[0] == name:
            if sum(c[0] == name for c in self.calls) == self.fail[1]:
                raise PhideError(f"CUDA driver call {name} failed: CUDA_ERROR_OUT_OF_MEMORY")

    def names(self):
        return [c[0] for c in self.calls]

    def device_sm_resource(self, device_index):
        self._record("cuDeviceGetDevResource", device_index)
        return DeviceSmResource(self.total_sms, self.granularity, raw=("device", self.total_sms))

    def split_by_count(self, resource, min_count):
        self._record("cuDevSmResourceSplitByCount", min_count)
        group = ("group", min_count - self.grant_fewer[0])
        remainder = ("remainder", resource.sm_count - min_count - self.grant_fewer[1])
        return group, remainder

    def generate_desc(self, sm_resource):
        self._record("cuDevResourceGenerateDesc", sm_resource)
        return ("desc", sm_resource)

    def create_green_context(self, device_index, desc):
        self._record("cuGreenCtxCreate", desc)
        ctx = SimpleNamespace(kind=desc[1][0], sms=desc[1][1])
        self.created["context"].append(ctx)
        return ctx

    def create_green_stream(self, green_ctx, priority):
        self._record("cuGreenCtxStreamCreate", green_ctx.kind, priority)
        stream = FakeHandle(1000 + len(self.created["stream"]), green_ctx.kind)
        self.created["stream"].append(stream)
        return stream

    def green_context_sm_count(self, green_ctx):
        self._record("cuGreenCtxGetDevResource", green_ctx.kind)
        return green_ctx.sms

    def destroy_stream(self, stream):
        self._record("cuStreamDestroy", stream.kind)
        self.destroyed.append(("stream", stream))

    def destroy_green_context(self, green_ctx):
        self._record("cuGreenCtxDestroy", green_ctx.kind)
        self.destroyed.append(("context", green_ctx))


class FakeHandle:
    def __init__(self, ptr, kind):
        self.ptr, self.kind = ptr, kind

    def __int__(self):
        return self.ptr


# -- split arithmetic -------------------------------------------------------------------------

@pytest.mark.parametrize("asked, draft", [(8, 8), (16, 16), (24, 24), (32, 32), (5, 8), (13, 16),
                                          (1, 8), (17, 24)])
def test_plan_rounds_up_to_hopper_granularity(asked, draft):
    split = plan_sm_split(132, asked, 8, 8)
    assert (split.draft_sms, split.target_sms, split.requested) == (draft, 132 - draft, asked)


@pytest.mark.parametrize("asked", [0, -8, 125, 128, 132, 200])
def test_plan_refuses_requests_without_room(asked):
    with pytest.raises(PhideError):
        plan_sm_split(132, asked, 8, 8)


def test_plan_keeps_exactly_one_partition_for_target():
    assert plan_sm_split(128, 120, 8, 8).target_sms == 8
    assert plan_sm_split(132, 117, 8, 8).target_sms == 12  # 117 -> 120


def test_default_granularity_per_architecture_and_ampere_rounding():
    assert default_granularity(9) == default_granularity(10) == SmGranularity(8, 8)
    assert default_granularity(7) == SmGranularity(2, 2)
    assert default_granularity(6) == SmGranularity(1, 1)
    g = default_granularity(8)
    assert g == SmGranularity(4, 2)
    assert [plan_sm_split(108, n, g.min_partition, g.alignment).draft_sms
            for n in (1, 3, 4, 5, 7, 12)] == [4, 4, 4, 6, 8, 12]


def test_candidate_draft_sizes():
    assert candidate_draft_sms(132, 8, 8) == [8, 16, 24, 32]
    assert candidate_draft_sms(108, 4, 2) == [4, 8, 12, 16, 20, 24]
    assert candidate_draft_sms(16, 8, 8, max_fraction=0.6) == [8]  # 16 would leave nothing


# -- GreenSplit over the fake driver -----------------------------------------------------------

def test_one_split_gives_draft_group_and_target_remainder():
    driver = FakeDriver()
    split = GreenSplit.create(0, 13, driver)
    assert driver.names().count("cuDevSmResourceSplitByCount") == 1
    assert ("cuDevSmResourceSplitByCount", 16) in driver.calls
    descs = [c[1] for c in driver.calls if c[0] == "cuDevResourceGenerateDesc"]
    assert descs == [("group", 16), ("remainder", 116)]  # target = remainder, not a 2nd split
    assert (split.draft_sms, split.target_sms, split.shortfall) == (16, 116, (0, 0))
    assert (split.plan.draft_sms, split.plan.requested) == (16, 13)
    assert (split.draft_stream.kind, split.target_stream.kind) == ("group", "remainder")
    priorities = [c[2] for c in driver.calls if c[0] == "cuGreenCtxStreamCreate"]
    assert priorities == [HIGHEST_STREAM_PRIORITY, 0]
    split.close()


def test_fewer_sms_than_planned_are_read_back_and_reported():
    driver = FakeDriver(grant_fewer=(2, 6))
    with pytest.warns(RuntimeWarning, match="got 14 draft \\+ 110 target SMs; planned 16 \\+ 116"):
        split = GreenSplit.create(0, 16, driver)
    assert (split.draft_sms, split.target_sms, split.shortfall) == (14, 110, (2, 6))
    assert driver.names().count("cuGreenCtxGetDevResource") == 2
    split.close()


def test_teardown_destroys_streams_before_contexts_and_is_idempotent():
    driver = FakeDriver()
    with GreenSplit.create(0, 8, driver) as split:
        n_before = len(driver.calls)
    assert split.closed
    assert driver.calls[n_before:] == [("cuStreamDestroy", "group"),
                                       ("cuStreamDestroy", "remainder"),
                                       ("cuGreenCtxDestroy", "group"),
                                       ("cuGreenCtxDestroy", "remainder")]
    split.close()
    assert len(driver.calls) == n_before + 4
    with pytest.raises(PhideError, match="closed"):
        split.draft_torch_stream


@pytest.mark.parametrize("fail", [("cuDeviceGetDevResource", 1), ("cuDevSmResourceSplitByCount", 1),
                                  ("cuDevResourceGenerateDesc", 2), ("cuGreenCtxCreate", 1),
                                  ("cuGreenCtxCreate", 2), ("cuGreenCtxStreamCreate", 2),
                                  ("cuGreenCtxGetDevResource", 2)])
def test_failing_call_is_one_error_naming_it_and_nothing_leaks(fail):
    driver = FakeDriver(fail=fail)
    with pytest.raises(PhideError, match=fail[0]) as info:
        GreenSplit.create(0, 16, driver)
    assert info.value.__context__ is None  # cleanup raised nothing on top of it
    for kind in ("stream", "context"):
        assert sorted(map(id, driver.created[kind])) == sorted(
            id(h) for k, h in driver.destroyed if k == kind)
    kinds = [k for k, _ in driver.destroyed]
    assert kinds == sorted(kinds, key=lambda k: k != "stream")  # streams first


def test_failed_destroy_still_releases_the_rest():
    driver = FakeDriver(fail=("cuStreamDestroy", 1))
    split = GreenSplit.create(0, 16, driver)
    with pytest.raises(PhideError, match="draft_stream.*cuStreamDestroy"):
        split.close()
    assert [k for k, _ in driver.destroyed] == ["stream", "context", "context"]
    split.close()  # already closed: no second attempt


# -- CudaBindingsDriver over a fake cuda.bindings.driver ----------------------------------------

class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_OUT_OF_MEMORY = 2


def _sm(count, min_size=8, align=8):
    return SimpleNamespace(sm=SimpleNamespace(smCount=count, minSmPartitionSize=min_size,
                                              smCoscheduledAlignment=align))


class FakeBindings:
    """The slice of cuda.bindings.driver CudaBindingsDriver uses: (CUresult, *outputs) returns."""

    CUresult = CUresult
    CUdevResourceType = SimpleNamespace(CU_DEV_RESOURCE_TYPE_SM="SM")
    CUdevice_attribute = SimpleNamespace(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR="CC_MAJOR")
    CUgreenCtxCreate_flags = SimpleNamespace(CU_GREEN_CTX_DEFAULT_STREAM="DEFAULT_STREAM")
    CUstream_flags = SimpleNamespace(CU_STREAM_NON_BLOCKING="NON_BLOCKING")

    def __init__(self, device=None, cc_major=9, fail=None, fail_with=None):
        self.device = device or _sm(132)
        self.cc_major = cc_major
        self.fail, self.fail_with = fail, fail_with  # fail_with: raise it instead of an error code
        self.calls: list[tuple] = []

    def __getattr__(self, name):  # every cu* call: record, then answer
        if not name.startswith("cu"):
            raise AttributeError(name)

        def call(*args):
            self.calls.append((name, *args))
            if self.fail == name and self.fail_with is not None:
                raise self.fail_with
            if self.fail == name:
                return (CUresult.CUDA_ERROR_OUT_OF_MEMORY, None)
            return (CUresult.CUDA_SUCCESS, *self.answer(name, args))
        return call

    def answer(self, name, args):
        if name == "cuInit":
            return ()
        if name == "cuDeviceGet":
            return (f"dev{args[0]}",)
        if name == "cuDeviceGetDevResource":
            return (self.device,)
        if name == "cuDeviceGetAttribute":
            return (self.cc_major,)
        if name == "cuDevSmResourceSplitByCount":
            n = args[3]
            return ([_sm(n)], 1, _sm(self.device.sm.smCount - n))
        if name == "cuDevResourceGenerateDesc":
            return (("desc", args[0][0].sm.smCount),)
        if name == "cuGreenCtxCreate":
            return (("gctx", args[0][1]),)
        if name == "cuGreenCtxStreamCreate":
            return (FakeHandle(7, args[0]),)
        if name == "cuGreenCtxGetDevResource":
            return (_sm(args[0][1]),)
        return ()  # destroy calls


def test_bindings_driver_call_sequence_and_flags():
    fake = FakeBindings()
    split = GreenSplit.create(0, 16, CudaBindingsDriver(bindings=fake))
    names = [c[0] for c in fake.calls]
    lane = ["cuDevResourceGenerateDesc", "cuGreenCtxCreate", "cuGreenCtxStreamCreate",
            "cuGreenCtxGetDevResource"]
    assert names == ["cuInit", "cuDeviceGet", "cuDeviceGetDevResource",
                     "cuDevSmResourceSplitByCount"] + lane + lane  # draft, then target
    assert fake.calls[3] == ("cuDevSmResourceSplitByCount", 1, fake.device, 0, 16)
    assert fake.calls[5][2:] == ("dev0", "DEFAULT_STREAM")
    assert fake.calls[6][2:] == ("NON_BLOCKING", HIGHEST_STREAM_PRIORITY)
    assert (split.draft_sms, split.target_sms) == (16, 116)
    split.close()
    assert [c[0] for c in fake.calls[-4:]] == ["cuStreamDestroy"] * 2 + ["cuGreenCtxDestroy"] * 2


def test_bindings_driver_falls_back_to_architecture_defaults():
    fake = FakeBindings(device=_sm(108, min_size=0, align=0), cc_major=8)
    resource = CudaBindingsDriver(bindings=fake).device_sm_resource(0)
    assert (resource.sm_count, resource.granularity) == (108, SmGranularity(4, 2))
    assert "cuDeviceGetAttribute" in [c[0] for c in fake.calls]


def test_bindings_driver_error_code_names_call_and_error():
    fake = FakeBindings(fail="cuGreenCtxCreate")
    with pytest.raises(PhideError, match="cuGreenCtxCreate failed: CUDA_ERROR_OUT_OF_MEMORY"):
        GreenSplit.create(0, 16, CudaBindingsDriver(bindings=fake))
    assert [c[0] for c in fake.calls].count("cuGreenCtxDestroy") == 0  # nothing was created


def test_bindings_driver_wraps_missing_libcuda():
    fake = FakeBindings(fail="cuInit", fail_with=OSError("libcuda.so.1: cannot open shared object"))
    with pytest.raises(PhideError, match="cuInit failed: libcuda"):
        CudaBindingsDriver(bindings=fake).device_sm_resource(0)


def test_imports_without_cuda_bindings(monkeypatch):
    import phide.runtime as runtime
    for name in ("cuda", "cuda.bindings", "cuda.bindings.driver"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: ImportError
    for name in ("phide.runtime.green_ctx", "phide.runtime.cuda_lanes"):
        monkeypatch.delitem(sys.modules, name)
        monkeypatch.setattr(runtime, name.rsplit(".", 1)[1], None)  # restored afterwards
    green_ctx = importlib.import_module("phide.runtime.green_ctx")
    importlib.import_module("phide.runtime.cuda_lanes")
    with pytest.raises(PhideError, match="cuda-bindings"):
        green_ctx.CudaBindingsDriver()


# -- CUDA lanes with torch.cuda faked ------------------------------------------------------------

class FakeEvent:
    def __init__(self, stream):
        self.stream, self.waited_by, self.synced = stream, [], False

    def query(self):
        return True

    def wait(self, stream):
        self.waited_by.append(stream)

    def synchronize(self):
        self.synced = True


class FakeStream:
    def __init__(self, name, log):
        self.name, self.log, self.device = name, log, torch.device("cuda", 0)

    def record_event(self):
        self.log.append(("record", self.name))
        return FakeEvent(self)

    def wait_stream(self, other):
        self.log.append(("wait_stream", self.name, other.name))

    def wait_event(self, event):
        self.log.append(("wait_event", self.name, event.stream.name))


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda.stream / current_stream over FakeStreams; returns (call log, {"current": ...})."""
    log: list[tuple] = []
    state = {"current": FakeStream("caller", log)}

    @contextmanager
    def stream(s):
        before, state["current"] = state["current"], s
        try:
            yield
        finally:
            state["current"] = before

    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: state["current"])
    return log, state


def test_lane_submit_orders_streams_without_host_sync(fake_cuda):
    log, state = fake_cuda
    lane = CudaLane("draft", FakeStream("draft", log))
    signal = lane.submit(lambda x: (log.append(("fn", state["current"].name)), x * 2)[1], 21)
    assert log == [("wait_stream", "draft", "caller"), ("fn", "draft"), ("record", "draft")]
    assert signal.wait() == 42
    assert [s.name for s in signal.event.waited_by] == ["caller"] and not signal.event.synced
    assert signal.synchronize() == 42 and signal.event.synced


def test_lane_reraises_fn_error_at_wait(fake_cuda):
    lane = CudaLane("draft", FakeStream("draft", fake_cuda[0]))
    signal = lane.submit(lambda: 1 / 0)
    assert signal.done() and isinstance(signal.error, ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        signal.wait()
    with pytest.raises(ZeroDivisionError):
        signal.synchronize()


def test_hand_over_waits_on_producer_and_records_consumer_stream(fake_cuda, monkeypatch):
    log = fake_cuda[0]
    recorded = []
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: recorded.append(s.name))
    draft = CudaLane("draft", FakeStream("draft", log))
    target = CudaLane("target", FakeStream("target", log))
    tensors = [torch.zeros(2), torch.ones(3)]
    assert hand_over(tensors, draft, target) is tensors
    assert log == [("record", "draft"), ("wait_event", "target", "draft")]
    assert recorded == ["target", "target"]


def test_lanes_for_device_wraps_the_green_split_streams(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "ExternalStream",
                        lambda ptr, device=None: SimpleNamespace(ptr=ptr, device=device))
    driver = FakeDriver()
    target, draft = lanes_for_device(0, draft_sms=24, driver=driver)
    split = draft.green_split
    assert target.green_split is split and split.draft_sms == 24
    assert draft.stream.ptr == int(split.draft_stream)
    assert target.stream.ptr == int(split.target_stream)
    split.close()


# -- tensors recorded on green streams keep the split open ------------------------------------------

class FakeExternalStream(FakeStream):
    """torch.cuda.ExternalStream over a green stream handle, with FakeStream's event calls."""

    def __init__(self, ptr, log):
        super().__init__(f"stream{ptr}", log)
        self.ptr = ptr


@pytest.fixture
def green_lanes(fake_cuda, monkeypatch):
    """(driver, target lane, draft lane, record_stream calls as stream pointers) over FakeDriver."""
    log = fake_cuda[0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "ExternalStream",
                        lambda ptr, device=None: FakeExternalStream(ptr, log))
    recorded = []
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: recorded.append(s.ptr))
    driver = FakeDriver()
    target, draft = lanes_for_device(0, draft_sms=16, driver=driver)
    return driver, target, draft, recorded


def test_close_refuses_while_a_tensor_recorded_on_a_green_stream_lives(green_lanes):
    driver, _, draft, recorded = green_lanes
    split = draft.green_split
    t = torch.zeros(4)
    assert draft.record(t) is t and draft.record(t) is t  # the same tensor counts once
    assert recorded == [int(split.draft_stream)] * 2
    assert split.recorded_tensors() == {"draft": 1, "target": 0}
    with pytest.raises(PhideError, match=r"1 tensor is still recorded on the draft stream; "
                                         r"free them \(del\) before closing the split"):
        split.close()
    assert not split.closed and driver.destroyed == []
    assert "cuStreamDestroy" not in driver.names() and "cuGreenCtxDestroy" not in driver.names()
    del t
    gc.collect()
    split.close()
    assert split.closed and [k for k, _ in driver.destroyed] == ["stream"] * 2 + ["context"] * 2


def test_hand_over_onto_a_green_lane_is_tracked(green_lanes):
    driver, target, draft, recorded = green_lanes
    split = target.green_split
    a, b = torch.zeros(2), torch.ones(3)
    hand_over([a, b], draft, target)
    assert recorded == [int(split.target_stream)] * 2
    with pytest.raises(PhideError, match="2 tensors are still recorded on the target stream"):
        split.close()
    c = torch.zeros(1)
    hand_over(c, target, draft)
    with pytest.raises(PhideError, match="1 tensor is still recorded on the draft stream and "
                                         "2 tensors are still recorded on the target stream"):
        split.close()
    del a, c
    with pytest.raises(PhideError, match=r"^GreenSplit.close\(\): 1 tensor is still recorded on "
                                         "the target stream;"):
        split.close()
    assert driver.destroyed == []
    cycle = [b]
    cycle.append(cycle)  # b now lives only through a reference cycle: close() collects it
    del b, cycle
    split.close()
    assert len(driver.destroyed) == 4
    with pytest.raises(PhideError, match="closed"):
        draft.record(torch.zeros(1))


def test_context_exit_on_an_error_leaves_a_split_with_live_tensors_open(green_lanes):
    driver, _, draft, _ = green_lanes
    split = draft.green_split
    t = torch.zeros(2)

    def fail_inside(tensor):
        with split:
            draft.record(tensor)
            raise ValueError("boom")  # the original error is not replaced by close()'s refusal

    with pytest.warns(RuntimeWarning, match="left open after an error: 1 tensor"), \
            pytest.raises(ValueError, match="boom"):
        fail_inside(t)
    assert not split.closed and driver.destroyed == []
    del t
    with split:
        pass
    assert split.closed and len(driver.destroyed) == 4


def test_plain_lane_record_is_record_stream(fake_cuda, monkeypatch):
    recorded = []
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: recorded.append(s.name))
    lane = CudaLane("side", FakeStream("side", fake_cuda[0]))
    t = torch.zeros(1)
    assert lane.record(t) is t and recorded == ["side"]


# -- on a real GPU ------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_green_split_runs_a_matmul_on_each_lane():
    pytest.importorskip("cuda.bindings.driver")
    total = torch.cuda.get_device_properties(0).multi_processor_count
    target, draft = lanes_for_device(0, draft_sms=16)
    split = draft.green_split
    try:
        assert 0 < split.draft_sms <= split.plan.draft_sms
        assert 0 < split.target_sms and split.draft_sms + split.target_sms <= total
        a = torch.randn(512, 512, device="cuda")
        expected = (a.double() @ a.double()).float()
        out_t = target.submit(torch.matmul, a, a).synchronize()
        sig_d = draft.submit(torch.matmul, a, a)
        out_d = sig_d.wait()  # stream-ordered: the default stream waits for the draft lane
        torch.testing.assert_close(out_t, expected, rtol=1e-3, atol=1e-2)
        torch.testing.assert_close(out_d.clone(), expected, rtol=1e-3, atol=1e-2)
        hand_over(out_d, draft, target)
        torch.testing.assert_close(target.submit(torch.add, out_d, 1).synchronize(), expected + 1,
                                   rtol=1e-3, atol=1e-2)
        torch.cuda.synchronize()
        with pytest.raises(PhideError, match="1 tensor is still recorded on the target stream"):
            split.close()  # out_d's free would record an event on the destroyed target stream
        assert not split.closed
        del out_d, sig_d  # the signal holds its result too
    finally:
        torch.cuda.synchronize()
        split.close()
    assert split.closed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_plain_stream_lanes_without_green_contexts():
    target, draft = lanes_for_device("cuda:0")
    assert target.green_split is None and target.stream != draft.stream
    a = torch.randn(64, 64, device="cuda")
    torch.testing.assert_close(draft.submit(torch.mul, a, 2).synchronize(), a * 2)


# -- the engine's splits: a refused split is remembered, splits are bounded -------------------------

@pytest.fixture
def plain_streams(fake_cuda, monkeypatch):
    """torch.cuda.Stream / ExternalStream / synchronize faked over FakeStreams (the fake_cuda log)."""
    log = fake_cuda[0]
    made = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Stream",
                        lambda device=None, priority=0: made.append(priority) or FakeStream(f"plain{len(made)}", log))
    monkeypatch.setattr(torch.cuda, "ExternalStream", lambda ptr, device=None: FakeExternalStream(ptr, log))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append(("synchronize",)))
    monkeypatch.setattr(FakeStream, "synchronize", lambda self: log.append(("synchronize", self.name)), raising=False)
    return made


def _splits(driver, **kw):
    from functools import partial

    from phide.runtime.window_lanes import LaneSplits

    return LaneSplits(torch.device("cuda", 0), make=partial(lanes_for_device, driver=driver), **kw)


def test_a_refused_split_is_tried_once_and_later_lanes_say_why(plain_streams):
    from phide.runtime.window_lanes import WindowLanes

    driver = FakeDriver(fail=("cuGreenCtxCreate", 1))
    splits = _splits(driver)
    with pytest.warns(RuntimeWarning, match="no SM split"):
        lanes = WindowLanes.for_engine(splits, 0, 16)
    assert lanes.cuda_lanes[1].green_split is None  # plain streams
    assert "no SM split (PhideError: CUDA driver call cuGreenCtxCreate failed" in lanes.describe()
    assert driver.destroyed == []  # nothing was made that needed destroying
    again = WindowLanes.for_engine(splits, 0, 24)  # another size: the driver is not asked again
    assert again.cuda_lanes is lanes.cuda_lanes and again.note == lanes.note
    assert splits.attempts == 1 and driver.names().count("cuDevSmResourceSplitByCount") == 1


def test_lane_splits_keep_a_few_and_close_the_least_recently_used(plain_streams):
    driver = FakeDriver()
    new, evicted = [], []
    splits = _splits(driver, max_splits=2, on_new=lambda sms, lanes: new.append(sms),
                     on_evict=lambda sms, lanes: evicted.append(sms))
    a, _ = splits.get(8)
    assert splits.get(8)[0] is a and new == [8]  # made once
    splits.get(16)
    splits.get(8)  # 8 used last: 16 is the least recently used
    splits.get(24)
    assert evicted == [16] and 16 not in splits and 8 in splits and 24 in splits
    closed = [s for s in (l[1].green_split for l in [a]) if s.closed]
    assert closed == []  # the live splits stay open
    assert [k for k, _ in driver.destroyed] == ["stream"] * 2 + ["context"] * 2  # 16's split closed
