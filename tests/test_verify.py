"""Tree verification (the greedy walk's torch twin and the phide.ops dispatch) and the KV commit.

Exact hand-built trees, structural invariants on random trees with phide.ops equal to the twin,
the target's choice at temperature 0, and the in-place KV commit.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from phide import ops  # noqa: E402
from phide.ops.reference import accept as V  # noqa: E402
from phide.ops.reference.kv_commit import commit_accepted_path, gather_rows_  # noqa: E402

GREEDY = [
    pytest.param(V.accept_path_torch, id="twin"),
    pytest.param(ops.accept_path, id="ops"),
]


def _t(x):
    return torch.tensor(x, dtype=torch.int64)


def _check(out, nodes, toks, lens):
    accept_nodes, out_tokens, accept_len = (o.to(torch.int64) for o in out)
    assert accept_nodes.tolist() == nodes
    assert out_tokens.tolist() == toks
    assert accept_len.tolist() == lens


def _pad(rows, width, fill=-1):
    return [r + [fill] * (width - len(r)) for r in rows]


# --------------------------------------------------------------------------------------------
# Greedy: exact hand-built trees
# --------------------------------------------------------------------------------------------

# SGLang's 2-request, 6-node tree (test_eagle_utils.py): 0 -> {1, 3}, 1 -> 2, 3 -> 4 -> 5.
SG_PARENTS = [-1, 0, 1, 0, 3, 4]


@pytest.mark.parametrize("fn", GREEDY)
def test_greedy_sglang_tree(fn):
    tokens = _t([[0, 1, 2, 3, 4, 5], [7, 8, 9, 10, 11, 12], [7, 8, 9, 10, 11, 12]])
    parents = _t([SG_PARENTS] * 3)
    choice = _t([
        # root wants 3 (node 3, not node 1); 3 wants 4, 4 wants 5, leaf 5 -> bonus 18.
        # choice[1] = 2 would extend the (unvisited) branch 0 -> 1 -> 2.
        [3, 2, 9, 4, 5, 18],
        # root wants 10 (node 3); 3 wants 11 (node 4); 4 wants 13 != 12 -> bonus 13.
        [10, 9, 0, 11, 13, 0],
        # root wants 8 (node 1); 1 wants 9 (node 2, a leaf) -> bonus 77; the other branch would
        # match all the way down but is never visited.
        [8, 9, 77, 10, 11, 12],
    ])
    _check(
        fn(tokens, parents, choice),
        [[0, 3, 4, 5, -1, -1], [0, 3, 4, -1, -1, -1], [0, 1, 2, -1, -1, -1]],
        [[3, 4, 5, 18, -1, -1], [10, 11, 13, -1, -1, -1], [8, 9, 77, -1, -1, -1]],
        [3, 2, 2],
    )


@pytest.mark.parametrize("fn", GREEDY)
def test_greedy_chain(fn):
    tokens = _t([[5, 1, 2, 3, 4]] * 2)
    parents = _t([[-1, 0, 1, 2, 3]] * 2)
    choice = _t([[1, 2, 7, 4, 9], [1, 2, 3, 4, 9]])  # mismatch at level 3 / full acceptance
    _check(
        fn(tokens, parents, choice),
        [[0, 1, 2, -1, -1], [0, 1, 2, 3, 4]],
        [[1, 2, 7, -1, -1], [1, 2, 3, 4, 9]],
        [2, 4],
    )


@pytest.mark.parametrize("fn", GREEDY)
def test_greedy_star_and_duplicate_siblings(fn):
    tokens = _t([[0, 10, 11, 12, 13, 14], [0, 5, 5, 6, -1, -1]])
    parents = _t([[-1, 0, 0, 0, 0, 0], [-1, 0, 0, 2, -1, -1]])
    choice = _t([
        [13, 0, 0, 0, 14, 0],  # star: child 4 matches, leaf bonus from node 4's own choice
        [5, 8, 6, 1, 0, 0],  # duplicate siblings: the first in sibling order (node 1) wins
    ])
    _check(
        fn(tokens, parents, choice),
        [[0, 4, -1, -1, -1, -1], [0, 1, -1, -1, -1, -1]],
        [[13, 14, -1, -1, -1, -1], [5, 8, -1, -1, -1, -1]],
        [1, 1],
    )


@pytest.mark.parametrize("fn", GREEDY)
def test_greedy_all_rejected_at_level_one(fn):
    # The root's choice (3) is the token of a grandchild, not of a child: nothing is accepted.
    tokens = _t([[0, 1, 2, 3]])
    parents = _t([[-1, 0, 0, 1]])
    choice = _t([[3, 3, 3, 3]])
    _check(fn(tokens, parents, choice), [[0, -1, -1, -1]], [[3, -1, -1, -1]], [0])


@pytest.mark.parametrize("fn", GREEDY)
def test_greedy_padding_never_accepted(fn):
    tokens = _t([[0, 7, 7, 5, 6], [0, 7, 5, 6, 6], [0, 3, 3, 9, 9]])
    parents = _t([
        [-1, -1, 0, 0, 1],  # node 1 is padding (token 7) with a "child" 4; node 2 is real
        [-1, -1, 0, -1, -1],  # only padding nodes carry the wanted token
        [-1, 0, -1, -1, -1],  # trailing padding with the root's and node 1's wanted tokens
    ])
    choice = _t([[7, 6, 6, 0, 0], [7, 0, 6, 0, 0], [3, 9, 0, 0, 0]])
    _check(
        fn(tokens, parents, choice),
        [[0, 2, -1, -1, -1], [0, -1, -1, -1, -1], [0, 1, -1, -1, -1]],
        [[7, 6, -1, -1, -1], [7, -1, -1, -1, -1], [3, 9, -1, -1, -1]],
        [1, 0, 1],
    )


@pytest.mark.parametrize("fn", GREEDY)
def test_greedy_batch_of_five_different_trees(fn):
    N = 7
    cases = [  # (tokens, parents, choice, nodes, out, len)
        ([0, 1, 2, 3, 4, 5], SG_PARENTS, [3, 2, 9, 4, 5, 18], [0, 3, 4, 5], [3, 4, 5, 18], 3),
        ([5, 1, 2, 3, 4], [-1, 0, 1, 2, 3], [1, 2, 3, 4, 9], [0, 1, 2, 3, 4], [1, 2, 3, 4, 9], 4),
        ([0, 10, 11, 12, 13, 14, 15], [-1] + [0] * 6, [15, 0, 0, 0, 0, 0, 4], [0, 6], [15, 4], 1),
        ([0, 1, 2, 3], [-1, 0, 0, 1], [3, 3, 3, 3], [0], [3], 0),
        ([9, 4, 4, 8, 2], [-1, 0, -1, 1, 1], [4, 2, 0, 0, 6], [0, 1, 4], [4, 2, 6], 2),
    ]
    # Padding nodes get the root's wanted token: they must still never be accepted.
    tokens = _t([c[0] + [c[2][0]] * (N - len(c[0])) for c in cases])
    parents = _t(_pad([c[1] for c in cases], N))
    choice = _t(_pad([c[2] for c in cases], N, 0))
    out = fn(tokens, parents, choice)
    nodes, toks = _pad([c[3] for c in cases], N), _pad([c[4] for c in cases], N)
    _check(out, nodes, toks, [c[5] for c in cases])
    for b in range(len(cases)):  # batching does not change any request's result
        single = fn(tokens[b : b + 1], parents[b : b + 1], choice[b : b + 1])
        for o, s in zip(out, single):
            assert torch.equal(o[b : b + 1].to(torch.int64), s.to(torch.int64))


# --------------------------------------------------------------------------------------------
# Random trees: structural invariants, and phide.ops == twin
# --------------------------------------------------------------------------------------------


def _random_trees(g, B, N, Vocab, pad_p=0.1):
    parents = torch.full((B, N), -1, dtype=torch.int64)
    for i in range(1, N):
        par = torch.randint(0, i, (B,), generator=g)
        pad = torch.rand(B, generator=g) < pad_p
        parents[:, i] = torch.where(pad, torch.full_like(par, -1), par)
    tokens = torch.randint(0, Vocab, (B, N), generator=g)
    return tokens, parents


def _random_choice(g, tokens, parents, Vocab, follow=0.7):
    """Target choices that often equal the token of one of the node's children (deep paths)."""
    B, N = tokens.shape
    choice = torch.randint(0, Vocab, (B, N), generator=g)
    follow_mask = torch.rand(B, N, generator=g) < follow
    for b in range(B):
        kids = V.children_lists(parents[b].tolist())
        for i in range(N):
            if kids[i] and follow_mask[b, i]:
                j = int(torch.randint(len(kids[i]), (1,), generator=g))
                choice[b, i] = tokens[b, kids[i][j]]
    return choice


