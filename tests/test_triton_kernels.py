"""Triton kernels vs their torch twins (bit-exact), plus the hash noise's statistics.

The Triton tests run the kernels through the interpreter on CPU (TRITON_INTERPRET=1, set before
triton is imported); they skip only if triton itself cannot be imported.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from phide.ops.reference.kv_commit import commit_accepted_path  # noqa: E402
from phide.ops.reference.hash_noise import (  # noqa: E402
    gumbel_choices_torch,
    hash_bits,
    hash_gumbel,
    hash_uniform,
    log_f32,
    seed_key,
)
from ops_choice import use_ops  # noqa: E402

try:
    import triton
except ImportError:  # pragma: no cover
    triton = None
HAVE_TRITON = triton is not None

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not importable")


# ---------------------------------------------------------------------------------------------
# Hash noise (torch only)


def _py_fmix32(h):
    h &= 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def _py_hash(seed, pos, tok):
    """The docstring's recipe, written out with Python ints."""
    s = seed % 2**64
    key = _py_fmix32(_py_fmix32((s >> 32) ^ 0x9E3779B9) ^ (s & 0xFFFFFFFF))
    p = pos % 2**64
    row = _py_fmix32(_py_fmix32(key ^ (p >> 32)) ^ (p & 0xFFFFFFFF))
    return _py_fmix32(_py_fmix32(row ^ ((tok * 0x9E3779B9) & 0xFFFFFFFF)) ^ key)


def test_hash_matches_documented_recipe():
    positions = [0, 1, 77, 2**31 + 5, 2**40 + 3, -1, -(2**33)]
    for seed in (0, 1, 12345, -3, 2**63 + 11, 2**70 + 1):
        h = hash_bits(seed, torch.tensor(positions), 50)
        for i, pos in enumerate(positions):
            for tok in (0, 1, 2, 31, 49):
                assert int(h[i, tok]) == _py_hash(seed, pos, tok), (seed, pos, tok)
    assert seed_key(5) == seed_key(5 + 2**64)
    u = hash_uniform(9, torch.tensor(positions), 50)
    ref = ((hash_bits(9, torch.tensor(positions), 50) >> 9).double() + 0.5) / 2**23
    assert u.dtype == torch.float32 and torch.equal(u.double(), ref)  # u is exact
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0


def test_hash_rows_are_token_bijections():
    h = hash_bits(3, torch.arange(4), 4096)
    for row in h:
        assert row.unique().numel() == 4096  # no two tokens of a row share noise


@pytest.mark.parametrize("seed", [0, 987654321])
def test_hash_uniform_chi_square(seed):
    from scipy.stats import chisquare

    u = hash_uniform(seed, torch.arange(200) + 1000, 1000).numpy()  # 200k draws
    counts, _ = np.histogram(u, bins=64, range=(0.0, 1.0))
    assert chisquare(counts).pvalue > 1e-3
    # Pairs: neighbouring tokens of a row and the same token at neighbouring positions.
    for a, b in ((u[:, :-1:2], u[:, 1::2]), (u[:-1:2, :], u[1::2, :])):
        joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=8, range=[[0, 1], [0, 1]])
        assert chisquare(joint.ravel()).pvalue > 1e-3


def _ulps(approx, exact):
    spacing = torch.from_numpy(np.spacing(np.abs(exact.float().numpy())).astype(np.float64))
    return float(((approx.double() - exact).abs() / spacing).max())


