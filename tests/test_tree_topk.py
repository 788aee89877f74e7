"""Draft tree step top-k: the torch twin against a dense float64 reference, its tie and
non-finite rules, the Triton kernel (interpreted on CPU) against the twin, and the tree grower
through `ops.tree_topk` on both backends."""

from kernel_marks import DEVICE, needs_interpreter, needs_triton  # first: sets TRITON_INTERPRET

import pytest  # noqa: E402
import torch  # noqa: E402

from phide.errors import DraftFault  # noqa: E402
from phide.speculation.tree import TreeGrower  # noqa: E402
from phide.ops.reference.tree_topk import tree_topk_torch  # noqa: E402
from ops_choice import use_ops  # noqa: E402

NINF, NAN, INF = float("-inf"), float("nan"), float("inf")
# The interpreter runs kernels in numpy, which warns on the log(0) / inf - inf of degenerate rows.
quiet_numpy = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning",
                                         "ignore:invalid value:RuntimeWarning")


def _dense_reference(logits, parent_scores, k):
    """Per row: float64 log-softmax over the whole row, Python sort by (-logit, token)."""
    x = logits.double().reshape(-1, logits.shape[-1])
    parents = parent_scores.double().reshape(-1)
    tokens, scores = [], []
    for row, parent in zip(x, parents):
        logp = torch.log_softmax(row, dim=0)
        order = sorted(range(row.numel()), key=lambda t: (-float(row[t]), t))[:k]
        tokens.append(order)
        scores.append([float(parent + logp[t]) for t in order])
    shape = (*logits.shape[:-1], k)
    return torch.tensor(tokens).view(shape), torch.tensor(scores, dtype=torch.float64).view(shape)


def _logits(shape, gen, dtype=torch.float32, ties=True):
    x = torch.randn(*shape, generator=gen) * 3
    rows = x.view(-1, shape[-1])
    if ties:  # exact ties at the top, across block boundaries of the kernel (2048 lanes)
        V = shape[-1]
        rows[0, [7, V // 2, V - 1]] = 20.0
        rows[-1, [V - 3, 1]] = 15.0
    return x.to(dtype)


@pytest.mark.parametrize("shape,k", [((5, 3, 1000), 4), ((2, 32064), 6), ((13, 37), 37)])
def test_twin_matches_dense_reference(shape, k):
    gen = torch.Generator().manual_seed(shape[-1])
    x = _logits(shape, gen)
    parents = torch.randn(shape[:-1], generator=gen) - 3
    tokens, scores, lse = tree_topk_torch(x, parents, k)
    ref_tokens, ref_scores = _dense_reference(x, parents, k)
    assert tokens.dtype == torch.int64 and scores.dtype == torch.float32
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(scores.double(), ref_scores, atol=2e-5, rtol=1e-6)
    torch.testing.assert_close(lse.double(), torch.logsumexp(x.double(), -1), atol=2e-5, rtol=1e-6)
    assert tokens.view(-1, k)[0, :3].tolist() == [7, shape[-1] // 2, shape[-1] - 1]  # ties: lower id


def test_twin_ties_and_non_finite_rows():
    x = torch.tensor([
        [1.0, 3.0, 3.0, 2.0, 3.0, 0.0],  # three-way tie at the top
        [NINF, NINF, 0.5, NINF, NINF, NINF],  # one finite logit: the rest are -inf scores
        [NINF] * 6,  # nothing finite
        [0.0, NAN, 4.0, 1.0, NAN, 2.0],  # NaN: -inf for selection, row_lse NaN
        [0.0, INF, 1.0, 2.0, 3.0, 4.0],  # +inf: row_lse not finite
        [2.0] * 6,  # all equal
    ])
    parents = torch.tensor([0.0, -1.0, 0.0, -2.0, 0.0, -0.5])
    tokens, scores, lse = tree_topk_torch(x, parents, 4)
    assert tokens[0].tolist() == [1, 2, 4, 3] and tokens[5].tolist() == [0, 1, 2, 3]
    assert tokens[1].tolist() == [2, 0, 1, 3] and scores[1, 0] == -1.0 and (scores[1, 1:] == NINF).all()
    assert tokens[2].tolist() == [0, 1, 2, 3] and (scores[2] == NINF).all() and lse[2] == NINF
    assert tokens[3].tolist() == [2, 5, 3, 0] and torch.isnan(lse[3]) and torch.isfinite(scores[3]).all()
    assert tokens[4, 0] == 1 and not torch.isfinite(lse[4])
    torch.testing.assert_close(scores[5], torch.full((4,), -0.5 - torch.log(torch.tensor(6.0)).item()))
    assert torch.isfinite(lse[[0, 1, 5]]).all()
    with pytest.raises(ValueError):
        tree_topk_torch(x, parents, 7)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,k", [((1, 4, 1000), 4), ((5, 3, 1000), 8), ((1, 2, 32064), 4),
                                     ((5, 1, 32064), 5)])
def test_kernel_matches_twin(dtype, shape, k):
    from phide.triton_kernels.tree_topk import tree_topk_triton

    gen = torch.Generator().manual_seed(shape[0] * 7 + shape[-1])
    x = _logits(shape, gen, dtype)
    if shape[0] == 5:  # B = 5 with different frontier rows: some degenerate
        x[1, 0] = NINF
        x[1, 0, 11] = 1.0
        x[2, 0, 5] = NAN
    parents = torch.randn(shape[:-1], generator=gen) - 2
    x, parents = x.to(DEVICE), parents.to(DEVICE)
    tokens, scores, lse = tree_topk_triton(x, parents, k)
    ref_tokens, ref_scores, ref_lse = tree_topk_torch(x, parents, k)
    assert tokens.shape == ref_tokens.shape == (*shape[:-1], k)
    assert torch.equal(tokens, ref_tokens)  # selection is on exact fp32 upcasts: bit-identical
    # Both compute (x - max) - log(sum exp): only the summation order differs.
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-6, equal_nan=True)


