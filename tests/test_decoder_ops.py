"""The decoder's fused ops (RMSNorm with the residual add, RoPE + KV write, q/k/v and gate/up as one
GEMM each): Triton kernels (interpreted) and the compiled CPU ops against their torch twins, the
fused decoder against the unfused one, and the launches a target decode step makes on the GPU path.
"""

from __future__ import annotations

from kernel_marks import needs_triton  # noqa: F401  (sets TRITON_INTERPRET before triton loads)


import pytest
import torch

from phide import ops
from phide._ext import load_extension
from phide.models.llama import LlamaConfig, LlamaModel, TreeAttention, rope_cos_sin, rope_inv_freq
from phide.ops.launch_count import LaunchCount
from phide.ops.reference.rms_norm import add_rms_norm_torch, rms_norm_torch
from phide.ops.reference.rope import rope_kv_write_torch
from ops_choice import use_ops  # noqa: E402

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _rope_case(dtype, B=2, T=5, Hq=4, Hkv=2, D=32, S=24, cache_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, (Hq + 2 * Hkv) * D, generator=g).to(dtype)
    cfg = LlamaConfig(vocab_size=8, hidden_size=Hq * D, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=Hq, num_key_value_heads=Hkv, head_dim=D)
    positions = torch.randint(0, 900, (B, T), generator=g)
    cos, sin = rope_cos_sin(rope_inv_freq(cfg), positions, dtype)
    slots = torch.stack([torch.randperm(S, generator=g)[:T] for _ in range(B)])
    cache = torch.randn(2, B, Hkv, S, D, generator=g).to(cache_dtype or dtype)
    return qkv, cos, sin, cache, slots, Hq, Hkv


def _run_rope(fn, qkv, cos, sin, cache, slots, Hq, Hkv):
    k, v = cache[0].clone(), cache[1].clone()
    q = fn(qkv, cos, sin, k, v, slots, Hq, Hkv)
    return q, k, v


# ----------------------------------------------------------------------------- Triton vs twin


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t)[6:])
@pytest.mark.parametrize("D", (32, 80))
def test_rope_kv_write_kernel_is_bit_identical_to_its_twin(dtype, D):
    from phide.triton_kernels.rope_kv_write import rope_kv_write_triton

    for cache_dtype in (dtype, torch.float32):
        case = _rope_case(dtype, D=D, cache_dtype=cache_dtype)
        got = _run_rope(rope_kv_write_triton, *case)
        want = _run_rope(rope_kv_write_torch, *case)
        for name, a, b in zip(("q", "k_cache", "v_cache"), got, want):
            assert torch.equal(a, b), f"{name} differs ({dtype}, D={D}, cache {cache_dtype})"
        # rows not in `slots` are untouched
        assert torch.equal(got[1].ne(case[3][0]).any(-1).sum(), torch.tensor(case[4].numel() * case[6]))


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t)[6:])
@pytest.mark.parametrize("H", (128, 200))
def test_rms_norm_kernels_match_their_twins(dtype, H):
    """The elementwise steps round as the twin's; only the mean's summation order may differ, so
    half-precision outputs agree exactly on nearly every element and fp32 within a few ulps."""
    from phide.triton_kernels.rms_norm import rms_norm_triton

    g = torch.Generator().manual_seed(1)
    x, r = (torch.randn(3, 4, H, generator=g).to(dtype) for _ in range(2))
    w = (1 + 0.1 * torch.randn(H, generator=g)).to(dtype)
    out, summed = rms_norm_triton(x, w, 1e-5, r)
    want_out, want_sum = add_rms_norm_torch(x, r, w, 1e-5)
    assert torch.equal(summed, want_sum), "the residual add must be exact"
    plain = rms_norm_triton(x, w, 1e-5)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out, want_out, **tol)
    torch.testing.assert_close(plain, rms_norm_torch(x, w, 1e-5), **tol)
    if dtype != torch.float32:
        assert (out == want_out).float().mean() > 0.99


# ----------------------------------------------------------------------------- compiled CPU ops


@pytest.fixture(scope="module")
def ext():
    assert load_extension(), "phide._C is not built: run `pip install --no-build-isolation -e .`"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t)[6:])