def test_log_f32_accuracy():
    u = (torch.arange(2**23, dtype=torch.int64).float() + 0.5) * 2.0**-23  # every possible u
    log_u = log_f32(u)
    assert _ulps(log_u, torch.log(u.double())) <= 2.0
    t = -log_u  # the second log's inputs
    assert _ulps(log_f32(t), torch.log(t.double())) <= 2.0
    x = torch.exp(torch.empty(100_000).uniform_(-80.0, 80.0))
    assert _ulps(log_f32(x), torch.log(x.double())) <= 2.0
    g = hash_gumbel(0, torch.arange(8), 1000)
    assert torch.isfinite(g).all() and -2.9 < float(g.min()) and float(g.max()) < 16.7


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_gumbel_argmax_frequencies_match_softmax(temperature):
    from scipy.stats import chisquare

    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 8, generator=gen) * 1.5
    n = 40_000
    picks = gumbel_choices_torch(logits.expand(n, 8), temperature, 2024, torch.arange(n))
    counts = torch.bincount(picks, minlength=8).numpy()
    expected = torch.softmax(logits[0].double() / temperature, -1).numpy() * n
    assert chisquare(counts, expected).pvalue > 1e-3


def test_gumbel_choices_torch_edges():
    V = 50
    x = torch.randn(6, V)
    x[0, 7] = float("nan")  # a NaN beside finite values
    x[1] = float("nan")  # all NaN -> 0, like argmax of an all -inf row
    x[2] = float("-inf")
    x[2, 31] = 0.0  # one finite logit
    x[3, ::2] = float("nan")
    x[3, 5] = -1e4  # one finite logit among NaN and ordinary values
    x[4, 9] = float("inf")
    x[4, 3] = float("inf")  # two +inf: lowest index
    pos = torch.arange(6) + 40
    for T in (0.0, 0.7, 1.0):
        c = gumbel_choices_torch(x, T, 5, pos)
        assert c.dtype == torch.int64 and c[1] == 0 and c[2] == 31 and c[4] == 3
        assert c[0] != 7 and not torch.isnan(x[3, c[3]])
    clean = torch.where(torch.isnan(x), float("-inf"), x)
    assert torch.equal(gumbel_choices_torch(x, 0.0, 5, pos), torch.argmax(clean, -1))
    # Keyed by (seed, position) only: same inputs, same draw; other seed/positions, other draws.
    y = torch.zeros(64, 1000)
    a = gumbel_choices_torch(y, 1.0, 5, torch.arange(64))
    assert torch.equal(a, gumbel_choices_torch(y, 1.0, 5, torch.arange(64)))
    assert not torch.equal(a, gumbel_choices_torch(y, 1.0, 6, torch.arange(64)))
    assert not torch.equal(a, gumbel_choices_torch(y, 1.0, 5, torch.arange(64) + 1))
    with pytest.raises(ValueError):
        gumbel_choices_torch(y, -1.0, 5, torch.arange(64))


def test_torch_argmax_ties_take_lowest_index():
    # The kernels' tie rule is the lowest index; check torch (CPU) agrees.
    assert int(torch.argmax(torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0]))) == 1
    assert int(torch.argmax(torch.full((9,), float("-inf")))) == 0


# ---------------------------------------------------------------------------------------------
# gumbel_choices_triton vs gumbel_choices_torch


