"""phide's owned decoder against transformers' LlamaForCausalLM (fp32, tight tolerance)."""

import pytest
import torch
from transformers import LlamaForCausalLM

from phide.errors import PhideError
from phide.models.loading import load_llama
from phide.models.tiny import tiny_llama_config
from phide.speculation.tree import Tree, tree_layout

CONFIGS = {
    "gqa": dict(heads=4, kv_heads=2),
    "mha": dict(heads=4, kv_heads=4),
    "mqa_tied_bias": dict(heads=4, kv_heads=1, tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
    "llama3_rope": dict(heads=4, kv_heads=2, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
    "linear_rope_headdim": dict(heads=2, kv_heads=1, head_dim=40,
                                rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
}


def _save(tmp_path, name, **kw):
    torch.manual_seed(0)
    hf = LlamaForCausalLM(tiny_llama_config(211, hidden=80, layers=2, intermediate=96, **kw)).eval()
    hf.save_pretrained(tmp_path / name, max_shard_size="100KB")  # sharded: exercises the index
    return hf, load_llama(tmp_path / name)


def _causal(model, ids):
    B, T = ids.shape
    cache = model.new_cache(B, T + 8)
    pos = torch.arange(T).expand(B, T)
    mask = torch.ones(T, T, dtype=torch.bool).tril().expand(B, T, T)
    return model.logits(model(ids, positions=pos, cache=cache, slots=pos, attn_mask=mask, kv_len=T)), cache


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers(tmp_path, name):
    hf, ours = _save(tmp_path, name, **CONFIGS[name])
    assert len(list((tmp_path / name).glob("*.safetensors"))) > 1
    ids = torch.randint(0, 211, (3, 23))
    ref = hf(ids).logits
    out, _ = _causal(ours, ids)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_incremental_decode_matches_full_forward(tmp_path):
    hf, ours = _save(tmp_path, "inc", heads=4, kv_heads=2)
    ids = torch.randint(0, 211, (1, 12))
    ref = hf(ids).logits[0]
    cache = ours.new_cache(1, 16)
    P = 7
    pos = torch.arange(P).unsqueeze(0)
    ours(ids[:, :P], positions=pos, cache=cache, slots=pos,
         attn_mask=torch.ones(P, P, dtype=torch.bool).tril().unsqueeze(0), kv_len=P)
    for t in range(P, 12):
        p = torch.tensor([[t]])
        h = ours(ids[:, t:t + 1], positions=p, cache=cache, slots=p,
                 attn_mask=torch.ones(1, 1, t + 1, dtype=torch.bool), kv_len=t + 1)
        torch.testing.assert_close(ours.logits(h)[0, 0], ref[t], atol=1e-5, rtol=1e-5)


def test_tree_forward_equals_each_path(tmp_path):
    """One tree forward gives, at every node, the logits of running its root->node path alone."""
    hf, ours = _save(tmp_path, "tree", heads=4, kv_heads=2)
    prefix = torch.randint(0, 211, (1, 9))
    tree = Tree(tokens=[5, 17, 33, 8, 90, 41, 7], parents=[-1, 0, 0, 1, 1, 3, 2])
    cache = ours.new_cache(1, 32)
    P = prefix.shape[1]
    pos = torch.arange(P).unsqueeze(0)
    ours(prefix, positions=pos, cache=cache, slots=pos,
         attn_mask=torch.ones(P, P, dtype=torch.bool).tril().unsqueeze(0), kv_len=P)
    layout = tree_layout([tree], [P])
    positions, slots, mask = layout.positions, layout.slots, layout.mask()
    logits = ours.logits(ours(torch.tensor([tree.tokens]), positions=positions, cache=cache, slots=slots,
                              attn_mask=mask, kv_len=P + len(tree)))[0]
    for node in range(len(tree)):
        path, n = [], node
        while n >= 0:
            path.append(tree.tokens[n])
            n = tree.parents[n]
        seq = torch.cat([prefix, torch.tensor([path[::-1]])], dim=1)
        torch.testing.assert_close(logits[node], hf(seq).logits[0, -1], atol=1e-5, rtol=1e-5)


def test_missing_weights_named(tmp_path):
    from safetensors.torch import load_file, save_file

    _save(tmp_path, "broken", heads=4, kv_heads=2)
    d = tmp_path / "broken"
    for f in d.glob("*.safetensors"):
        state = load_file(f)
        state.pop("model.layers.1.mlp.up_proj.weight", None)
        save_file(state, f, metadata={"format": "pt"})
    with pytest.raises(PhideError, match="model.layers.1.mlp.up_proj.weight"):
        load_llama(d)


def test_unsupported_rope_rejected():
    from phide.models.llama import LlamaConfig

    with pytest.raises(PhideError, match="RoPE"):
        LlamaConfig.from_dict({"vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
                               "num_hidden_layers": 1, "num_attention_heads": 2,
                               "rope_parameters": {"rope_type": "yarn-ish", "rope_theta": 1.0}})


def test_logits_are_fp32_from_the_gemm_for_half_weights_on_a_gpu():
    """With bf16 weights on a GPU the LM head's GEMM writes fp32 (out_dtype) instead of rounding the
    logits to bf16 first; the meta device runs the same dispatch without a GPU."""
    from phide.models.llama import lm_head_fp32

    w = torch.empty(11, 8, dtype=torch.bfloat16, device="meta")
    h = torch.empty(2, 3, 8, dtype=torch.bfloat16, device="meta")
    out = lm_head_fp32(h, w)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 11)
    # on a CPU: the product in the weight's dtype, then fp32 (exact for fp32 weights)
    w32, h32 = torch.randn(11, 8), torch.randn(2, 3, 8)
    torch.testing.assert_close(lm_head_fp32(h32, w32), h32 @ w32.T, rtol=0, atol=0)


def test_causal_prefill_path_matches_the_dense_mask():
    """ops.causal_attention (SDPA's fused causal path; flash-attn on a GPU when installed) is the
    dense lower-triangular mask's attention, GQA included."""
    from phide import ops

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    mask = torch.ones(9, 9, dtype=torch.bool).tril()
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(ops.causal_attention(q, k, v), dense, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="as many keys"):
        ops.causal_attention(q, torch.randn(2, 2, 10, 16), torch.randn(2, 2, 10, 16))