def test_compiled_cpu_ops_are_bit_identical_to_their_twins(ext, dtype):
    g = torch.Generator().manual_seed(2)
    for H in (128, 37, 4096):
        x, r = (torch.randn(5, 3, H, generator=g).to(dtype) for _ in range(2))
        w = torch.randn(H, generator=g).to(dtype)
        got, want = torch.ops.phide.add_rms_norm(x, r, w, 1e-5), add_rms_norm_torch(x, r, w, 1e-5)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), f"add_rms_norm H={H}"
        assert torch.equal(torch.ops.phide.rms_norm(x, w, 1e-6), rms_norm_torch(x, w, 1e-6)), f"rms_norm H={H}"
        w32 = torch.randn(H, generator=g)  # an fp32 weight over half activations promotes to fp32
        assert torch.equal(torch.ops.phide.rms_norm(x, w32, 1e-6), rms_norm_torch(x, w32, 1e-6))
    for B in (1, 3):
        for cache_dtype in (dtype, torch.float32):
            case = _rope_case(dtype, B=B, cache_dtype=cache_dtype, seed=B)
            got = _run_rope(torch.ops.phide.rope_kv_write, *case)
            want = _run_rope(rope_kv_write_torch, *case)
            for name, a, b in zip(("q", "k_cache", "v_cache"), got, want):
                assert torch.equal(a, b), f"{name} differs (B={B}, cache {cache_dtype})"


def test_compiled_cpu_ops_pass_opcheck_and_refuse_bad_slots(ext):
    x, r = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    w = torch.randn(16)
    torch.library.opcheck(torch.ops.phide.rms_norm.default, (x, w, 1e-5))
    torch.library.opcheck(torch.ops.phide.add_rms_norm.default, (x, r, w, 1e-5))
    qkv, cos, sin, cache, slots, Hq, Hkv = _rope_case(torch.float32)
    torch.library.opcheck(torch.ops.phide.rope_kv_write.default,
                          (qkv, cos, sin, cache[0].clone(), cache[1].clone(), slots, Hq, Hkv))
    with pytest.raises(IndexError, match="outside the cache"):
        torch.ops.phide.rope_kv_write(qkv, cos, sin, cache[0], cache[1], slots + 100, Hq, Hkv)


# ----------------------------------------------------------------------------- the decoder


def _model(layers=3, bias=False, seed=0):
    cfg = LlamaConfig(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, attention_bias=bias, mlp_bias=bias,
                      eos_token_id=[])
    torch.manual_seed(seed)
    model = LlamaModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def _forward(model, ids, capture=None):
    n = len(ids)
    pos = torch.arange(n).view(1, n)
    mask = torch.ones(n, n, dtype=torch.bool).tril().view(1, n, n)
    cache = model.new_cache(1, n)
    with torch.inference_mode():
        return model(torch.tensor([ids]), positions=pos, cache=cache, slots=pos, attn_mask=mask, kv_len=n,
                     capture=capture), cache


@pytest.mark.parametrize("bias", (False, True))
def test_fused_projections_give_the_unfused_decoder_and_keep_the_checkpoint_names(bias):
    model = _model(bias=bias)
    names = sorted(model.state_dict())
    (want_h, want_aux), want_cache = _forward(model, [3, 9, 4, 17, 1], capture=(0, 2, 3))
    model.fuse_projections()
    attn = model.layers[0].self_attn
    assert attn.fused is not None and model.layers[0].mlp.fused is not None
    # one storage: the checkpoint's q/k/v are views of the fused weight, not copies
    assert attn.q_proj.weight.data_ptr() == attn.fused.weight.data_ptr()
    assert sorted(model.state_dict()) == names
    (got_h, got_aux), got_cache = _forward(model, [3, 9, 4, 17, 1], capture=(0, 2, 3))
    torch.testing.assert_close(got_h, want_h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_aux, want_aux, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_cache.k, want_cache.k, rtol=1e-5, atol=1e-5)


def test_fused_weights_follow_to_and_load_state_dict():
    model = _model().fuse_projections()
    state = {k: v.clone() * 0.5 for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)  # replaces the parameters: the fusion follows
    after, _ = _forward(model, [5, 6, 7])
    fresh = _model()
    fresh.load_state_dict(state)
    want, _ = _forward(fresh, [5, 6, 7])
    torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-5)
    model.to(torch.float64)
    assert model.layers[1].self_attn.fused.weight.dtype == torch.float64


def test_training_runs_the_separate_linears_so_gradients_reach_them():
    model = _model(layers=1).fuse_projections().train()
    n = 4
    pos = torch.arange(n).view(1, n)
    out = model(torch.tensor([[1, 2, 3, 4]]), positions=pos, cache=model.new_cache(1, n), slots=pos,
                attn_mask=torch.ones(1, n, n, dtype=torch.bool).tril(), kv_len=n)
    out.sum().backward()
    for name in ("q_proj", "k_proj", "v_proj"):
        assert getattr(model.layers[0].self_attn, name).weight.grad is not None, name
    assert model.layers[0].mlp.up_proj.weight.grad is not None


def _decode_step_launches(model):
    from phide.speculation.runners import TargetRunner
    from phide.speculation.tree import chain

    runner = TargetRunner(model, 64)
    runner.prefill(list(range(1, 20)))
    with LaunchCount(layers=model.layers) as lc:
        runner.verify(chain(5, []), 0.0, 0, 0)
    return lc