def _logits_with_edges(n, vocab, dtype, gen):
    x = torch.randn(n, vocab, generator=gen) * 4.0
    x[0, 3] = float("nan")
    x[1] = float("nan")  # all NaN
    x[2] = float("-inf")
    x[2, vocab - 1] = 1.0  # one finite logit, in the last block
    x[3, :: 3] = float("nan")
    x[4, 17] = x[4, vocab // 2] = x[4, vocab - 2] = 50.0  # ties at the max
    if n > 5:
        x[5, 100] = x[5, 200] = float("inf")
        x[6, 0] = float("nan")
        x[6, 1:] = float("-inf")
        x[6, 700] = -3.0  # one finite logit among -inf and NaN
    return x.to(dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("vocab,n", [(1000, 13), (32064, 5)])
def test_gumbel_choices_triton_matches_torch(dtype, vocab, n):
    from phide.triton_kernels.gumbel_verify import gumbel_choices_triton

    gen = torch.Generator().manual_seed(vocab + n)
    x = _logits_with_edges(n, vocab, dtype, gen)
    pos = torch.randint(0, 10**6, (n,), generator=gen)
    pos[0] = 2**40 + 1  # a position past 32 bits
    seed = 31337
    greedy = gumbel_choices_triton(x, 0.0, seed, pos)
    assert greedy.dtype == torch.int64 and greedy.shape == (n,)
    assert torch.equal(greedy, gumbel_choices_torch(x, 0.0, seed, pos))
    nan_rows = torch.isnan(x.float()).any(-1)
    assert torch.equal(greedy[~nan_rows], torch.argmax(x[~nan_rows], -1))
    assert int(greedy[4]) == 17  # first of the tied maxima
    for T in (0.7, 1.0):
        got = gumbel_choices_triton(x, T, seed, pos)
        assert torch.equal(got, gumbel_choices_torch(x, T, seed, pos)), T
        assert int(got[1]) == 0 and int(got[2]) == vocab - 1
        chosen = x[torch.arange(n), got].float()
        # NaN never chosen (row 1 is all NaN: index 0, like argmax of an all -inf row)
        assert not torch.isnan(chosen[torch.arange(n) != 1]).any()
        if n > 5:
            assert int(got[5]) == 100 and int(got[6]) == 700


@needs_triton
def test_gumbel_triton_noise_is_bit_identical():
    from phide.triton_kernels.gumbel_verify import gumbel_choices_triton

    V = 32064
    pos = torch.tensor([5, 9, 2**33])
    g = hash_gumbel(7, pos, V)
    # logits = -g (T = 1): every score is exactly 0 iff the kernel's noise equals the twin's, so
    # the lowest index wins; any kernel value above the twin's would win instead.
    assert torch.equal(gumbel_choices_triton(-g, 1.0, 7, pos), torch.zeros(3, dtype=torch.int64))
    # Flat logits: the choice is the argmax of the noise itself.
    flat = torch.zeros(3, V)
    assert torch.equal(gumbel_choices_triton(flat, 1.0, 7, pos), torch.argmax(g, -1))


@needs_triton
def test_gumbel_triton_strided_rows_and_seeds():
    from phide.triton_kernels.gumbel_verify import gumbel_choices_triton

    gen = torch.Generator().manual_seed(3)
    wide = torch.randn(13, 1000 + 29, generator=gen)
    x = wide[:, 7 : 7 + 1000]  # row stride 1029, unit column stride
    pos = torch.arange(13) * 3
    seeds = (0, 1, -5, 2**64 - 1)
    # Keys on both sides of 2**31 (the launcher passes the uint32 key as a signed scalar).
    assert min(map(seed_key, seeds)) < 2**31 <= max(map(seed_key, seeds))
    for seed in seeds:
        got = gumbel_choices_triton(x, 0.9, seed, pos)
        assert torch.equal(got, gumbel_choices_torch(x, 0.9, seed, pos)), seed
    with pytest.raises(ValueError):
        gumbel_choices_triton(x, -0.1, 0, pos)


# ---------------------------------------------------------------------------------------------
# kv_commit_triton vs commit_accepted_path


def _random_paths(B, W, tree_nodes, gen, lens):
    """accept_nodes [B, W] (root first, strictly increasing node ids, -1 padded), accept_len [B]."""
    nodes = torch.full((B, W), -1, dtype=torch.int64)
    for b in range(B):
        n = int(lens[b])
        picked = torch.randperm(tree_nodes - 1, generator=gen)[:n] + 1
        nodes[b, 0] = 0
        nodes[b, 1 : n + 1] = picked.sort().values
    return nodes, torch.as_tensor(lens, dtype=torch.int64)


def _check_commit(k, v, base, nodes, alen):
    from phide.triton_kernels.kv_commit import kv_commit_triton

    k_ref, v_ref = k.clone(), v.clone()
    k0 = k.clone()
    commit_accepted_path(k_ref, v_ref, base, nodes, alen)
    kv_commit_triton(k, v, base, nodes, alen)
    assert torch.equal(k, k_ref) and torch.equal(v, v_ref)  # bit-exact
    # Slots past accept_len + 1 (the rest of the tree) and other requests' slots are untouched.
    for b in range(k.shape[1]):
        keep = torch.ones(k.shape[3], dtype=torch.bool)
        keep[int(base[b]) : int(base[b]) + int(alen[b]) + 1] = False
        assert torch.equal(k[:, b, :, keep], k0[:, b, :, keep])


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [80, 64])
@pytest.mark.parametrize("B", [1, 5])
def test_kv_commit_matches_torch(dtype, head_dim, B):
    gen = torch.Generator().manual_seed(head_dim * 10 + B)
    L, H, S, W, tree = 3, 2, 23, 6, 9  # odd slot count
    k = torch.randn(L, B, H, S, head_dim, generator=gen).to(dtype)
    v = torch.randn(L, B, H, S, head_dim, generator=gen).to(dtype)
    base = torch.randint(0, S - tree + 1, (B,), generator=gen)
    lens = [W - 1] if B == 1 else [0, W - 1, 2, 3, 1]  # accept length 0 and the maximum
    nodes, alen = _random_paths(B, W, tree, gen, lens)
    if B == 5:
        nodes[1] = torch.tensor([0, 2, 3, 4, 6, 8])  # overlapping src/dst: 2->1 reads slot 2 ...
        nodes[3, :4] = torch.tensor([0, 2, 3, 4])  # ... which 3->2 overwrites
    else:
        nodes[0] = torch.tensor([0, 2, 3, 5, 7, 8])
    k_before = k.clone()
    _check_commit(k, v, base, nodes, alen)
    assert not torch.equal(k, k_before)  # something did move


@needs_triton
def test_kv_commit_mixed_caches_and_layouts():
    gen = torch.Generator().manual_seed(11)
    B, W = 4, 64  # the widest path the kernel takes
    L, H, S = 2, 3, 71
    # k: a strided view (slots outermost in memory); v: a different head dim and dtype.
    k = torch.randn(L, B, S, H, 80, generator=gen).transpose(2, 3)
    v = torch.randn(L, B, H, S, 64, generator=gen).to(torch.bfloat16)
    base = torch.tensor([0, 7, 3, 5])
    nodes, alen = _random_paths(B, W, 66, gen, [63, 0, 31, 17])
    _check_commit(k, v, base, nodes, alen)
    # k and v with different slot counts: one launch per cache.
    v2 = torch.randn(L, B, H, S + 4, 64, generator=gen).half()
    k2 = torch.randn(L, B, H, S, 80, generator=gen)
    _check_commit(k2, v2, base, nodes, alen)
    # A single-column path (the root only) and an accept_len past the width are no-ops/clamped.
    _check_commit(k2, v2, base, nodes[:, :1].clone(), torch.zeros(B, dtype=torch.int64))
    nodes3, _ = _random_paths(B, 5, 9, gen, [4, 4, 4, 4])
    _check_commit(k2, v2, base, nodes3, torch.full((B,), 10, dtype=torch.int64))


@needs_triton
def test_kv_commit_rejects_wide_paths():
    from phide.triton_kernels.kv_commit import kv_commit_triton

    k = torch.zeros(1, 1, 1, 80, 16)
    with pytest.raises(ValueError):
        kv_commit_triton(k, k.clone(), torch.zeros(1, dtype=torch.int64),
                         torch.zeros(1, 65, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))


def test_engine_with_triton_kernels_matches_the_torch_twins(tiny_pair, monkeypatch):
    """PHIDE_OPS=triton (Gumbel choices and KV commit through the Triton kernels, interpreted on
    the CPU) gives the same tokens as the torch twins, greedy and seeded sampling, in every mode."""
    from phide.engine import Engine, Request
    from phide.models.loading import load_llama

    engine = Engine(load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"]), eos_token_ids=[])
    ids = [1, 17, 42, 99, 5]
    for temperature in (0.0, 0.9):
        ref = {}
        use_ops(monkeypatch, "torch")
        for mode in ("target-only", "hide"):
            ref[mode] = engine.generate(Request(prompt_ids=ids, max_new_tokens=10, temperature=temperature,
                                                seed=4), mode).token_ids
        use_ops(monkeypatch, "triton")
        for mode in ("target-only", "hide"):
            got = engine.generate(Request(prompt_ids=ids, max_new_tokens=10, temperature=temperature,
                                          seed=4), mode).token_ids
            assert got == ref[mode] == ref["target-only"], (temperature, mode)


def test_a_tree_wider_than_a_kernel_tile_commits_only_its_path(tiny_pair, monkeypatch):
    """A first tree of 96 nodes (more than the KV-commit kernel's 64-wide path tile): the verify
    commits only the accepted path (at most the tree's depth + 1 nodes), so PHIDE_OPS=triton runs
    it, and the tokens are target-only's."""
    from phide.engine import Engine, Request, SpecConfig
    from phide.models.loading import load_llama

    from phide.models.eagle import EagleHead
    from phide.speculation.runners import TargetRunner

    target, near = load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"])
    ids = [1, 17, 42, 99, 5]
    ref = Engine(target, eos_token_ids=[]).generate(Request(prompt_ids=ids, max_new_tokens=10), "target-only")
    use_ops(monkeypatch, "triton")
    sizes = []
    verify = TargetRunner.verify
    monkeypatch.setattr(TargetRunner, "verify", lambda self, tree, *a: sizes.append(len(tree)) or verify(self, tree, *a))
    # with a head, sequential grows the draft's whole first tree (its window shape) after the prefill
    engine = Engine(target, near, eos_token_ids=[], head=EagleHead(target.cfg),
                    spec=SpecConfig(topk=8, depth=4, budget=12, window_depth=12, window_budget=96))
    res = engine.generate(Request(prompt_ids=ids, max_new_tokens=10), "sequential")
    assert res.token_ids == ref.token_ids and res.stats["faults"] == 0
    assert sizes[0] == 96


# ---------------------------------------------------------------------------------------------
# precompile: the variant list the engine warms at load time (and profiling/sm90_compile.py
# compiles for sm_90a)


@needs_triton
def test_precompile_lists_every_kernel_and_each_variant_runs():
    from phide.triton_kernels.precompile import kernel_variants, precompile

    kw = dict(topk=(3, 1), prefix_len=40)
    compiled = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
    device = "cuda" if compiled else "cpu"
    # On a GPU this compiles and runs every variant; on a CPU it only lists them.
    variants = precompile(device, torch.float32, 16, 4, 2, 300, 8, **kw)
    assert variants == kernel_variants(torch.float32, 16, 4, 2, 300, 8, **kw)
    names = {launch.name for v in variants for launch in v.launches("meta")}
    assert names == {"_prefix_partial_kernel", "_tail_merge_kernel", "_tree_topk_kernel", "_gumbel_argmax_kernel",
                     "_kv_commit_kernel"}
    # Every tree size and path width up to max_tree_nodes is served by exactly one listed variant.
    for op, sizes in (("tree_attention", range(1, 9)), ("kv_commit", range(2, 9))):
        assert sorted(n for v in variants if v.op == op for n in v.covers) == list(sizes), op
    assert sorted(v.shape["k"] for v in variants if v.op == "tree_topk") == [1, 3]
    assert sorted(v.shape["greedy"] for v in variants if v.op == "gumbel_choices") == [False, True]
    if not compiled:  # the interpreter: each variant's inputs fit its launcher
        for variant in variants:
            variant.run("cpu")


def test_the_engine_prepares_its_kernels_at_load_only_when_it_launches_them(tiny_pair, monkeypatch):
    """Engine construction asks ops for every Triton variant its requests will launch (compiled
    at load on a GPU, never inside a request); on a CPU with the torch references there are none."""
    from phide.engine import Engine
    from phide.models.loading import load_llama

    target, near = load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"])
    use_ops(monkeypatch, "torch")
    assert Engine(target, near).kernels == []
    use_ops(monkeypatch, "triton")
    ops_listed = {v.op for v in Engine(target, near).kernels}
    assert {"tree_attention", "tree_topk", "gumbel_choices", "kv_commit"} <= ops_listed
