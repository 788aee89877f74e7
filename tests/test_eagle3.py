"""EAGLE-3 heads in the layouts SGLang and vLLM load: a checkpoint written here by hand (not by
phide's saver) loads and drafts, computing what the published architecture computes (a reference
written from the spec below, not phide's modules); phide's saved head reads back through that
layout; the target captures the layers a head fuses; bad checkpoints are one clear error."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from phide.engine import Engine, Request, SpecConfig
from phide.errors import PhideError
from phide.models.eagle3 import Eagle3Head, draft_vocab_map
from phide.models.heads import head_kind, load_head
from phide.models.llama import CAUSAL
from phide.models.loading import load_llama
from phide.speculation.eagle_runner import EagleRunner

# The tiny target (conftest.tiny_pair): hidden 64, 2 layers, 4 heads, 2 KV heads, head dim 16, vocab 256.
H, I, NH, NKV, D = 64, 128, 4, 2, 16
SGLANG_KEYS = {"fc.weight", "midlayer.self_attn.q_proj.weight", "midlayer.self_attn.k_proj.weight",
               "midlayer.self_attn.v_proj.weight", "midlayer.self_attn.o_proj.weight", "midlayer.mlp.gate_proj.weight",
               "midlayer.mlp.up_proj.weight", "midlayer.mlp.down_proj.weight", "midlayer.input_layernorm.weight",
               "midlayer.hidden_norm.weight", "midlayer.post_attention_layernorm.weight", "norm.weight",
               "lm_head.weight", "d2t", "t2d"}


def _vocab(target) -> int:
    return target.cfg.vocab_size


def _sglang_tensors(V: int, Vd: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def w(*shape, std=0.08):
        return torch.randn(*shape, generator=g) * std

    ids = torch.sort(torch.randperm(V, generator=g)[:Vd]).values  # a reduced vocabulary, not a prefix
    t2d = torch.zeros(V, dtype=torch.bool)
    t2d[ids] = True
    return {"fc.weight": w(H, 3 * H), "midlayer.self_attn.q_proj.weight": w(NH * D, 2 * H),
            "midlayer.self_attn.k_proj.weight": w(NKV * D, 2 * H), "midlayer.self_attn.v_proj.weight": w(NKV * D, 2 * H),
            "midlayer.self_attn.o_proj.weight": w(H, NH * D), "midlayer.mlp.gate_proj.weight": w(I, H),
            "midlayer.mlp.up_proj.weight": w(I, H), "midlayer.mlp.down_proj.weight": w(H, I),
            "midlayer.input_layernorm.weight": 1 + w(H), "midlayer.hidden_norm.weight": 1 + w(H),
            "midlayer.post_attention_layernorm.weight": 1 + w(H), "norm.weight": 1 + w(H),
            "lm_head.weight": w(Vd, H, std=0.5), "d2t": ids - torch.arange(Vd), "t2d": t2d}


def _sglang_config(V: int, Vd: int, output_ids) -> dict:
    """config.json as SpecForge writes one for SGLang (LlamaForCausalLMEagle3)."""
    return {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_size": H,
            "intermediate_size": I, "num_attention_heads": NH, "num_key_value_heads": NKV, "num_hidden_layers": 1,
            "rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "rope_theta": 10000.0, "vocab_size": V,
            "draft_vocab_size": Vd, "tie_word_embeddings": False, "torch_dtype": "float32",
            "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(output_ids), "use_aux_hidden_state": True}}


def _write(d, config: dict, tensors: dict):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / "model.safetensors"))
    return d


# ------------------------------------------------------------------ the reference (from the spec)
def _rms(x, w, eps=1e-6):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, pos, theta=10000.0):
    inv = 1.0 / theta ** (torch.arange(0, D, 2).float() / D)
    ang = pos[:, None].float() * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    half = D // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def reference(t: dict, emb: torch.Tensor, fused: torch.Tensor, V: int) -> tuple[torch.Tensor, torch.Tensor]:
    """EAGLE-3's first step over a sequence, from the published module graph: s = fc(g);
    u = [input_layernorm(e), hidden_norm(s)] -> q/k/v; y = s + attn; y += mlp(post_norm(y));
    logits = lm_head(norm(y)) placed at arange(Vd) + d2t. -> (y [T,H], logits [T,V])."""
    T = emb.shape[0]
    s = fused @ t["fc.weight"].T
    u = torch.cat([_rms(emb, t["midlayer.input_layernorm.weight"]), _rms(s, t["midlayer.hidden_norm.weight"])], -1)
    pos = torch.arange(T)
    q = _rope((u @ t["midlayer.self_attn.q_proj.weight"].T).view(T, NH, D).transpose(0, 1), pos)
    k = _rope((u @ t["midlayer.self_attn.k_proj.weight"].T).view(T, NKV, D).transpose(0, 1), pos)
    v = (u @ t["midlayer.self_attn.v_proj.weight"].T).view(T, NKV, D).transpose(0, 1)
    k, v = k.repeat_interleave(NH // NKV, 0), v.repeat_interleave(NH // NKV, 0)
    att = (q @ k.transpose(1, 2)) / D ** 0.5
    att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    y = s + (att @ v).transpose(0, 1).reshape(T, NH * D) @ t["midlayer.self_attn.o_proj.weight"].T
    m = _rms(y, t["midlayer.post_attention_layernorm.weight"])
    y = y + (F.silu(m @ t["midlayer.mlp.gate_proj.weight"].T) * (m @ t["midlayer.mlp.up_proj.weight"].T)) \
        @ t["midlayer.mlp.down_proj.weight"].T
    d = _rms(y, t["norm.weight"]) @ t["lm_head.weight"].T
    logits = torch.full((T, V), float("-inf"))
    logits[:, torch.arange(d.shape[1]) + t["d2t"]] = d
    return y, logits


def _phide_first_step(head, emb, fused):
    T = emb.shape[0]
    pos = torch.arange(T).unsqueeze(0)
    y = head(emb.unsqueeze(0), fused.unsqueeze(0), positions=pos, cache=head.new_cache(T), slots=pos,
             attn_mask=CAUSAL, kv_len=T)[0]
    return y, head.logits(y)


@pytest.fixture(scope="module")
def target(tiny_pair):
    return load_llama(tiny_pair["target"])


@pytest.fixture(scope="module")
def sglang_dir(tmp_path_factory, target):
    V = _vocab(target)
    # SGLang's ids name the layer whose OUTPUT is taken: -1, 0, 1 = the states entering layers 0, 1, 2
    return _write(tmp_path_factory.mktemp("sglang-eagle3"), _sglang_config(V, 96, (-1, 0, 1)),
                  _sglang_tensors(V, 96))


def test_a_hand_written_sglang_checkpoint_loads_and_computes_the_architecture(sglang_dir, target):
    V = _vocab(target)
    assert head_kind(sglang_dir) == "eagle3"
    head = load_head(sglang_dir, target_cfg=target.cfg)
    assert head.capture == (0, 1, 2) and head.draft_vocab == 96 and not head.identity_vocab
    t = load_file(str(sglang_dir / "model.safetensors"))
    torch.manual_seed(5)
    emb, fused = torch.randn(9, H), torch.randn(9, 3 * H)
    want_y, want_logits = reference(t, emb, fused, V)
    got_y, got_logits = _phide_first_step(head, emb, fused)
    torch.testing.assert_close(got_y, want_y, rtol=1e-4, atol=1e-5)
    finite = torch.isfinite(want_logits)
    assert torch.equal(torch.isfinite(got_logits), finite) and int(finite[0].sum()) == 96
    torch.testing.assert_close(got_logits[finite], want_logits[finite], rtol=1e-4, atol=1e-4)


def test_a_vllm_speculators_checkpoint_loads_the_same_head(tmp_path, sglang_dir, target):
    """speculators' Eagle3Speculator layout: nested transformer_layer_config, layers.0.* names, the
    top-level ids in vLLM's convention (the layer the state enters), a stored embedding ignored."""
    V = _vocab(target)
    t = load_file(str(sglang_dir / "model.safetensors"))
    renamed = {("layers.0." + k[len("midlayer."):] if k.startswith("midlayer.") else k): v for k, v in t.items()}
    renamed["embed_tokens.weight"] = torch.randn(V, H)
    layer = {k: v for k, v in _sglang_config(V, 96, ()).items()
             if k not in ("architectures", "eagle_config", "draft_vocab_size")}
    cfg = {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3", "draft_vocab_size": 96,
           "transformer_layer_config": layer, "eagle_aux_hidden_state_layer_ids": [0, 1, 2],
           "norm_before_residual": False}
    d = _write(tmp_path / "speculators", cfg, renamed)
    a, b = load_head(d, target_cfg=target.cfg), load_head(sglang_dir, target_cfg=target.cfg)
    assert a.capture == b.capture == (0, 1, 2)
    emb, fused = torch.randn(6, H), torch.randn(6, 3 * H)
    torch.testing.assert_close(_phide_first_step(a, emb, fused)[1], _phide_first_step(b, emb, fused)[1])


