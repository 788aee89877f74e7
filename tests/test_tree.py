"""Tree structure, masks, stacking, and EAGLE-2 growth."""

import pytest
import torch

from phide.errors import DraftFault
from phide.speculation.tree import Tree, TreeGrower, ancestor_mask, chain, stack_trees, tree_layout


def test_chain_and_depths():
    t = chain(7, [1, 2, 3])
    assert t.tokens == [7, 1, 2, 3] and t.parents == [-1, 0, 1, 2]
    assert t.depths() == [0, 1, 2, 3] and t.max_depth() == 3


def test_rejects_unsorted_tree():
    with pytest.raises(ValueError):
        Tree(tokens=[1, 2, 3], parents=[-1, 2, 0])


def test_ancestor_mask_and_padding():
    parents = [-1, 0, 0, 1, -1]  # node 4 is padding
    m = ancestor_mask(parents)
    expect = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [1, 1, 0, 1, 0],
        [0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(m, expect)


def test_tree_layout_places_the_tree_after_its_prefix():
    t = Tree(tokens=[5, 6, 7, 8], parents=[-1, 0, 0, 2])
    layout = tree_layout([t], [10])
    pos, slots, mask = layout.positions, layout.slots, layout.mask()
    assert pos.tolist() == [[10, 11, 11, 12]]
    assert slots.tolist() == [[10, 11, 12, 13]]
    assert mask.shape == (1, 4, 14) and mask[0, :, :10].all()
    assert mask[0, 3, 10:].tolist() == [True, False, True, True]


def test_stack_trees_pads_with_inert_nodes():
    tok, par = stack_trees([chain(1, [2]), Tree([3, 4, 5], [-1, 0, 0])], 4)
    assert tok.shape == (2, 4) and par[0].tolist() == [-1, 0, -1, -1]
    with pytest.raises(ValueError):
        stack_trees([chain(1, [2, 3, 4, 5])], 3)


def _fake_expand(grower, table):
    """Deterministic draft: next-token log-probs depend on the candidate's token only."""
    def expand(chosen):
        return torch.stack([table[grower.cands[c].token] for c in chosen])
    return expand


def test_grower_keeps_best_ancestor_closed_nodes():
    V = 12
    g = torch.Generator().manual_seed(3)
    table = torch.log_softmax(torch.randn(V, V, generator=g) * 3, dim=-1)
    grower = TreeGrower(0, table[0], topk=3, max_depth=4)
    while grower.can_grow():
        grower.step(_fake_expand(grower, table))
    assert grower.expanded == 3 * 3  # depth 4: levels 2..4 expanded 3 nodes each
    tree = grower.build(budget=10)
    assert len(tree) == 10
    depths = tree.depths()
    for i in range(1, len(tree)):
        p = tree.parents[i]
        assert 0 <= p < i and depths[i] == depths[p] + 1
        assert tree.scores[i] <= tree.scores[p] + 1e-6  # a child never outranks its parent
    # Siblings in descending draft score; kept nodes are the best by score.
    for p in range(len(tree)):
        kids = [i for i in range(1, len(tree)) if tree.parents[i] == p]
        assert [tree.scores[k] for k in kids] == sorted((tree.scores[k] for k in kids), reverse=True)
    kept = sorted(tree.scores[1:], reverse=True)
    all_scores = sorted((c.score for c in grower.cands), reverse=True)
    assert kept == pytest.approx(all_scores[:9])
    # Every sibling set has distinct tokens (a duplicate could never be accepted: the walk takes
    # the first sibling whose token is the target's choice).
    for p in range(len(tree)):
        kids = [tree.tokens[i] for i in range(1, len(tree)) if tree.parents[i] == p]
        assert len(kids) == len(set(kids))


def test_grower_chain_with_topk_one():
    V = 8
    table = torch.full((V, V), -20.0)
    for t in range(V):
        table[t, (t + 1) % V] = 0.0
    grower = TreeGrower(0, table[0], topk=1, max_depth=5)
    while grower.can_grow():
        grower.step(_fake_expand(grower, table))
    tree = grower.build(budget=100)
    assert tree.tokens == [0, 1, 2, 3, 4, 5] and tree.parents == [-1, 0, 1, 2, 3, 4]


def test_grower_ties_never_orphan_a_child():
    """log-prob 0 children tie with their parent's score: the parent must still come first."""
    V = 4
    table = torch.log_softmax(torch.tensor([[0.0, 50.0, -50.0, -50.0]] * V), dim=-1)
    grower = TreeGrower(0, table[0], topk=2, max_depth=6)
    while grower.can_grow():
        grower.step(_fake_expand(grower, table))
    for budget in range(2, 12):
        tree = grower.build(budget)
        assert all(tree.parents[i] < i for i in range(1, len(tree)))


def test_grower_nan_is_a_draft_fault():
    with pytest.raises(DraftFault):
        TreeGrower(0, torch.full((5,), float("nan")), topk=2, max_depth=3)
