"""Post-verify overlap's pieces: the best path, the subtree a hit adopts, and the drafters'
grow_assuming / settle (after settling, a drafter is exactly where a plain commit would have left it)."""

import math

import pytest
import torch

from phide.models.eagle import EagleHead
from phide.models.loading import load_llama
from phide.runtime.transfers import Transfers
from phide.speculation.eagle_runner import EagleRunner
from phide.speculation.overlap import best_path, full_path_probability
from phide.speculation.runners import DraftRunner
from phide.speculation.tree import Tree, adopt_subtree, subtree

#         0(r)
#       /      \
#     1(a)     2(b)
#    /   \       \
#  3(c)  4(d)    5(e)
#   |
#  6(f)
TREE = Tree(tokens=[10, 11, 12, 13, 14, 15, 16], parents=[-1, 0, 0, 1, 1, 2, 3],
            scores=[0.0, -0.1, -2.0, -0.3, -1.5, -2.5, -0.6])


def test_best_path_and_its_probability():
    assert best_path(TREE) == [0, 1, 3, 6]
    assert full_path_probability(TREE) == pytest.approx(math.exp(-0.6))
    assert best_path(Tree([5], [-1])) == [0]
    sub, _ = subtree(TREE, 1, budget=10)  # scores stay cumulative from the old root
    assert full_path_probability(sub) == pytest.approx(math.exp(-0.6 + 0.1))


def test_subtree_reroots_and_keeps_the_best_nodes():
    sub, old = subtree(TREE, 1, budget=10)
    assert old == [1, 3, 4, 6]
    assert sub.tokens == [11, 13, 14, 16] and sub.parents == [-1, 0, 0, 1]
    sub, old = subtree(TREE, 1, budget=3)  # the 2 best descendants by score, ancestor-closed
    assert old == [1, 3, 6] and sub.parents == [-1, 0, 1]
    sub, old = subtree(TREE, 5, budget=4)
    assert old == [5] and sub.tokens == [15]


def test_adopt_needs_the_whole_path_and_a_bonus_among_the_roots_children():
    spec_tokens = [7, 8]  # the speculated (accepted) path after the old root; TREE is rooted at its leaf
    hit = adopt_subtree(TREE, spec_tokens, [7, 8], bonus=11, budget=8)
    assert hit is not None and hit[0].tokens[0] == 11 and hit[1] == [1, 3, 4, 6]
    assert adopt_subtree(TREE, spec_tokens, [7, 8], bonus=12, budget=8)[1] == [2, 5]
    assert adopt_subtree(TREE, spec_tokens, [7, 8], bonus=13, budget=8) is None  # grandchild, not a child
    assert adopt_subtree(TREE, spec_tokens, [7], bonus=8, budget=8) is None  # stopped short
    assert adopt_subtree(TREE, spec_tokens, [7, 9], bonus=11, budget=8) is None


GROW = dict(budget=10, topk=3, max_depth=4, max_expansions=12)


@pytest.mark.parametrize("accepted", [0, 2, "all"])
def test_draft_settles_where_a_commit_leaves_it(tiny_pair, accepted):
    """Speculate from a grown tree, then settle on an outcome: the next growth equals the one
    after a plain commit of that outcome (the speculation left no trace)."""
    model = load_llama(tiny_pair["near"])
    ids = [1, 17, 42, 99]

    def fresh():
        r = DraftRunner(model, 200, model.cfg.vocab_size)
        r.prefill(ids, last_token=5)
        return r, r.grow(**GROW)

    a, tree = fresh()
    b, tree_b = fresh()
    assert tree.tokens == tree_b.tokens
    path = best_path(tree)
    n = len(path) - 1 if accepted == "all" else accepted
    nodes, bonus = path[: n + 1], 3
    spec = a.grow_assuming(path, [tree.tokens[i] for i in path[1:]], None, **dict(GROW, max_depth=5, budget=20))
    assert len(spec) > 1
    ready = a.settle(tree, nodes, bonus, GROW["budget"])
    b.commit(tree, nodes, bonus)
    assert a.grow(**GROW).tokens == b.grow(**GROW).tokens
    if accepted != "all":
        assert ready is None  # the target stopped short of the leaf: nothing to adopt