@needs_triton
@quiet_numpy
def test_kernel_ties_edges_and_strides():
    from phide.triton_kernels.tree_topk import MAX_K, tree_topk_triton

    x = torch.tensor([
        [1.0, 3.0, 3.0, 2.0, 3.0, 0.0],
        [NINF, NINF, 0.5, NINF, NINF, NINF],
        [NINF] * 6,
        [0.0, NAN, 4.0, 1.0, NAN, 2.0],
        [2.0] * 6,
    ], device=DEVICE)
    parents = torch.tensor([0.0, -1.0, 0.0, -2.0, -0.5], device=DEVICE)
    for k in (1, 4, 6):
        got, ref = tree_topk_triton(x, parents, k), tree_topk_torch(x, parents, k)
        assert torch.equal(got[0], ref[0]), k
        torch.testing.assert_close(got[1], ref[1], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got[2], ref[2], atol=1e-6, rtol=1e-6, equal_nan=True)
    # Rows of a wider matrix (the draft's vocabulary cut to the shared prefix), ties over blocks.
    wide = torch.zeros(3, 5000, device=DEVICE)
    wide[:, 4999] = 1.0
    view = wide[:, :4097]  # the 1.0 is outside the view: every value ties at 0
    zeros = torch.zeros(3, device=DEVICE)
    got = tree_topk_triton(view, zeros, 5)
    assert got[0].tolist() == [[0, 1, 2, 3, 4]] * 3
    torch.testing.assert_close(got[1], tree_topk_torch(view, zeros, 5)[1], atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        tree_topk_triton(torch.zeros(2, 100), torch.zeros(2), MAX_K + 1)


def _table_expand(grower, table):
    def expand(chosen):
        return torch.stack([table[grower.cands[c].token] for c in chosen])
    return expand


@needs_triton
@needs_interpreter
@quiet_numpy
def test_grower_builds_the_same_tree_on_both_backends(monkeypatch):
    import phide.triton_kernels.tree_topk as kernel

    V = 300
    gen = torch.Generator().manual_seed(5)
    table = torch.randn(V, V, generator=gen) * 2  # raw logits: the grower normalises
    table[:, 17] = table[:, 3]  # ties between tokens 3 and 17 in every row
    calls = []
    real = kernel.tree_topk_triton
    monkeypatch.setattr(kernel, "tree_topk_triton", lambda *a: calls.append(1) or real(*a))
    trees = {}
    for backend in ("torch", "triton"):
        use_ops(monkeypatch, backend)
        grower = TreeGrower(0, table[0], topk=3, max_depth=4)
        while grower.can_grow():
            grower.step(_table_expand(grower, table))
        trees[backend] = grower.build(budget=12)
    assert calls and trees["torch"].tokens == trees["triton"].tokens
    assert trees["torch"].parents == trees["triton"].parents
    assert trees["torch"].scores == pytest.approx(trees["triton"].scores, abs=1e-5)
    # The scores are cumulative log-probs of the raw logits.
    logp = torch.log_softmax(table.double(), -1)
    tree = trees["torch"]
    for i in range(1, len(tree)):
        p = tree.parents[i]
        assert tree.scores[i] == pytest.approx(tree.scores[p] + float(logp[tree.tokens[p], tree.tokens[i]]), abs=1e-5)
    with pytest.raises(DraftFault):
        TreeGrower(0, torch.full((V,), NAN), topk=2, max_depth=3)
