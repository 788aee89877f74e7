"""Tree/chain verification (torch twins and the phide.ops dispatch) and the KV commit.

Exact hand-built cases, edge cases at coin endpoints and CDF boundaries, fixed-coin equality of
phide.ops with the twins, seeded chi-square tests of the joint law of the first two emitted
tokens (with negative controls showing the test has power), and the in-place KV commit.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from scipy.stats import chisquare  # noqa: E402

from phide import ops  # noqa: E402
from phide.ops.reference import accept as V  # noqa: E402
from phide.ops.reference.kv_commit import commit_accepted_path, gather_rows_  # noqa: E402

GREEDY = [
    pytest.param(V.tree_accept_greedy_torch, id="twin"),
    pytest.param(ops.tree_accept_greedy, id="ops"),
]
STOCH = [
    pytest.param(V.tree_accept_stochastic_torch, id="twin"),
    pytest.param(ops.tree_accept_stochastic, id="ops"),
]


def _t(x):
    return torch.tensor(x, dtype=torch.int64)


def _f32(x):
    return torch.tensor(x, dtype=torch.float32)


def _below(x: float) -> float:
    """Largest float32 below x (a coin just under a CDF boundary, exact in float32 and float64)."""
    return float(torch.nextafter(_f32(x), _f32(-1.0)))


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
# Random trees: structural invariants, and phide.ops == twin with fixed coins
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


def _random_probs(g, B, N, Vocab, zero_p=0.3):
    w = torch.rand(B, N, Vocab, generator=g) ** 2
    w = w * (torch.rand(B, N, Vocab, generator=g) > zero_p)
    w[..., 0] += (w.sum(-1) == 0).float()  # no all-zero row
    return (w / w.sum(-1, keepdim=True)).float()


def _random_coins(g, tokens, parents, probs):
    """float32 coins: uniform, exactly 0, exactly on a sibling CDF boundary, or just below it."""
    B, N = tokens.shape
    coins = torch.rand(B, N, generator=g)
    kind = torch.randint(0, 4, (B, N), generator=g)
    for b in range(B):
        kids = V.children_lists(parents[b].tolist())
        for i in range(N):
            if kind[b, i] == 1:
                coins[b, i] = 0.0
            elif kind[b, i] >= 2 and kids[i]:
                j = int(torch.randint(len(kids[i]), (1,), generator=g))
                acc = float(probs[b, i, tokens[b, kids[i]][: j + 1]].double().sum())
                if acc < 1.0:
                    coins[b, i] = acc if kind[b, i] == 2 else _below(acc)
    final = torch.rand(B, generator=g)
    final[::5] = 0.0
    return coins, final


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
    ref = V.tree_accept_greedy_torch(tokens, parents, choice)
    for o, r in zip(out, ref):
        assert torch.equal(o.to(torch.int64), r)


@pytest.mark.parametrize("fn", STOCH)
def test_stochastic_random_trees_invariants_and_ops_agree(fn):
    g = torch.Generator().manual_seed(12)
    B, N, Vocab = 64, 10, 6
    tokens, parents = _random_trees(g, B, N, Vocab)
    probs = _random_probs(g, B, N, Vocab)
    coins, final = _random_coins(g, tokens, parents, probs)
    out = fn(tokens, parents, probs, coins, final)
    _check_path_structure(tokens, parents, out)
    accept_nodes, out_tokens, accept_len = (o.to(torch.int64) for o in out)
    assert int(accept_len.max()) >= 2 and int(accept_len.min()) == 0
    for b in range(B):
        kids = V.children_lists(parents[b].tolist())
        n = int(accept_len[b])
        for i in range(1, n + 1):  # zero-mass drafts are never accepted
            prev, node = int(accept_nodes[b, i - 1]), int(accept_nodes[b, i])
            assert float(probs[b, prev, tokens[b, node]]) > 0.0
        last = int(accept_nodes[b, n])
        x = int(out_tokens[b, n])
        assert float(probs[b, last, x]) > 0.0  # the correction/bonus has target mass
        rejected = {int(tokens[b, c]) for c in kids[last]}
        residual = probs[b, last].double().clone()
        residual[list(rejected)] = 0.0
        if float(residual.sum()) > 0.0:
            assert x not in rejected  # never re-emits a rejected sibling
    ref = V.tree_accept_stochastic_torch(tokens, parents, probs, coins, final)
    for o, r in zip(out, ref):
        assert torch.equal(o.to(torch.int64), r)


# --------------------------------------------------------------------------------------------
# Stochastic: exact edge cases
# --------------------------------------------------------------------------------------------


def _rows(spec, Vocab=8):
    """Probability rows from {token: mass} dicts (float32)."""
    out = torch.zeros(len(spec), Vocab)
    for i, d in enumerate(spec):
        for k, v in d.items():
            out[i, k] = v
    return out


@pytest.mark.parametrize("fn", STOCH)
def test_stochastic_coin_zero_skips_zero_mass_sibling(fn):
    tokens = _t([[0, 3, 4], [0, 3, 3]])
    parents = _t([[-1, 0, 0], [-1, 0, -1]])
    probs = torch.stack([
        _rows([{0: 0.5, 4: 0.5}, {1: 1.0}, {6: 1.0}]),
        _rows([{4: 0.5, 5: 0.5}, {1: 1.0}, {1: 1.0}]),
    ])
    coins = torch.zeros(2, 3)
    final = torch.zeros(2)
    # 1: token 3 has no mass -> not accepted even at coin 0; node 2 is, bonus from its row.
    # 2: the only child has no mass -> rejected; the correction (coin 0) is the first token with
    #    residual mass (4), never the zero-mass 0..3.
    _check(fn(tokens, parents, probs, coins, final), [[0, 2, -1], [0, -1, -1]],
           [[4, 6, -1], [4, -1, -1]], [1, 0])


@pytest.mark.parametrize("fn", STOCH)
def test_stochastic_exact_cdf_boundaries(fn):
    tokens = _t([[0, 1, 2]] * 5)
    parents = _t([[-1, 0, 0]] * 5)
    probs = _rows([{1: 0.25, 2: 0.25, 5: 0.5}, {7: 1.0}, {6: 1.0}]).expand(5, 3, 8).contiguous()
    coins = torch.zeros(5, 3)
    coins[:, 0] = _f32([0.0, _below(0.25), 0.25, _below(0.5), 0.5])
    final = torch.zeros(5)
    _check(
        fn(tokens, parents, probs, coins, final),
        [[0, 1, -1], [0, 1, -1], [0, 2, -1], [0, 2, -1], [0, -1, -1]],
        [[1, 7, -1], [1, 7, -1], [2, 6, -1], [2, 6, -1], [5, -1, -1]],
        [1, 1, 1, 1, 0],
    )


@pytest.mark.parametrize("fn", STOCH)
def test_stochastic_all_rejected_correction_avoids_siblings(fn):
    B = 41
    tokens = _t([[0, 1, 2, 3]] * B)
    parents = _t([[-1, 0, 0, 0]] * B)
    probs = _rows([{1: 0.3, 2: 0.3, 3: 0.3, 6: 0.05, 7: 0.05}] + [{0: 1.0}] * 3)
    probs = probs.expand(B, 4, 8).contiguous()
    coins = torch.full((B, 4), _below(1.0))
    final = torch.linspace(0, 1, B)
    final[-1] = _below(1.0)
    _, out_tokens, accept_len = fn(tokens, parents, probs, coins, final)
    assert accept_len.tolist() == [0] * B
    emitted = out_tokens[:, 0].tolist()
    assert set(emitted) == {6, 7}  # both residual tokens reachable, nothing else
    assert emitted == sorted(emitted)  # inverse CDF: monotone in the final coin


@pytest.mark.parametrize("fn", STOCH)
def test_stochastic_leaf_bonus_uses_leaf_row(fn):
    # Root: node 1 (token 1) rejected at coin 0.75, node 2 (token 2, a leaf) accepted.
    # The leaf row puts mass on token 1, the sibling rejected one level up: it must still be
    # drawable (the rejected set belongs to the level that rejected it).
    tokens = _t([[0, 1, 2]] * 2)
    parents = _t([[-1, 0, 0]] * 2)
    probs = _rows([{1: 0.5, 2: 0.5}, {5: 1.0}, {1: 0.5, 3: 0.5}]).expand(2, 3, 8).contiguous()
    coins = _f32([[0.75, 0.0, 0.0]] * 2)
    final = _f32([0.0, 0.75])
    _check(fn(tokens, parents, probs, coins, final), [[0, 2, -1]] * 2, [[2, 1, -1], [2, 3, -1]],
           [1, 1])
    # Depth 2: root -> 1 -> 3 (leaf); bonus from node 3's row, coins of nodes 0 and 1 used.
    tokens = _t([[0, 1, 2, 4]])
    parents = _t([[-1, 0, 0, 1]])
    probs = _rows([{1: 0.5, 2: 0.5}, {4: 1.0}, {6: 1.0}, {7: 1.0}]).unsqueeze(0)
    _check(fn(tokens, parents, probs, _f32([[0.25, 0.5, 0.0, 0.0]]), _f32([0.5])),
           [[0, 1, 3, -1]], [[1, 4, 7, -1]], [2])


@pytest.mark.parametrize("fn", STOCH)
def test_stochastic_duplicate_siblings(fn):
    tokens = _t([[0, 1, 1, 2]] * 3)
    parents = _t([[-1, 0, 0, 0]] * 3)
    probs = _rows([{1: 0.25, 2: 0.25, 4: 0.5}, {5: 1.0}, {6: 1.0}, {7: 1.0}]).expand(3, 4, 8)
    coins = torch.zeros(3, 4)
    coins[:, 0] = _f32([0.125, 0.375, 0.75])
    # 0.125 -> node 1; 0.375 -> the duplicate (node 2) carries no extra mass, node 3 is accepted;
    # 0.75 -> all rejected, correction from {4} only.
    _check(fn(tokens, parents, probs.contiguous(), coins, torch.zeros(3)),
           [[0, 1, -1, -1], [0, 3, -1, -1], [0, -1, -1, -1]],
           [[1, 5, -1, -1], [2, 7, -1, -1], [4, -1, -1, -1]], [1, 1, 0])


def test_sample_residual_boundaries():
    row = _f32([0.25, 0.0, 0.25, 0.5, 0.0])
    cases = {0.0: 0, _below(0.25): 0, 0.25: 2, _below(0.5): 2, 0.5: 3, _below(1.0): 3}
    for coin, want in cases.items():
        assert V.sample_residual_torch(row, [], coin) == want, coin
    assert V.sample_residual_torch(row, [0], 0.0) == 2
    assert V.sample_residual_torch(row, [0, 2], 0.0) == 3
    assert V.sample_residual_torch(row, [0, 2, 3], 0.0) == 3  # no mass left: argmax fallback
    assert V.sample_residual_torch(row, [-1, 7], 0.25) == 2  # out-of-range ids are ignored
    # Residual mass smaller than the row's: the threshold is relative to what is left.
    # (residual [0, 1/8, 1/8, 1/4], total 1/2: coin 3/8 -> 3/16 lands in token 2, coin 1/2 -> 1/4
    # is token 2's upper boundary and goes to token 3).
    quarter = _f32([0.5, 0.125, 0.125, 0.25])
    assert [V.sample_residual_torch(quarter, [0], c) for c in (0.0, 0.375, 0.5)] == [1, 2, 3]


def test_chain_leviathan_edges():
    Vocab = 4
    p = _f32([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, 1.0]])
    q = _f32([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    drafts = _t([[0, 2]] * 4)
    coins = _f32([[_below(0.5), 0.0], [0.5, 0.0], [0.0, 0.0], [0.0, _below(1.0)]])
    out, n = V.chain_accept_leviathan(drafts, q.expand(4, 2, Vocab), p.expand(4, 3, Vocab),
                                      coins, _f32([0.0, 0.0, 0.0, 0.99]))
    # 1: u*q = 0.5-eps < 0.5 -> accept 0; then p = q -> accept 2; bonus from the last row (3).
    # 2: u*q = 0.5, not < 0.5 -> reject; residual max(p - q, 0) = {1: 0.5} -> 1.
    # 4: p = q accepts whatever the coin.
    assert out.tolist() == [[0, 2, 3], [1, -1, -1], [0, 2, 3], [0, 2, 3]]
    assert n.tolist() == [2, 0, 2, 2]
    # p(x) = 0 < q(x): rejected even at coin 0; residual max(p - q, 0) avoids the draft token.
    out, n = V.chain_accept_leviathan(_t([[2]]), _f32([[[0.0, 0.0, 1.0, 0.0]]]),
                                      _f32([[[0.0, 0.5, 0.0, 0.5], [1, 0, 0, 0]]]),
                                      _f32([[0.0]]), _f32([0.6]))
    assert out.tolist() == [[3, -1]] and n.tolist() == [0]
    # p = q but the token has mass in neither: rejected, zero residual -> fallback to p.
    out, n = V.chain_accept_leviathan(_t([[2]]), _f32([[[0.5, 0.5, 0.0, 0.0]]]),
                                      _f32([[[0.5, 0.5, 0.0, 0.0], [1, 0, 0, 0]]]),
                                      _f32([[0.0]]), _f32([0.75]))
    assert out.tolist() == [[1, -1]] and n.tolist() == [0]


def test_target_probs_nan_fails_closed_and_first_max():
    logits = torch.tensor([[1.0, float("nan"), 0.0, 2.0]])
    p = V.target_probs(logits, 0.7)
    assert float(p[0, 1]) == 0.0 and abs(float(p.sum()) - 1.0) < 1e-6
    ref = torch.softmax(torch.tensor([1.0, 0.0, 2.0]) / 0.7, 0)
    assert torch.allclose(p[0, [0, 2, 3]], ref)
    from phide.ops.reference.hash_noise import gumbel_choices_torch

    greedy = gumbel_choices_torch(torch.tensor([[1.0, 3.0, 3.0], [4.0, 0.0, 4.0]]), 0.0, 0, torch.tensor([0, 1]))
    assert greedy.tolist() == [1, 0]  # first max, like HF


# --------------------------------------------------------------------------------------------
# Seeded chi-square tests of the joint law of the first two emitted tokens
# --------------------------------------------------------------------------------------------

CHI2_B = 12000
NEG_B = 4000  # the mutants are off by far more than the correct verifier's noise
SEEDS = [0, 1, 2]


def _chi2_p(a, b, law):
    """p-value of emitted pairs (a, b) vs the joint law [V, V]; 0 if a zero-mass cell is hit."""
    Vocab = law.shape[0]
    obs = torch.bincount(a * Vocab + b, minlength=Vocab * Vocab).double()
    law = law.reshape(-1).double()
    if float(obs[law == 0].sum()) > 0:
        return 0.0
    keep = law > 0
    exp = law[keep] / law[keep].sum() * obs.sum()
    return float(chisquare(obs[keep].numpy(), exp.numpy()).pvalue)


def _tree_law(Vocab=6):
    """p1 [V] (token 3 has no mass) and the path-dependent p2 [V, V] (p2[a, (a+1) % V] = 0)."""
    g = torch.Generator().manual_seed(1234)
    p1 = _f32([0.22, 0.08, 0.30, 0.0, 0.25, 0.15])
    p2 = torch.rand(Vocab, Vocab, generator=g) ** 2 + 0.04
    p2[torch.arange(Vocab), (torch.arange(Vocab) + 1) % Vocab] = 0.0
    return p1, (p2 / p2.sum(1, keepdim=True)).float()


# (root children, offsets of the grandchildren tokens under a child with token a: (a + o) % V).
# The zero-mass tokens are proposed (3 at the root, a+1 below a) and the children miss the
# sampled token often, so the residual path runs at both levels.
TREE_CONFIGS = {
    "top2": ([2, 5], [1, 3]),
    "top3": ([3, 4, 1], [1, 2, 4]),
    "dup": ([2, 2, 0], [2, 2, 1]),  # duplicate sibling tokens at both levels
}


def _tree_batch(B, root_kids, offsets, p1, p2):
    """B identical depth-2 trees; node with token a after the root uses row p2[a]."""
    Vocab = p1.numel()
    toks, pars, rows = [0], [-1], [p1]
    for a in root_kids:
        toks.append(a), pars.append(0), rows.append(p2[a])
    for j, a in enumerate(root_kids):
        for o in offsets:
            toks.append((a + o) % Vocab), pars.append(1 + j)
            rows.append(torch.full((Vocab,), 1.0 / Vocab))
    N = len(toks)
    return (_t(toks).expand(B, N).contiguous(), _t(pars).expand(B, N).contiguous(),
            torch.stack(rows).expand(B, N, Vocab).contiguous())


def _second_step_tree(t1, offsets, p2):
    """Depth-1 trees rooted at each first token t1 [B'] (the next verification step)."""
    Vocab = p2.shape[0]
    Bp, k = t1.numel(), len(offsets)
    tokens = torch.cat([t1[:, None], (t1[:, None] + _t(offsets)[None, :]) % Vocab], 1)
    parents = _t([-1] + [0] * k).expand(Bp, k + 1).contiguous()
    probs = torch.full((Bp, k + 1, Vocab), 1.0 / Vocab)
    probs[:, 0] = p2[t1]
    return tokens, parents, probs


def _run_tree_pairs(fn, seed, cfg, coin_hook=None, resid_bug=False, B=CHI2_B):
    """First two emitted tokens of B requests sharing one tree (a second step when needed)."""
    root_kids, offsets = TREE_CONFIGS[cfg]
    p1, p2 = _tree_law()
    g = torch.Generator().manual_seed(seed)
    tokens, parents, probs = _tree_batch(B, root_kids, offsets, p1, p2)
    coins = torch.rand(tokens.shape, generator=g)
    if coin_hook is not None:
        coins = coin_hook(coins)
    final = torch.rand(B, generator=g)
    _, out, n = (o.to(torch.int64) for o in fn(tokens, parents, probs, coins, final))
    t1, t2 = out[:, 0].clone(), out[:, 1].clone()
    if resid_bug:  # mutant: the correction ignores the rejected siblings (drawn from all of p1)
        redo = n == 0
        t1[redo] = torch.multinomial(p1, int(redo.sum()), replacement=True, generator=g)
    more = n == 0
    if more.any():
        tk, pr, pb = _second_step_tree(t1[more], offsets, p2)
        c2 = torch.rand(tk.shape, generator=g)
        t2[more] = fn(tk, pr, pb, c2, torch.rand(tk.shape[0], generator=g))[1][:, 0].to(torch.int64)
    assert bool((t1 >= 0).all() and (t2 >= 0).all())
    return t1, t2, (p1[:, None] * p2).double(), n


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cfg", list(TREE_CONFIGS))
def test_chi2_tree_joint_law(cfg, seed):
    t1, t2, law, n = _run_tree_pairs(V.tree_accept_stochastic_torch, seed, cfg)
    counts = torch.bincount(n, minlength=3)
    assert (counts > CHI2_B // 50).all(), counts  # every path length (incl. residual) exercised
    p = _chi2_p(t1, t2, law)
    print(f"chi2 tree {cfg} seed {seed}: p = {p:.4g}  accept_len counts {counts.tolist()}")
    assert p > 1e-3


def test_chi2_tree_joint_law_via_ops():
    t1, t2, law, _ = _run_tree_pairs(ops.tree_accept_stochastic, 7, "top3")
    p = _chi2_p(t1, t2, law)
    print(f"chi2 tree top3 via phide.ops seed 7: p = {p:.4g}")
    assert p > 1e-3


def test_chi2_tree_negative_controls():
    fn = V.tree_accept_stochastic_torch
    p1, p2 = _tree_law()
    law = (p1[:, None] * p2).double()
    # (a) accept every draft: the first child, then its first child (a cell with mass).
    root_kids, offsets = TREE_CONFIGS["dup"]
    a = torch.full((NEG_B,), root_kids[0])
    assert float(law[root_kids[0], (root_kids[0] + offsets[0]) % 6]) > 0
    p_all = _chi2_p(a, (a + offsets[0]) % 6, law)
    # (b) the correction forgets to remove the rejected siblings.
    t1, t2, _, _ = _run_tree_pairs(fn, 0, "top2", resid_bug=True, B=NEG_B)
    p_resid = _chi2_p(t1, t2, law)
    # (c) one coin reused at every level (coins of the children = the root's coin): each
    #     marginal step still looks fine, only the joint law is wrong.
    def same_coin(c):
        return c[:, :1].expand_as(c).contiguous()
    t1, t2, _, _ = _run_tree_pairs(fn, 0, "top2", coin_hook=same_coin, B=NEG_B)
    p_coin = _chi2_p(t1, t2, law)
    print(f"negative controls: accept-all {p_all:.3g}, residual bug {p_resid:.3g}, "
          f"same coin {p_coin:.3g}")
    assert p_all < 1e-6 and p_resid < 1e-6 and p_coin < 1e-6


# Chain (Leviathan) with drafts SAMPLED from q != p.
def _chain_law(Vocab=5):
    p1 = _f32([0.40, 0.25, 0.20, 0.10, 0.05])
    q1 = _f32([0.10, 0.00, 0.20, 0.30, 0.40])  # token 1 can only come from the residual
    g = torch.Generator().manual_seed(99)
    p2 = torch.rand(Vocab, Vocab, generator=g) + 0.1
    p2[torch.arange(Vocab), (torch.arange(Vocab) + 2) % Vocab] = 0.0  # q > 0 = p there
    p2 = p2 / p2.sum(1, keepdim=True)
    q2 = 0.5 / Vocab + 0.5 * p2.flip(1)  # flattened, reversed
    return p1, q1, p2.float(), q2.float()


def _run_chain_pairs(seed, K, verifier=V.chain_accept_leviathan, B=CHI2_B):
    p1, q1, p2, q2 = _chain_law()
    Vocab = p1.numel()
    g = torch.Generator().manual_seed(seed)
    uni = torch.full((Vocab,), 1.0 / Vocab)
    q_tail = _f32([0.3, 0.3, 0.2, 0.1, 0.1])
    x1 = torch.multinomial(q1, B, replacement=True, generator=g)
    x2 = torch.multinomial(q2[x1], 1, generator=g)[:, 0]
    tail = [torch.multinomial(q_tail, B, replacement=True, generator=g) for _ in range(K - 2)]
    drafts = [x1, x2] + tail
    drafts = torch.stack(drafts, 1)
    dq = torch.stack([q1.expand(B, Vocab), q2[x1]] + [q_tail.expand(B, Vocab)] * (K - 2), 1)
    tp = torch.stack([p1.expand(B, Vocab), p2[x1]] + [uni.expand(B, Vocab)] * (K - 1), 1)
    out, n = verifier(drafts, dq, tp, torch.rand(B, K, generator=g), torch.rand(B, generator=g))
    t1, t2 = out[:, 0].clone(), out[:, 1].clone()
    more = n == 0
    if more.any():  # next step: a one-token chain after the correction t1
        c = t1[more]
        Bp = c.numel()
        y = torch.multinomial(q2[c], 1, generator=g)
        out2, _ = verifier(y, q2[c][:, None], torch.stack([p2[c], uni.expand(Bp, Vocab)], 1),
                           torch.rand(Bp, 1, generator=g), torch.rand(Bp, generator=g))
        t2[more] = out2[:, 0]
    return t1, t2, (p1[:, None] * p2).double(), n


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("K", [2, 3])
def test_chi2_chain_leviathan_joint_law(K, seed):
    t1, t2, law, n = _run_chain_pairs(seed, K)
    counts = torch.bincount(n, minlength=K + 1)
    assert (counts[:2] > CHI2_B // 20).all(), counts
    p = _chi2_p(t1, t2, law)
    print(f"chi2 chain K={K} seed {seed}: p = {p:.4g}  accept_len counts {counts.tolist()}")
    assert p > 1e-3


def test_chi2_chain_negative_controls():
    def accept_all(drafts, dq, tp, coins, final):
        out = torch.cat([drafts, torch.zeros_like(drafts[:, :1])], 1)
        return out, torch.full((drafts.shape[0],), drafts.shape[1])

    p_all = _chi2_p(*_run_chain_pairs(0, 2, accept_all, B=NEG_B)[:3])
    mutant = _resample_from_p(V.chain_accept_leviathan)
    p_resid = _chi2_p(*_run_chain_pairs(0, 2, mutant, B=NEG_B)[:3])
    print(f"chain negative controls: accept-all {p_all:.3g}, residual from p {p_resid:.3g}")
    assert p_all < 1e-6 and p_resid < 1e-6


def _resample_from_p(verifier):
    """Mutant of a chain verifier: the correction after a rejection is drawn from p itself."""

    def run(drafts, dq, tp, coins, final):
        out, n = verifier(drafts, dq, tp, coins, final)
        B, K = drafts.shape
        rej = n < K
        rows = tp[torch.arange(B), n.clamp(max=K - 1)].double()
        cdf = rows.cumsum(-1)
        redraw = torch.searchsorted(cdf, (final.double() * cdf[:, -1])[:, None], right=True)[:, 0]
        out = out.clone()
        out[rej, n[rej]] = redraw[rej].clamp(max=tp.shape[-1] - 1)
        return out, n

    return run


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