def test_head_settles_where_a_commit_leaves_it_and_adopts_on_a_hit(tiny_pair):
    target = load_llama(tiny_pair["target"])
    torch.manual_seed(0)
    head = EagleHead(target.cfg).eval()
    H = target.cfg.hidden_size

    class FakeTarget:  # what the head reads from the target's verify: the accepted nodes' features
        last_features = torch.randn(40, H)
        transfers = Transfers(torch.device("cpu"))
        path: list[int] = []

        @classmethod
        def accepted_features(cls):
            return cls.last_features[torch.tensor(cls.path)]

    def fresh():
        r = EagleRunner(head, target, FakeTarget, 300)
        emb = target.embed_tokens(torch.tensor([1, 17, 42, 99, 5])).detach()
        r.add_prompt(emb, torch.randn(4, H, generator=torch.Generator().manual_seed(1)), 5)
        return r, r.grow(**GROW)

    a, tree = fresh()
    b, _ = fresh()
    path = best_path(tree)
    FakeTarget.path = path  # the verify accepted the whole best path
    spec = a.grow_assuming(path, [tree.tokens[i] for i in path[1:]], None, **dict(GROW, max_depth=5, budget=20))
    # The target accepted the whole path and emitted the head's own first guess after it: a hit.
    bonus = spec.tokens[[n for n in range(1, len(spec)) if spec.parents[n] == 0][0]]
    ready = a.settle(tree, path, bonus, GROW["budget"])
    assert ready is not None and ready.tokens[0] == bonus and 1 < len(ready) <= GROW["budget"]
    # The next round verifies the adopted tree (no growth), so the real pairs settle queued, made
    # from the verify's features on the target's stream, are still pending when the next growth
    # ahead starts on the side stream: that growth marks them with the side lane's record.
    c, _ = fresh()
    c.grow_assuming(path, [tree.tokens[i] for i in path[1:]], None, **dict(GROW, max_depth=5, budget=20))
    c_ready = c.settle(tree, path, bonus, GROW["budget"])
    pending, marked = [*c._embeds, *c._feats], []
    c_path = best_path(c_ready)
    FakeTarget.path = c_path
    c.grow_assuming(c_path, [c_ready.tokens[i] for i in c_path[1:]], None, record=marked.append,
                    **dict(GROW, max_depth=5, budget=20))
    assert pending and [id(t) for t in marked] == [id(t) for t in pending]
    FakeTarget.path = path
    b.commit(tree, path, bonus)
    assert a.length == b.length and a.root_token == b.root_token == bonus
    assert a.grow(**GROW).tokens == b.grow(**GROW).tokens


class _Stream:
    def __init__(self, name):
        self.name, self.waited, self.device = name, [], torch.device("cuda", 0)

    def wait_stream(self, other):
        self.waited.append(other.name)


def test_gpu_growth_goes_to_its_own_stream_and_is_joined(monkeypatch):
    """On a GPU the speculation's kernels go to a side stream: it first waits for the current
    stream (the drafter's state was written there), the growth runs under it on the lane's
    thread, and once the host work ends the current stream waits for it. (torch.cuda is faked:
    this machine has no GPU.)"""
    import threading

    from phide.runtime.cpu_lanes import CpuLane
    from phide.runtime.window_lanes import LaneSplits, side_lane
    from phide.speculation.overlap import PostVerifyOverlap

    current, side = _Stream("current"), _Stream("side")
    entered, log = [], []

    class Ctx:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            entered.append((threading.current_thread() is threading.main_thread(), self.stream.name))

        def __exit__(self, *exc):
            return False

    class Side:  # the side CudaLane: its stream, and its record (which a green split tracks)
        stream = side

        @staticmethod
        def record(t):
            return t

    class Runner:
        def grow_assuming(self, path, tokens, stop, record=None, **kw):
            assert record is Side.record  # what the growth reads is marked by the lane, not bare
            log.append(("grow_assuming", list(current.waited), list(side.waited)))
            return TREE

        def settle(self, tree, nodes, bonus, budget):
            log.append(("settle", list(current.waited)))
            return None

    monkeypatch.setattr(torch.cuda, "stream", Ctx)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
    ahead = PostVerifyOverlap.start(Runner(), TREE, CpuLane("draft"), dict(GROW), side=Side)
    assert ahead.finish(TREE, [0, 1], 11) is None
    assert entered == [(False, "side")]  # entered on the lane's thread
    assert log == [("grow_assuming", [], ["current"]), ("settle", ["side"])]

    made = []
    monkeypatch.setattr(torch.cuda, "Stream", lambda device, priority=0: made.append(priority) or _Stream("plain"))
    splits = LaneSplits(torch.device("cuda", 0))
    # without an SM split: the draft lane's plain stream (made once, beside the target lane's)
    assert side_lane(splits, 0) is side_lane(splits, 0) and len(made) == 2
    assert side_lane(splits, 0).stream is splits.get(0)[0][1].stream


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("draft_sms", [0, 16])
def test_overlap_on_a_side_stream_is_lossless(tiny_pair, draft_sms, monkeypatch):
    """On a GPU: the draft grows ahead on a second stream (or the green context's draft stream)
    during each verify; tokens identical to target-only, and guesses hit."""
    from phide.engine import Engine, Plan, Request, SpecConfig
    from phide.speculation import drafters

    monkeypatch.setattr(drafters, "MIN_PATH_PROB", 0.0)
    if draft_sms:
        pytest.importorskip("cuda.bindings.driver")
    target = load_llama(tiny_pair["target"], device="cuda")
    near = load_llama(tiny_pair["near"], device="cuda")
    engine = Engine(target, near, eos_token_ids=[], spec=SpecConfig(overlap=True, depth=4, budget=12))
    ids = [1, 17, 42, 99, 5]
    ref = Engine(target, eos_token_ids=[]).generate(Request(prompt_ids=ids, max_new_tokens=24), "target-only")
    for mode in ("sequential", "hide"):
        res = engine.generate(Request(prompt_ids=ids, max_new_tokens=24), Plan(mode, draft_sms=draft_sms))
        assert res.token_ids == ref.token_ids and res.stats["faults"] == 0
        assert res.stats["overlap_rounds"] > 0 and res.stats["overlap_hits"] > 0
    torch.cuda.synchronize()
