"""Batched verification: B requests with different prefixes and trees in one target forward,
one batched acceptance walk and one batched KV commit give what each request gets alone."""

import torch
from transformers import LlamaForCausalLM

from phide import ops
from phide.models.loading import load_llama
from phide.models.tiny import tiny_llama_config
from phide.ops.reference.kv_commit import commit_accepted_path
from phide.speculation.tree import Tree, stack_trees, tree_layout

TREES = [
    Tree([5, 6, 7], [-1, 0, 1]),
    Tree([9, 1, 2, 3, 4, 8], [-1, 0, 0, 1, 1, 3]),
    Tree([3], [-1]),
    Tree([4, 10, 11, 12, 13, 14, 15, 16], [-1, 0, 0, 0, 1, 2, 4, 6]),
    Tree([7, 2, 3, 5], [-1, 0, 1, 0]),
]


def _prefill(model, cache_rows, prefix):
    P = prefix.shape[1]
    pos = torch.arange(P).unsqueeze(0)
    model(prefix, positions=pos, cache=cache_rows, slots=pos,
          attn_mask=torch.ones(P, P, dtype=torch.bool).tril().unsqueeze(0), kv_len=P)


def test_batched_verify_matches_single(tmp_path):
    torch.manual_seed(0)
    hf = LlamaForCausalLM(tiny_llama_config(50, hidden=48, layers=2, heads=4, kv_heads=2, intermediate=64,
                                            init_std=0.3)).eval()
    hf.save_pretrained(tmp_path)
    model = load_llama(tmp_path)
    B, N = len(TREES), 8
    g = torch.Generator().manual_seed(1)
    prefixes = [torch.randint(0, 50, (1, L), generator=g) for L in (3, 9, 1, 6, 12)]
    lens = [p.shape[1] for p in prefixes]

    # Reference: every request alone.
    single = []
    for tree, prefix in zip(TREES, prefixes):
        cache = model.new_cache(1, 32)
        _prefill(model, cache, prefix)
        one_tree = tree_layout([tree], [prefix.shape[1]])
        pos, slots, mask = one_tree.positions, one_tree.slots, one_tree.mask()
        logits = model.logits(model(torch.tensor([tree.tokens]), positions=pos, cache=cache, slots=slots,
                                    attn_mask=mask, kv_len=prefix.shape[1] + len(tree)))[0]
        single.append((logits, cache))

    # Batched: one cache, per-request prefix lengths, one forward for all trees.
    cache = model.new_cache(B, 32)
    for b, prefix in enumerate(prefixes):
        one = model.new_cache(1, 32)
        _prefill(model, one, prefix)
        cache.k[:, b], cache.v[:, b] = one.k[:, 0], one.v[:, 0]
    tokens, parents = stack_trees(TREES, N)
    layout = tree_layout(TREES, lens, N)
    pos, slots, mask = layout.positions, layout.slots, layout.mask()
    logits = model.logits(model(tokens, positions=pos, cache=cache, slots=slots, attn_mask=mask,
                                kv_len=mask.shape[-1]))
    for b, tree in enumerate(TREES):
        torch.testing.assert_close(logits[b, : len(tree)], single[b][0], atol=1e-5, rtol=1e-5)

    choice = torch.argmax(logits, -1)
    # Make some drafts right: set each tree's first child to the target's choice at its parent.
    for b, tree in enumerate(TREES):
        for i in range(1, len(tree)):
            if i % 2 == 1:
                tokens[b, i] = choice[b, tree.parents[i]]
    # (Re-verify with the edited tokens so choices correspond to the edited tree.)
    cache2 = model.new_cache(B, 32)
    cache2.k.copy_(cache.k), cache2.v.copy_(cache.v)
    logits = model.logits(model(tokens, positions=pos, cache=cache2, slots=slots, attn_mask=mask,
                                kv_len=mask.shape[-1]))
    choice = torch.argmax(logits, -1)
    nodes, out, n_acc = ops.accept_path(tokens, parents, choice)
    assert n_acc.max() >= 1
    base = torch.tensor(lens)
    commit_accepted_path(cache2.k, cache2.v, base, nodes, n_acc)
    for b in range(B):
        single_nodes, single_out, single_n = ops.accept_path(tokens[b:b + 1, : len(TREES[b])],
                                                                    parents[b:b + 1, : len(TREES[b])],
                                                                    choice[b:b + 1, : len(TREES[b])])
        a = int(single_n[0])
        assert a == int(n_acc[b]) and out[b, : a + 1].tolist() == single_out[0, : a + 1].tolist()
        path = nodes[b, : a + 1]
        hf_in = torch.cat([prefixes[b][0], tokens[b, path]])
        # The committed cache continues exactly like a fresh forward over prefix + accepted path.
        L = lens[b] + a + 1
        p = torch.tensor([[L]])
        t = torch.tensor([[int(out[b, a])]])
        sub = model.new_cache(1, 32)
        sub.k[:, 0], sub.v[:, 0] = cache2.k[:, b], cache2.v[:, b]
        h = model(t, positions=p, cache=sub, slots=p, attn_mask=torch.ones(1, 1, L + 1, dtype=torch.bool),
                  kv_len=L + 1)
        ref_after = hf(torch.cat([hf_in, t[0]]).unsqueeze(0)).logits[0, -1]
        torch.testing.assert_close(model.logits(h)[0, 0], ref_after, atol=1e-5, rtol=1e-5)