def test_the_hand_written_head_drafts_losslessly_inside_its_draft_vocabulary(sglang_dir, target, tiny_pair,
                                                                           monkeypatch):
    head = load_head(sglang_dir, target_cfg=target.cfg)
    allowed = set((torch.arange(96) + head.d2t).tolist())
    grown = []
    grow = EagleRunner.grow

    def spy(self, **kw):
        tree = grow(self, **kw)
        grown.append(tree.tokens[1:])
        return tree

    monkeypatch.setattr(EagleRunner, "grow", spy)
    hf = LlamaForCausalLM.from_pretrained(tiny_pair["target"]).eval()
    engine = Engine(target, eos_token_ids=[2], head=head, spec=SpecConfig(topk=3, depth=4, budget=12))
    for ids in ([1, 17, 40, 99, 5], [1, 200, 3]):
        ref = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=20, eos_token_id=2,
                          pad_token_id=0)[0, len(ids):].tolist()
        res = engine.generate(Request(prompt_ids=ids, max_new_tokens=20), "head-only")
        assert res.token_ids == ref
        assert res.stats["faults"] == 0 and res.stats["head_forwards"] > 0
    drafted = {t for toks in grown for t in toks}
    assert drafted and drafted <= allowed


def test_phides_saved_head_reads_back_through_the_sglang_layout(tmp_path, sglang_dir, target):
    """What phide writes is what SGLang's loader expects: the names (no embeddings), the config
    fields and both layer-id conventions, bf16 weights, int64 d2t / bool t2d; and it computes the
    architecture (the spec's reference over the saved tensors)."""
    head = load_head(sglang_dir, target_cfg=target.cfg)
    head.save(tmp_path / "saved")
    cfg = json.loads((tmp_path / "saved" / "config.json").read_text())
    t = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert set(t) == SGLANG_KEYS
    assert t["d2t"].dtype == torch.int64 and t["t2d"].dtype == torch.bool and t["fc.weight"].dtype == torch.bfloat16
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["num_hidden_layers"] == 1
    assert (cfg["vocab_size"], cfg["draft_vocab_size"], cfg["hidden_size"]) == (_vocab(target), 96, H)
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [-1, 0, 1]  # SGLang: outputs
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [0, 1, 2]                     # vLLM: inputs
    assert torch.equal(torch.arange(96)[t["t2d"][torch.arange(96) + t["d2t"]]], torch.arange(96))
    floats = {k: v.float() if v.is_floating_point() else v for k, v in t.items()}
    emb, fused = torch.randn(7, H), torch.randn(7, 3 * H)
    want_y, _ = reference(floats, emb, fused, _vocab(target))
    back = load_head(tmp_path / "saved", target_cfg=target.cfg)
    torch.testing.assert_close(_phide_first_step(back, emb, fused)[0], want_y, rtol=1e-4, atol=1e-5)