def _check_path_structure(tokens, parents, out):
    accept_nodes, out_tokens, accept_len = (o.to(torch.int64) for o in out)
    B, N = tokens.shape
    for b in range(B):
        n = int(accept_len[b])
        path = accept_nodes[b].tolist()
        assert path[0] == 0 and all(x == -1 for x in path[n + 1 :])
        assert all(x == -1 for x in out_tokens[b, n + 1 :].tolist())
        for i in range(1, n + 1):
            assert int(parents[b, path[i]]) == path[i - 1] >= 0
            assert int(out_tokens[b, i - 1]) == int(tokens[b, path[i]])
        assert int(out_tokens[b, n]) >= 0


@pytest.mark.parametrize("fn", GREEDY)
def test_greedy_random_trees_invariants_and_ops_agree(fn):
    g = torch.Generator().manual_seed(11)
    tokens, parents = _random_trees(g, 48, 10, 6)
    choice = _random_choice(g, tokens, parents, 6)
    out = fn(tokens, parents, choice)
    _check_path_structure(tokens, parents, out)
    accept_nodes, out_tokens, accept_len = (o.to(torch.int64) for o in out)
    assert int(accept_len.max()) >= 3  # the generator really produces deep paths
    for b in range(tokens.shape[0]):
        last = int(accept_nodes[b, accept_len[b]])
        want = int(choice[b, last])
        assert int(out_tokens[b, accept_len[b]]) == want  # bonus = target choice at the last node
        kids = V.children_lists(parents[b].tolist())
        assert all(int(tokens[b, c]) != want for c in kids[last])  # the walk stopped for a reason
        for i in range(1, int(accept_len[b]) + 1):  # each step took the FIRST matching sibling
            prev, node = int(accept_nodes[b, i - 1]), int(accept_nodes[b, i])
            first = next(c for c in kids[prev] if int(tokens[b, c]) == int(choice[b, prev]))
            assert node == first
    ref = V.accept_path_torch(tokens, parents, choice)
    for o, r in zip(out, ref):
        assert torch.equal(o.to(torch.int64), r)


