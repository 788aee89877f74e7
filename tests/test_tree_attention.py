"""Tree-verify attention: the torch twin against an explicit-loop reference and the decoder's
dense mask, the Triton kernel (interpreted on CPU) against the twin, and the engine with
PHIDE_OPS=triton against the twins."""

from kernel_marks import DEVICE, needs_interpreter, needs_triton  # first: sets TRITON_INTERPRET

import pytest  # noqa: E402
import torch  # noqa: E402

from phide.speculation.tree import Tree, stack_trees, tree_layout  # noqa: E402
from phide.ops.reference.tree_attention import (MAX_TREE_NODES, ancestor_bits, tree_attention_torch,  # noqa: E402
                                                tree_visibility)
from ops_choice import use_ops  # noqa: E402


# Kernel vs twin, per dtype (atol, rtol): fp32 differs by summation order only; fp16/bf16 also
# round P to the input dtype before P @ V (as flash attention does), so they sit about one output
# ulp apart (bf16: 2**-8 relative; outputs here reach |3|).
TOLERANCES = {torch.float32: (2e-5, 2e-5), torch.float16: (3e-3, 3e-3), torch.bfloat16: (2e-2, 1e-2)}


def _random_parents(n, gen):
    return [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]


def _batch(B, N, Hq, Hkv, D, gen, dtype=torch.float32, sizes=None, prefixes=None, gaps=None):
    """Random q/k/v and a batch of different trees padded to N nodes. Returns a dict with the
    op's arguments plus `parents` (per request, unpadded) for the loop reference."""
    sizes = sizes or [N] * B
    prefixes = prefixes or [int(torch.randint(0, 40, (1,), generator=gen)) for _ in range(B)]
    gaps = gaps or [0] * B  # rows between the prefix and the tree nobody may see
    parents = [_random_parents(n, gen) for n in sizes]
    starts = [p + g for p, g in zip(prefixes, gaps)]
    S = max(s + N for s in starts) + 3
    padded = [p + [-1] * (N - len(p)) for p in parents]
    return dict(
        q=torch.randn(B, Hq, N, D, generator=gen).to(dtype),
        k_cache=torch.randn(B, Hkv, S, D, generator=gen).to(dtype),
        v_cache=torch.randn(B, Hkv, S, D, generator=gen).to(dtype),
        prefix_len=torch.tensor(prefixes),
        tree_start=torch.tensor(starts),
        ancestors=torch.tensor([ancestor_bits(p) for p in padded], dtype=torch.int64),
        n_nodes=torch.tensor(sizes),
        parents=parents,
    )


def _args(batch, device="cpu"):
    return {k: v.to(device) for k, v in batch.items() if k != "parents"}


def _loop_reference(batch, scale=None):
    """Explicit loops in float64 over requests, heads and nodes; visibility from parent lists."""
    q, k, v = (batch[n].double() for n in ("q", "k_cache", "v_cache"))
    B, Hq, N, D = q.shape
    G = Hq // k.shape[1]
    scale = D ** -0.5 if scale is None else scale
    out = torch.zeros_like(q)
    for b, parents in enumerate(batch["parents"]):
        start, prefix = int(batch["tree_start"][b]), int(batch["prefix_len"][b])
        for i in range(len(parents)):
            chain, j = [], i
            while j >= 0:
                chain.append(j)
                j = parents[j]
            rows = list(range(prefix)) + [start + j for j in sorted(chain)]
            for h in range(Hq):
                keys, vals = k[b, h // G, rows], v[b, h // G, rows]
                p = torch.softmax(keys @ q[b, h, i] * scale, dim=0)
                out[b, h, i] = p @ vals
    return out


def test_ancestor_bits_use_all_64_bits():
    chain64 = [-1] + list(range(63))
    bits = ancestor_bits(chain64)
    assert bits[0] == 1 and bits[5] == 0b111111 and bits[63] == -1  # every bit set
    assert ancestor_bits([-1, 0, -1, 1]) == [1, 3, 4, 11]  # node 2 is padding: only itself
    with pytest.raises(ValueError):
        ancestor_bits([-1] + list(range(64)))


def test_twin_matches_loop_reference():
    gen = torch.Generator().manual_seed(0)
    batch = _batch(5, 13, 8, 2, 80, gen, sizes=[13, 1, 5, 13, 9], prefixes=[0, 7, 33, 20, 2],
                   gaps=[0, 0, 4, 0, 1])
    got = tree_attention_torch(**_args(batch))
    ref = _loop_reference(batch)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)
    pad = torch.arange(13)[None, :] >= batch["n_nodes"][:, None]
    assert (got.permute(0, 2, 1, 3)[pad] == 0).all()  # padding nodes are zero
    # An explicit scale, and the 64-node chain whose last node has bit 63 set.
    torch.testing.assert_close(tree_attention_torch(**_args(batch), scale=0.3).double(),
                               _loop_reference(batch, scale=0.3), atol=1e-5, rtol=1e-5)
    chain = _batch(1, 64, 2, 1, 16, gen, prefixes=[5])
    chain["parents"] = [[-1] + list(range(63))]
    chain["ancestors"] = torch.tensor([ancestor_bits(chain["parents"][0])])
    torch.testing.assert_close(tree_attention_torch(**_args(chain)).double(), _loop_reference(chain),
                               atol=1e-5, rtol=1e-5)


