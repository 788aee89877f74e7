"""The hide window in device time, proved on a simulated asynchronous device (tests/sim_device.py):
the target's prefill launch returns at once and its work completes later, as on a GPU. The window
must end when the prefill is DONE (the draft grows all along, as many steps as the schedule
predicts), and phase times must be the device's, with the host's launch times beside them."""

import time

import pytest
import torch

import phide.engine as engine_mod
from phide.engine import Engine, Request, SpecConfig
from phide.models.loading import load_llama
from phide.planner import Costs, SplitCosts, window_draft_steps
from phide.runtime.signals import DeviceClock, HostSignal, Window
from phide.runtime.window_lanes import WindowLanes
from sim_device import AsyncPrefill, ModelStandIn, SimClock, SimDevice, SimLanes
from ops_choice import use_ops  # noqa: E402

PREFILL_S = 0.25  # the target's prefill, in (simulated) device time
STEP_S = 0.01     # each draft forward, paced so the count does not hang on the machine's speed


class _AsyncDraft(ModelStandIn):
    """A draft whose every forward is an asynchronous launch of STEP_S of device work on the
    draft lane's stream: it returns at once (its result already computed, as a GPU's would be by
    the time anything reads it), so the draft's host loop runs ahead of its device work and only
    signals recorded on its stream say when a step is done."""

    def __init__(self, inner, device):
        super().__init__(inner)
        self.sim = device

    def forward(self, *a, **kw):
        out = self.inner(*a, **kw)
        self.sim.charge(STEP_S)
        return out


@pytest.fixture
def sim(monkeypatch):
    device = SimDevice()
    monkeypatch.setattr(engine_mod, "DeviceClock", lambda dev: SimClock(device))
    monkeypatch.setattr(WindowLanes, "for_engine", classmethod(lambda cls, *a, **k: SimLanes(device)))
    return device


def test_the_window_ends_when_the_prefill_is_done_not_when_it_returns(tiny_pair, sim):
    target, near = load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"])
    spec = SpecConfig(topk=2, depth=4, budget=12, window_depth=63, window_budget=64)
    ids = [1] + [(7 * i) % 300 + 3 for i in range(40)]
    ref = Engine(target, eos_token_ids=[]).generate(Request(prompt_ids=ids, max_new_tokens=8), "target-only")
    engine = Engine(AsyncPrefill(target, sim, PREFILL_S), _AsyncDraft(near, sim), eos_token_ids=[], spec=spec)
    res = engine.generate(Request(prompt_ids=ids, max_new_tokens=8), "hide")
    st, dev, host = res.stats, res.stats["phases"], res.stats["phases_host"]
    assert res.token_ids == ref.token_ids and st["faults"] == 0
    # The prefill's launch returned at once; its device time is the simulated work.
    assert host["target_prefill"] < PREFILL_S / 4
    assert dev["target_prefill"] == pytest.approx(PREFILL_S, abs=0.05)
    # The draft grew while the prefill ran: as many steps as the schedule predicts, within one.
    # (Had the window ended at the launch, the draft would have been stopped before its first step.)
    step = dev["draft_grow"] / (st["draft_forwards"] - 1)  # the root's forward, then one per step
    costs = Costs(target_prepare_s=dev["target_prepare"], prepare_idle=False, target_prefill_s=PREFILL_S,
                  target_step_s=0, verify_extra_per_node_s=0, draft_prefill_s=0, draft_step_s=step, head_step_s=0)
    split = SplitCosts(target_prefill_s=dev["target_prefill"],
                       draft_prefill_s=dev["draft_prepare"] + dev["draft_prefill"], draft_step_s=step)
    predicted = window_draft_steps(costs, split, spec.window_depth)  # the planner's own count
    assert st["draft_steps_in_window"] >= 5
    assert abs(st["draft_steps_in_window"] - predicted) <= 1, (st["draft_steps_in_window"], predicted)
    assert st["draft_tokens_in_window"] > 0


def test_a_window_is_armed_by_a_signal_and_closes_on_failure():
    window = Window()
    assert not window.is_set() and window.end() is None  # not armed: the target is still launching

    class Pending:
        done = False

        def is_set(self):
            return self.done

    sig = Pending()
    window.arm(sig)
    assert not window.is_set()  # armed, the work not done yet
    window.close()  # what the engine's `finally` does: an armed window ends with its signal
    assert not window.is_set()
    sig.done = True
    assert window.is_set() and window.end() is sig
    failed = Window()
    failed.close()  # the target lane raised before arming it
    assert failed.is_set() and failed.end() is None


def test_host_signals_on_a_cpu_and_event_signals_on_a_gpu(monkeypatch):
    """On a CPU a recorded signal is done (the work finished when the call returned); on a GPU it
    is an event on the current stream, timed against the request's origin event and queried
    without a host sync. (torch.cuda.Event is faked here.)"""
    cpu = DeviceClock(torch.device("cpu"))
    sig = cpu.record()
    assert isinstance(sig, HostSignal) and sig.is_set() and not cpu.asynchronous
    assert cpu.origin_host <= sig.done_at() <= time.perf_counter()

    class FakeEvent:
        made = []

        def __init__(self, enable_timing=False):
            assert enable_timing
            self.stream, self.fired, self.ms = None, False, 0.0
            FakeEvent.made.append(self)

        def record(self, stream=None):
            self.stream = stream

        def query(self):
            return self.fired

        def synchronize(self):
            self.fired = True

        def elapsed_time(self, other):
            return other.ms - self.ms

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    gpu = DeviceClock(torch.device("cuda", 0))
    assert gpu.asynchronous
    sig = gpu.record("the target stream")
    assert sig.event.stream == "the target stream" and not sig.is_set()  # queued, not done
    sig.event.ms = 250.0  # the device reached it 250 ms after the origin
    assert sig.done_at() == pytest.approx(gpu.origin_host + 0.25) and sig.is_set()