def test_gumbel_choices_at_temperature_zero_take_the_first_max():
    from phide.ops.reference.hash_noise import gumbel_choices_torch

    greedy = gumbel_choices_torch(torch.tensor([[1.0, 3.0, 3.0], [4.0, 0.0, 4.0]]), 0.0, 0, torch.tensor([0, 1]))
    assert greedy.tolist() == [1, 0]  # first max, like HF


# --------------------------------------------------------------------------------------------
# KV commit
# --------------------------------------------------------------------------------------------


def _commit_reference(cache, base, accept_nodes, accept_len):
    """Slow per-row reference reading every source from a clone taken before any store."""
    old = cache.clone()
    new = cache.clone()
    for b in range(cache.shape[1]):
        for i in range(int(accept_len[b]) + 1):
            new[:, b, :, int(base[b]) + i] = old[:, b, :, int(base[b]) + int(accept_nodes[b, i])]
    return new


def _random_paths(g, B, W, N):
    """Root-first strictly increasing node paths (tree paths are, parents precede children)."""
    nodes = torch.full((B, W), -1, dtype=torch.int64)
    lens = torch.randint(0, W, (B,), generator=g)
    for b in range(B):
        rest = torch.randperm(N - 1, generator=g)[: int(lens[b])] + 1
        nodes[b, : int(lens[b]) + 1] = torch.cat([_t([0]), rest.sort().values])
    return nodes, lens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_commit_accepted_path_matches_reference(dtype):
    g = torch.Generator().manual_seed(5)
    L, B, H, S, D, N, W = 3, 6, 2, 48, 4, 9, 6
    k = torch.randn(L, B, H, S, D, generator=g).to(dtype)
    v = torch.randn(L, B, H, S, D + 2, generator=g).to(dtype)  # V may have its own head dim
    base = _t([0, 5, 17, 30, 39, 11])
    nodes, lens = _random_paths(g, B, W, N)
    nodes[0, :4], lens[0] = _t([0, 2, 3, 5]), 3  # the hazard: dst 2 is the source of dst 1
    nodes[1, :3], lens[1] = _t([0, 1, 2]), 2  # identity moves
    nodes[2, :1], lens[2] = _t([0]), 0  # nothing accepted
    nodes[2, 1:] = -1
    nodes[3, :6], lens[3] = _t([0, 2, 3, 4, 5, 8]), 5  # every destination is a later source
    ref_k = _commit_reference(k, base, nodes, lens)
    ref_v = _commit_reference(v, base, nodes, lens)
    k0, v0 = k.clone(), v.clone()
    commit_accepted_path(k, v, base, nodes, lens)
    assert torch.equal(k, ref_k) and torch.equal(v, ref_v)
    # Rows off the path are untouched (explicitly, not just through the reference).
    for b in range(B):
        keep = torch.ones(S, dtype=torch.bool)
        keep[int(base[b]) : int(base[b]) + int(lens[b]) + 1] = False
        assert torch.equal(k[:, b][:, :, keep], k0[:, b][:, :, keep])
        assert torch.equal(v[:, b][:, :, keep], v0[:, b][:, :, keep])
    assert not torch.equal(k, k0)  # something actually moved