def test_a_target_decode_step_launches_at_most_14_kernels_per_layer():
    """Issue 23's budget, counted as on the GPU path (each phide op one kernel). Before the fused
    ops a layer launched 37 (the unfused projections, RMSNorm as five ops, RoPE as ten)."""
    model = _model(layers=4).fuse_projections()
    lc = _decode_step_launches(model)
    per_layer = lc.per_layer()
    assert per_layer <= 14, lc.by_op("layer")
    layer_ops = lc.by_op("layer")
    assert layer_ops["mm"] == 4 * 4, "q/k/v, o, gate/up and down: four GEMMs per layer"
    assert layer_ops["phide.add_rms_norm"] == 2 * 4 - 1  # the first layer's input norm has no add
    assert layer_ops["phide.rope_kv_write"] == 4 and layer_ops["phide.tree_attention"] == 4


def test_the_unfused_decoder_is_over_the_budget():
    """The count sees what the decoder runs: without fused projections a layer's GEMMs alone are 7."""
    lc = _decode_step_launches(_model(layers=4))
    assert lc.by_op("layer")["mm"] == 7 * 4


def test_tree_twin_masks_are_built_once_per_forward(monkeypatch):
    """The torch twin's tree masks depend on the tree alone: one forward builds them once."""
    from phide.ops.reference import tree_attention as ref

    calls = []
    real = ref.tree_visibility
    monkeypatch.setattr(ref, "tree_visibility", lambda *a: calls.append(1) or real(*a))
    model = _model(layers=3)
    cache = model.new_cache(1, 16)
    n = 3
    tree = TreeAttention(prefix_len=torch.tensor([4]), tree_start=torch.tensor([4]),
                         ancestors=torch.tensor([[1, 3, 5]]), n_nodes=torch.tensor([3]))
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]), positions=torch.tensor([[4, 5, 5]]), cache=cache,
              slots=torch.tensor([[4, 5, 6]]), attn_mask=None, kv_len=4 + n, tree=tree)
    assert len(calls) == 1


def test_decode_hint_changes_nothing(monkeypatch):
    """A one-node tree over its prefix (`sees_every_row`, no padding) skips the twin's masks and
    gives the masked forward's numbers."""
    model = _model(layers=2)
    cache = model.new_cache(1, 16)
    with torch.inference_mode():
        pos = torch.arange(6).view(1, 6)
        model(torch.tensor([[4, 8, 15, 16, 23, 42]]), positions=pos, cache=cache, slots=pos,
              attn_mask=torch.ones(1, 6, 6, dtype=torch.bool).tril(), kv_len=6)
        outs = []
        for hint in (False, True):
            tree = TreeAttention(prefix_len=torch.tensor([6]), tree_start=torch.tensor([6]),
                                 ancestors=torch.tensor([[1]]), n_nodes=torch.tensor([1]),
                                 padded=not hint, sees_every_row=hint)
            outs.append(model(torch.tensor([[7]]), positions=torch.tensor([[6]]), cache=cache,
                              slots=torch.tensor([[6]]), attn_mask=None, kv_len=7, tree=tree))
    assert torch.equal(outs[0], outs[1])


def test_decoder_ops_follow_the_backend(monkeypatch, ext):
    x = torch.zeros(1, 2, 8)
    use_ops(monkeypatch, "torch")
    assert ops.decoder_ops(x, 4).add_rms_norm is ops.add_rms_norm
    use_ops(monkeypatch, "auto")
    with torch.inference_mode():
        assert ops.decoder_ops(x, 4).add_rms_norm is torch.ops.phide.add_rms_norm
    assert ops.decoder_ops(x, 4).add_rms_norm is ops.add_rms_norm  # grad mode: the twins' autograd


def test_fused_decoder_equals_transformers_greedy(tmp_path):
    """The lossless reference, with the fusions on: fp32 greedy tokens equal transformers'."""
    from transformers import LlamaForCausalLM

    from phide.engine import Engine, Request
    from phide.models.loading import load_llama
    from phide.models.tiny import write_tiny_llama

    write_tiny_llama(tmp_path / "m", seed=3, hidden=64, layers=3, heads=4, kv_heads=2, intermediate=128,
                     init_std=0.1)
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path / "m")).eval()
    hf.generation_config.eos_token_id = None
    engine = Engine(load_llama(tmp_path / "m"), eos_token_ids=[])
    assert engine.target.layers[0].self_attn.fused is not None
    for ids in ([1, 40, 41, 7], [1, 9, 200, 31, 5, 77]):
        with torch.inference_mode():
            want = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=0)[0, len(ids):]
        got = engine.generate(Request(prompt_ids=ids, max_new_tokens=12), "target-only").token_ids
        assert got == want.tolist()