def test_the_target_captures_the_states_entering_the_fused_layers(target, tiny_pair):
    """LlamaModel(capture=...) returns the residual stream entering each named layer: HF's
    output_hidden_states[i] for i < L (HF's last entry is after the final norm; phide's L is before)."""
    hf = LlamaForCausalLM.from_pretrained(tiny_pair["target"]).eval()
    ids = torch.tensor([[1, 17, 40, 99, 5, 8]])
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True).hidden_states
        pos = torch.arange(6).unsqueeze(0)
        final, aux = target(ids, positions=pos, cache=target.new_cache(1, 6), slots=pos, attn_mask=CAUSAL,
                            kv_len=6, capture=(1, 0))
    torch.testing.assert_close(aux[..., :H], ref[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(aux[..., H:], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, ref[2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, needle", [
    (lambda c, t: t.pop("midlayer.hidden_norm.weight"), "missing"),
    (lambda c, t: t.update({"midlayer.extra.weight": torch.zeros(2)}), "does not know"),
    (lambda c, t: c.update(norm_before_fc=True), "norm_before_fc is not supported"),
    (lambda c, t: t.update(d2t=t["d2t"] + 1000), "outside the target's vocabulary"),
    (lambda c, t: c["eagle_config"].update(eagle_aux_hidden_state_layer_ids=[0, 1, 7]), "outside the target"),
    (lambda c, t: c.update(num_hidden_layers=2), "one decoder layer"),
    (lambda c, t: t.update({"fc.weight": torch.zeros(H, 2 * H)}), "shape"),
])
def test_bad_eagle3_checkpoints_are_one_clear_error(tmp_path, target, change, needle):
    V = _vocab(target)
    cfg, tensors = _sglang_config(V, 96, (-1, 0, 1)), _sglang_tensors(V, 96)
    change(cfg, tensors)
    d = _write(tmp_path / "bad", cfg, tensors)
    with pytest.raises(PhideError, match=needle):
        load_head(d, target_cfg=target.cfg)


def test_a_pickled_eagle3_checkpoint_is_refused_unread(tmp_path, target):
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(_sglang_config(_vocab(target), 96, (-1, 0, 1))))
    (d / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(PhideError, match="does not unpickle"):
        load_head(d, target_cfg=target.cfg)


def test_draft_vocab_keeps_the_most_frequent_answer_ids():
    counts = torch.zeros(20, dtype=torch.int64)
    counts[[3, 7, 11, 19]] = torch.tensor([5, 9, 1, 2])
    d2t, t2d = draft_vocab_map(counts, 3)
    assert (torch.arange(3) + d2t).tolist() == [3, 7, 19]  # the top 3, sorted
    assert t2d.nonzero().flatten().tolist() == [3, 7, 19]
    d2t, t2d = draft_vocab_map(counts, 6)  # fewer occur than asked: the lowest unused ids fill in
    assert (torch.arange(6) + d2t).tolist() == [0, 1, 3, 7, 11, 19]
    head = Eagle3Head(_cfg20(), (0, 1, 2), 6)
    head.set_vocab_map(d2t, t2d)
    logits = head.logits(torch.randn(2, 8))
    assert torch.isfinite(logits).sum(-1).tolist() == [6, 6]
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [0, 1, 3, 7, 11, 19]


def _cfg20():
    from phide.models.llama import LlamaConfig

    return LlamaConfig(vocab_size=20, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=4)


def test_a_new_eagle3_head_caps_its_vocabulary_as_the_plan_prices_it():
    """Without --draft-vocab the head's LM head has min(V, 32000) rows: what `phide distill
    --plan` prices and the CLI's help says (a target of 32,064 ids: 32,000 rows)."""
    from phide.distill.cost import _head_shape
    from phide.distill.head import new_head
    from phide.models.llama import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=16)
    target = LlamaModel(cfg)
    assert new_head("eagle3", target).draft_vocab == 32000 == _head_shape(cfg, None, "eagle3", None).draft_vocab
    assert new_head("eagle3", target, draft_vocab=100).draft_vocab == 100