def test_commit_hazard_detected_by_reference():
    """The reference really catches the in-place race: a reversed in-place copy disagrees."""
    L, H, S, D = 2, 1, 8, 3
    cache = torch.arange(L * H * S * D, dtype=torch.float32).reshape(L, 1, H, S, D)
    nodes, lens, base = _t([[0, 2, 3, -1]]), _t([2]), _t([1])
    ref = _commit_reference(cache, base, nodes, lens)
    racy = cache.clone()
    for i in (2, 1):  # store dst 2 before reading src 2 for dst 1
        racy[:, 0, :, 1 + i] = racy[:, 0, :, 1 + int(nodes[0, i])]
    assert not torch.equal(racy, ref)
    good = cache.clone()
    commit_accepted_path(good, good.clone(), base, nodes, lens)
    assert torch.equal(good, ref)
    assert torch.equal(good[:, 0, :, 2], cache[:, 0, :, 3])
    assert torch.equal(good[:, 0, :, 3], cache[:, 0, :, 4])


def test_gather_rows_overlapping():
    cache = torch.arange(2 * 2 * 1 * 6 * 1, dtype=torch.float32).reshape(2, 2, 1, 6, 1)
    old = cache.clone()
    b = _t([0, 0, 1, 1])
    src, dst = _t([3, 4, 0, 1]), _t([4, 5, 1, 2])  # shift right: every dst but the last is a src
    gather_rows_(cache, b, src, dst)
    for bi, s, d in zip(b.tolist(), src.tolist(), dst.tolist()):
        assert torch.equal(cache[:, bi, :, d], old[:, bi, :, s])
    assert torch.equal(cache[:, 0, :, :4], old[:, 0, :, :4])
    assert torch.equal(cache[:, 1, :, 3:], old[:, 1, :, 3:])
    assert torch.equal(cache[:, 1, :, 0], old[:, 1, :, 0])
