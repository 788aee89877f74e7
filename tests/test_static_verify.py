"""The target's static-shape verify (phide.speculation.static_verify): what the dynamic verify
computes, bucket by bucket; lossless in the engine; and with torch.cuda's graph API faked as a
device behaves (`FakeCuda` in tests/sim_device.py: a replay re-runs the captured ops on the captured
tensors), every verify and decode step after warm-up is exactly one replay, while a tree with no
bucket and a green split's stream run eagerly."""

from types import SimpleNamespace

import pytest
import torch

from phide.engine import Engine, Request, SpecConfig
from phide.models.llama import LlamaConfig, LlamaModel
from phide.speculation.runners import TargetRunner
from phide.speculation.static_verify import BUCKETS, StaticVerify
from phide.speculation.tree import Tree
from sim_device import FakeCuda


def _model(vocab=60, layers=3, seed=0):
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, eos_token_id=[],
                      max_position_embeddings=512)
    torch.manual_seed(seed)
    model = LlamaModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.fuse_projections()


def _tree(n):
    return Tree([(7 * i + 3) % 60 for i in range(n)], [-1] + [(i - 1) // 2 for i in range(1, n)])


def _verify(model, tree, static, capture=None, prefix=29):
    runner = TargetRunner(model, 200, capture=capture, static=static)
    runner.prefill(list(range(1, prefix + 1)))
    out = runner.verify(tree, 0.0, 0, 0)
    return out, runner.last_features.clone(), runner.cache.k[:, :, :, :runner.length].clone(), runner


@pytest.mark.parametrize("capture", [None, (0, 2, 3)], ids=["final-states", "eagle3-capture"])
def test_a_tree_that_fills_its_bucket_verifies_bit_identically(capture):
    """fp32: for every bucket size the static verify's outcome, features and committed cache are
    the dynamic verify's, bit for bit."""
    model = _model()
    static = StaticVerify(model, 200, captures=(None, capture))
    for n in BUCKETS:
        dyn = _verify(model, _tree(n), None, capture)
        sta = _verify(model, _tree(n), static, capture)
        assert sta[0] == dyn[0], n
        assert torch.equal(sta[1], dyn[1]) and torch.equal(sta[2], dyn[2]), f"bucket {n}"
    assert static.eager == len(BUCKETS)


def test_a_padded_tree_gives_the_same_outcome():
    """A tree smaller than its bucket is padded: the padding never reaches a real node, so the
    outcome and the committed rows are the dynamic verify's; the GEMMs' row count differs, which
    changes the BLAS blocking (last-ulp differences in fp32, not bit-identical)."""
    model = _model()
    static = StaticVerify(model, 200)
    for n in (2, 5, 9, 13, 20, 33, 47, 50):
        dyn = _verify(model, _tree(n), None)
        sta = _verify(model, _tree(n), static)
        assert sta[0] == dyn[0], n
        torch.testing.assert_close(sta[1], dyn[1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sta[2], dyn[2], rtol=1e-5, atol=1e-5)


def test_no_bucket_means_the_dynamic_verify():
    model = _model()
    static = StaticVerify(model, 200)
    assert static.bucket_for(65, 0) is None  # more nodes than the largest bucket
    assert static.bucket_for(5, 200 - 8).n == 8 and static.bucket_for(5, 200 - 7) is None  # padding past the cache
    out = _verify(model, _tree(70), static)  # a 70-node tree: the dense-mask dynamic verify
    assert static.eager == 0 and out[0] == _verify(model, _tree(70), None)[0]


def test_sampled_tokens_are_the_dynamic_engines(tiny_pair):
    from phide.models.loading import load_llama

    target, near = load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"])
    engines = [Engine(target, near, eos_token_ids=[], spec=SpecConfig(target_graph=s)) for s in (False, True)]
    for seed in range(3):
        for mode in ("target-only", "hide"):
            req = Request(prompt_ids=[1, 17, 42, 99, 5], max_new_tokens=14, temperature=0.8, seed=seed)
            assert engines[1].generate(req, mode).token_ids == engines[0].generate(req, mode).token_ids


# ----------------------------------------------------------------------------- CUDA graphs, faked


@pytest.fixture
def fake_cuda(monkeypatch):
    with FakeCuda(monkeypatch) as cuda:
        yield cuda


def _graphed_engine(model, draft=None, spec=None):
    """An engine whose static verify captures (fake) CUDA graphs, as it does on a GPU."""
    engine = Engine(model, draft, eos_token_ids=[], spec=spec or SpecConfig(topk=3, depth=3, budget=10))
    rows = engine._target_step.rows if engine._target_step is not None else 300
    engine._target_step = StaticVerify(model, rows, graph=True)
    return engine


def test_every_verify_after_warm_up_is_one_replay_with_target_only_tokens(fake_cuda, tiny_pair):
    from phide.models.loading import load_llama

    target, near = load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"])
    ref = Engine(target, near, eos_token_ids=[])
    engine = _graphed_engine(target, near)
    step = engine._target_step
    assert fake_cuda.captures == len(BUCKETS)  # one graph per bucket, captured when the engine was built
    forwards = []
    forward = target.forward
    target.forward = lambda *a, **k: forwards.append(1) or forward(*a, **k)
    try:
        for mode in ("target-only", "sequential", "hide"):
            for seed, temperature in ((0, 0.0), (3, 0.9)):
                req = Request(prompt_ids=[1, 17, 42, 99, 5, 8], max_new_tokens=15, temperature=temperature, seed=seed)
                want = ref.generate(req, mode).token_ids
                forwards.clear()
                replays = fake_cuda.replays
                res = engine.generate(req, mode)
                assert res.token_ids == want, (mode, temperature)
                # eager forwards: the prefill only; each verify (decode steps included) is one replay
                assert len(forwards) == 1 and fake_cuda.replays - replays == res.stats["verifies"]
    finally:
        del target.forward
    assert step.eager == 0 and step.replays == fake_cuda.replays


def test_a_replay_reads_the_buffers_not_the_capture_time_values(fake_cuda):
    """The fake is a device, not a recording of calls: a graph replayed over new buffer contents
    computes the new tree (a capture-time constant would give the same logits twice)."""
    model = _model()
    static = StaticVerify(model, 200, graph=True)
    outs = []
    for tokens in ([5, 6], [9, 6]):
        runner = TargetRunner(model, 200, static=static)
        runner.prefill(list(range(1, 30)))
        runner.verify(Tree(tokens, [-1, 0]), 0.0, 0, 0)
        outs.append(runner.last_features.clone())
    dyn = _verify(model, Tree([9, 6], [-1, 0]), None)[1]
    assert not torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[1], dyn, rtol=1e-5, atol=1e-5)


def test_a_tree_without_a_bucket_and_a_green_stream_run_eagerly(fake_cuda):
    model = _model()
    engine = _graphed_engine(model, spec=SpecConfig(topk=3, depth=3, budget=10))
    step = engine._target_step
    runner = TargetRunner(model, 300, static=step)
    runner.prefill(list(range(1, 20)))
    runner.verify(_tree(70), 0.0, 0, 0)  # no bucket: the dynamic verify
    assert step.replays == 0 and step.eager == 0
    green = FakeCuda.Stream("green target", context="green:rest")
    lanes = (SimpleNamespace(stream=green, green_split=object()),
             SimpleNamespace(stream=FakeCuda.Stream("green draft", "green:16"), green_split=object()))
    engine._split_made(16, lanes)
    with torch.cuda.stream(green):  # a graph captured in the primary context must not run here
        runner.verify(_tree(3), 0.0, 0, 0)
    assert step.replays == 0 and step.eager == 1
    runner.verify(_tree(3), 0.0, 0, 0)
    assert step.replays == 1
    engine._split_evicted(16, lanes)
    with torch.cuda.stream(green):
        runner.verify(_tree(3), 0.0, 0, 0)
    assert step.replays == 2


def test_a_host_read_inside_a_capture_is_refused(fake_cuda):
    """What CUDA refuses while capturing, the fake refuses: the static forward reads nothing back."""
    g = torch.cuda.CUDAGraph()
    x = torch.ones(3)
    with pytest.raises(RuntimeError, match="capturing"):
        with torch.cuda.graph(g, stream=torch.cuda.Stream(), capture_error_mode="thread_local"):
            (x * 2).sum().item()