def test_structured_layout_is_the_dense_mask():
    trees = [Tree([1, 2, 3, 4], [-1, 0, 0, 2]), Tree([5], [-1]), Tree([6, 7, 8], [-1, 0, 1])]
    lens, n = [3, 9, 0], 5
    layout = tree_layout(trees, lens, n)
    mask, ta = layout.mask(), layout.tree_attention()
    assert ta.n_nodes.tolist() == [4, 1, 3] and torch.equal(ta.tree_start, ta.prefix_len)
    assert torch.equal(tree_visibility(ta.prefix_len, ta.tree_start, ta.ancestors, mask.shape[2]), mask)


def _tiny_model():
    from phide.models.llama import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=80, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=20)
    return LlamaModel(cfg).eval()


def _decoder_tree_vs_dense(model, monkeypatch, backend):
    """Prefill two requests of different lengths, then verify two different trees with the dense
    mask and with the structured TreeAttention; returns both logits and the real-node mask."""
    use_ops(monkeypatch, backend)
    trees = [Tree([3, 4, 5, 6, 7], [-1, 0, 0, 1, 3]), Tree([8, 9, 10], [-1, 0, 0])]
    lens, n = [6, 11], 5
    tokens, _ = stack_trees(trees, n)
    layout = tree_layout(trees, lens, n)
    pos, slots, mask = layout.positions, layout.slots, layout.mask()
    out = []
    for tree_attn in (None, layout.tree_attention()):
        cache = model.new_cache(2, 20)
        prompt = torch.arange(22).view(2, 11) % 60
        causal = torch.ones(11, 11, dtype=torch.bool).tril().expand(2, 11, 11).clone()
        causal[0, :, 6:] = False  # request 0 has a 6-token prefix
        p = torch.arange(11).expand(2, 11)
        with torch.inference_mode():
            model(prompt, positions=p, cache=cache, slots=p, attn_mask=causal, kv_len=11)
            hidden = model(tokens, positions=pos, cache=cache, slots=slots,
                           attn_mask=None if tree_attn else mask, kv_len=mask.shape[2], tree=tree_attn)
            out.append(model.logits(hidden))
    real = torch.arange(n)[None, :] < torch.tensor([len(t) for t in trees])[:, None]
    return out, real


def test_decoder_twin_path_is_bit_identical_to_dense_mask(monkeypatch):
    model = _tiny_model()
    (dense, structured), real = _decoder_tree_vs_dense(model, monkeypatch, "torch")
    assert torch.equal(dense[real], structured[real])
    zero = torch.zeros(1, 1, dtype=torch.int64)
    with pytest.raises(ValueError):  # neither a mask nor a tree
        model(zero, positions=zero, cache=model.new_cache(1, 2), slots=zero, attn_mask=None, kv_len=1)


@needs_triton
@needs_interpreter
def test_decoder_triton_path_matches_dense_mask(monkeypatch):
    import phide.triton_kernels.tree_attention as kernel

    calls = []
    real_fn = kernel.tree_attention_triton
    monkeypatch.setattr(kernel, "tree_attention_triton", lambda *a, **kw: calls.append(1) or real_fn(*a, **kw))
    (dense, structured), real = _decoder_tree_vs_dense(_tiny_model(), monkeypatch, "triton")
    assert len(calls) == 2  # one per layer
    torch.testing.assert_close(structured[real], dense[real], atol=1e-4, rtol=1e-4)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B", [1, 5])