@pytest.mark.parametrize("backend", ["auto", "torch"])  # the compiled walk, and its torch twin
def test_host_traffic_budgets(tiny_pair, backend, monkeypatch):
    """Per verify ONE packed upload and ONE host read (the outcome); per draft step ONE read (its
    top-k). Reads are counted where they happen: uploads are DeviceTensors (sim_device.HostReads),
    so every value the host reads of anything computed from them (`item`, `tolist`, `bool`, ...)
    counts, not only the calls to the Transfers helper."""
    from phide.runtime.transfers import Transfers
    from phide.speculation.runners import DraftRunner, TargetRunner
    from phide.speculation.tree import Tree
    from sim_device import HostReads

    use_ops(monkeypatch, backend)
    target, near = load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"])
    ids = [1, 17, 42, 99, 5, 23]
    with HostReads() as reads:
        alone = Engine(target, eos_token_ids=[]).generate(Request(prompt_ids=ids, max_new_tokens=10), "target-only")
    st = alone.stats
    assert reads.log == ["download"] * st["verifies"] and st["verifies"] == 10
    assert st["d2h_reads"] == st["verifies"] and st["h2d_copies"] == st["verifies"] + 1  # + the prefill

    xfer = Transfers(torch.device("cpu"))
    runner = TargetRunner(target, 64, xfer)
    runner.prefill(ids[:-1])
    tree = Tree([ids[-1], 7, 8, 9, 8], [-1, 0, 1, 0, 3])
    before = (xfer.h2d, xfer.d2h)
    with HostReads() as reads:
        n, path, tokens = runner.verify(tree, 0.0, 0, 0)
    assert reads.log == ["download"] and (xfer.h2d - before[0], xfer.d2h - before[1]) == (1, 1)
    assert len(path) == len(tokens) == n + 1 and path[0] == 0

    draft = DraftRunner(near, 128, near.cfg.vocab_size, transfers=Transfers(torch.device("cpu")))
    draft.prefill(ids[:-1], last_token=ids[-1])
    steps = []
    with HostReads() as reads:
        draft.grow(budget=16, topk=2, max_depth=5, max_expansions=8, on_step=steps.append)
    # one read for the root's children, then one per step
    assert reads.log == ["download"] * len(steps) and len(steps) - 1 == draft.forwards - 2 >= 3
    assert draft.transfers.d2h == len(steps)


def test_a_capturing_verify_costs_no_transfer_and_keeps_the_accepted_nodes_layers(tiny_pair):
    """An EAGLE-3 head's features come out of the verify's own forward: the same one upload and
    one read as a plain verify, and `accepted_features` is the captured layers' states at the
    accepted path's nodes (a device gather), equal to a separate forward's capture there."""
    from phide.models.llama import CAUSAL
    from phide.runtime.transfers import Transfers
    from phide.speculation.runners import TargetRunner
    from phide.speculation.tree import Tree

    target = load_llama(tiny_pair["target"])
    ids = [1, 17, 42, 99, 5, 23]
    plain_x, cap_x = Transfers(torch.device("cpu")), Transfers(torch.device("cpu"))
    plain, cap = TargetRunner(target, 64, plain_x), TargetRunner(target, 64, cap_x, capture=(0, 1, 2))
    for r in (plain, cap):
        r.prefill(ids[:-1])
    g = Engine(target, eos_token_ids=[]).generate(Request(prompt_ids=ids, max_new_tokens=2), "target-only").token_ids
    tree = Tree([ids[-1], g[0], g[1], (g[0] + 1) % 50], [-1, 0, 1, 0])  # the target's own path, and a wrong branch
    before = [(x.h2d, x.d2h) for x in (plain_x, cap_x)]
    outs = [r.verify(tree, 0.0, 0, 0) for r in (plain, cap)]
    assert outs[0] == outs[1]
    assert [(x.h2d - b[0], x.d2h - b[1]) for x, b in zip((plain_x, cap_x), before)] == [(1, 1), (1, 1)]
    n, path, tokens = outs[1]
    assert n == 2 and path == [0, 1, 2]
    feats = cap.accepted_features()
    H = target.cfg.hidden_size
    assert feats.shape == (n + 1, 3 * H)
    # the same states from one causal forward over the prompt and the accepted path
    seq = torch.tensor([ids + [tree.tokens[i] for i in path[1:]]])
    T = seq.shape[1]
    pos = torch.arange(T).unsqueeze(0)
    with torch.no_grad():
        _, aux = target(seq, positions=pos, cache=target.new_cache(1, T), slots=pos, attn_mask=CAUSAL, kv_len=T,
                        capture=(0, 1, 2))
    torch.testing.assert_close(feats, aux[0, len(ids) - 1:], rtol=1e-4, atol=1e-5)