def test_kernel_matches_twin(dtype, B):
    from phide.triton_kernels.tree_attention import tree_attention_triton

    gen = torch.Generator().manual_seed(B)
    if B == 1:
        batch = _batch(1, 13, 8, 2, 80, gen, dtype, prefixes=[70])
    else:
        batch = _batch(5, 13, 8, 2, 80, gen, dtype, sizes=[13, 1, 5, 13, 9], prefixes=[0, 7, 33, 20, 2],
                       gaps=[0, 0, 4, 0, 1])
    args = _args(batch, DEVICE)
    ref = tree_attention_torch(**args)
    atol, rtol = TOLERANCES[dtype]
    for splits in (None, 1, 3):  # 3 splits leave some empty for the short prefixes
        got = tree_attention_triton(**args, num_splits=splits)
        assert got.dtype == dtype and got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=atol, rtol=rtol, msg=f"splits={splits}")
    pad = (torch.arange(13)[None, :] >= batch["n_nodes"][:, None]).to(DEVICE)
    assert (got.permute(0, 2, 1, 3)[pad] == 0).all()


@needs_triton
def test_kernel_strided_views_bit63_and_m_blocks():
    from phide.triton_kernels.tree_attention import tree_attention_triton

    gen = torch.Generator().manual_seed(7)
    # The decoder's layouts: q transposed from [B, T, H, D], the cache sliced to kv_len.
    batch = _batch(2, 13, 4, 4, 24, gen, prefixes=[9, 30])
    q = batch["q"].transpose(1, 2).contiguous().transpose(1, 2)
    wide_k = torch.randn(2, 4, 80, 24, generator=gen)
    wide_k[:, :, :batch["k_cache"].shape[2]] = batch["k_cache"]
    args = {**_args(batch, DEVICE), "q": q.to(DEVICE), "k_cache": wide_k.to(DEVICE)[:, :, : batch["k_cache"].shape[2]]}
    torch.testing.assert_close(tree_attention_triton(**args), tree_attention_torch(**args), atol=2e-5, rtol=2e-5)
    # 64-node chain (bit 63) with G = 3: M = 192 rows, three M blocks.
    chain = _batch(1, 64, 6, 2, 16, gen, prefixes=[11])
    chain["ancestors"] = torch.tensor([ancestor_bits([-1] + list(range(63)))])
    torch.testing.assert_close(tree_attention_triton(**_args(chain, DEVICE), num_splits=2),
                               tree_attention_torch(**_args(chain, DEVICE)), atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError):
        tree_attention_triton(**{**_args(chain), "q": torch.zeros(1, 6, 65, 16)})


@needs_triton
@needs_interpreter
def test_engine_greedy_tokens_same_with_triton_attention_and_topk(tiny_pair, monkeypatch):
    """PHIDE_OPS=triton routes the target's tree verification through the attention kernel and
    the draft's tree growth through the top-k kernel; the greedy tokens equal the twins'."""
    import phide.triton_kernels.tree_attention as attention_kernel
    import phide.triton_kernels.tree_topk as topk_kernel
    from phide.engine import Engine, Request, SpecConfig
    from phide.models.loading import load_llama

    calls = {"attention": 0, "topk": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(attention_kernel, "tree_attention_triton",
                        counting("attention", attention_kernel.tree_attention_triton))
    monkeypatch.setattr(topk_kernel, "tree_topk_triton", counting("topk", topk_kernel.tree_topk_triton))
    engine = Engine(load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"]), eos_token_ids=[],
                    spec=SpecConfig(topk=3, depth=4, budget=13, window_budget=24))
    ids = [1, 17, 42, 99, 5]
    ref, got = {}, {}
    for backend, out in (("torch", ref), ("triton", got)):
        use_ops(monkeypatch, backend)
        for mode in ("target-only", "sequential"):
            out[mode] = engine.generate(Request(prompt_ids=ids, max_new_tokens=8), mode).token_ids
        if backend == "torch":
            assert calls == {"attention": 0, "topk": 0}
    assert got == ref and ref["sequential"] == ref["target-only"]
    assert calls["attention"] > 0 and calls["topk"] > 0


# ---------------------------------------------------------------------------------------------
# A node's row does not depend on the size of the tree it is verified in (issue 14, item 3): a
# decode (N = 1) and a tree verify over the same prefix reduce the prefix in the same chunks with
# the same tiles, so greedy tokens match across modes as often as the arithmetic allows.


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [64, 80, 128, 256])
def test_split_plan_and_tiles_do_not_depend_on_tree_size(dtype, D):
    from phide.triton_kernels.tree_attention import attention_config

    for prefix in (0, 1, 255, 256, 257, 2048, 4095, 4097, 8192, 100_000):
        configs = {n: attention_config(dtype, D, n, prefix + n) for n in (1, 24, 64)}
        assert configs[1] == configs[24] == configs[64], prefix  # splits, rows, tiles, warps, stages
        cfg = configs[1]
        assert cfg.split_rows % cfg.block_n == 0 and cfg.splits * cfg.split_rows >= prefix
        assert cfg.block_t == MAX_TREE_NODES
    assert attention_config(dtype, D, 1, 2049).splits == 8  # 256-row chunks of a 2048-row prefix


@needs_triton
def test_launches_for_a_decode_and_a_tree_match():
    """What the launcher hands Triton for N = 1 and N = 24 over one prefix: the same grid split
    axis, chunk rows and compiled variant (constexprs, warps, stages)."""
    from phide.triton_kernels.precompile import _attention_inputs
    from phide.triton_kernels.tree_attention import tree_attention_launches

    for dtype in (torch.bfloat16, torch.float32):
        plans = {}
        for n in (1, 24):
            inputs = _attention_inputs(torch.device("meta"), dtype, 1, 32, 8, n, 128, 2048)
            prefix, tail = tree_attention_launches(**inputs)[1]
            split_rows = prefix.args[10]
            plans[n] = (prefix.grid[2], split_rows, prefix.options, tail.options, tail.args[14])  # tail: n_splits
        assert plans[1] == plans[24], dtype
        assert plans[1][:2] == (8, 256)


def _root_alone_and_in_tree(dtype, N, prefix, Hq=8, Hkv=2, D=80, seed=3):
    """Outputs of the root node verified alone (N = 1) and as node 0 of an N-node tree, with the
    same prefix, q and KV rows: [B=1, Hq, D] each."""
    from phide.triton_kernels.tree_attention import tree_attention_triton

    gen = torch.Generator().manual_seed(seed)
    S = prefix + N
    k = torch.randn(1, Hkv, S, D, generator=gen).to(dtype)
    v = torch.randn(1, Hkv, S, D, generator=gen).to(dtype)
    q = torch.randn(1, Hq, N, D, generator=gen).to(dtype)
    parents = _random_parents(N, gen)
    pos = dict(prefix_len=torch.tensor([prefix]), tree_start=torch.tensor([prefix]))
    tree = tree_attention_triton(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), **{n: t.to(DEVICE) for n, t in pos.items()},
                                 ancestors=torch.tensor([ancestor_bits(parents)]).to(DEVICE),
                                 n_nodes=torch.tensor([N]).to(DEVICE))
    # Alone: the cache ends right after the root's row (the decoder slices it to kv_len).
    alone = tree_attention_triton(q[:, :, :1].to(DEVICE), k[:, :, : prefix + 1].to(DEVICE),
                                  v[:, :, : prefix + 1].to(DEVICE), **{n: t.to(DEVICE) for n, t in pos.items()},
                                  ancestors=torch.tensor([[1]]).to(DEVICE), n_nodes=torch.tensor([1]).to(DEVICE))
    return alone[:, :, 0], tree[:, :, 0]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_node_alone_and_in_a_tree_is_bitwise_identical(dtype):
    # 600 prefix rows: three 256-row chunks (the last partial); G = 4, so 24 nodes are 96 rows in
    # two or three M blocks while the decode has 4 rows in one.
    for N in (24, 64):
        alone, in_tree = _root_alone_and_in_tree(dtype, N, prefix=600)
        assert torch.equal(alone, in_tree), N
    # Chunks sized from S = prefix + N would split 560 prefix rows at 192 for the decode and at
    # 256 for the tree; sized from the prefix, both split at 256.
    alone, in_tree = _root_alone_and_in_tree(dtype, 24, prefix=560, seed=4)
    assert torch.equal(alone, in_tree)


@needs_triton
def test_kernel_prefix_past_the_planned_chunks():
    """Padding nodes may lie past S, so a request's prefix can reach past S - N (the rows the
    split plan covers): the last chunk takes the rest."""
    from phide.triton_kernels.tree_attention import attention_config, tree_attention_triton

    gen = torch.Generator().manual_seed(11)
    N, S = 13, 512 + 13
    cfg = attention_config(torch.float32, 32, N, S)
    assert cfg.splits * cfg.split_rows == 512  # request 0's prefix is 520 rows
    batch = _batch(2, N, 4, 2, 32, gen, sizes=[5, 13], prefixes=[520, 300])
    batch["k_cache"], batch["v_cache"] = (t[:, :, :S].contiguous() for t in (batch["k_cache"], batch["v_cache"]))
    args = _args(batch, DEVICE)
    torch.testing.assert_close(tree_attention_triton(**args), tree_attention_torch(**args), atol=2e-5, rtol=2e-5)
