"""The memory planner (phide.memory_plan): byte arithmetic against hand-computed totals and
against transformers' own modules, the real pair's plans from its public configs (no weights),
the toy pair's predicted weight bytes against the loaded modules, `phide plan --gpu-memory`, and
`--draft-quant auto` on a (simulated) card."""

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from phide import memory_plan as mp
from cli_run import run_cli
from phide.engine import SpecConfig
from phide.errors import PhideError
from phide.models.llama import LlamaConfig

REAL = Path(__file__).parent / "fixtures" / "real_configs"
TARGET, DRAFT, HEAD = REAL / "Video-LLaVA-7B-hf", REAL / "EventGPT-7b", REAL / "eagle-head-7B"
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, head_dim=128)


# ----------------------------------------------------------------------------- byte arithmetic
def test_linear_bytes_by_hand():
    n = 4096 * 4096
    assert mp.linear_bytes(4096, 4096, "none", 2) == 2 * n
    assert mp.linear_bytes(4096, 4096, "none", 2, bias=True) == 2 * n + 2 * 4096
    assert mp.linear_bytes(4096, 4096, "int8", 2) == n + 5 * 4096           # int8 + fp32 scale + int8 zero / row
    # nf4: 4 bits each, a uint8 absmax per 64, an fp32 absmax per 256 blocks, 16 + 256 fp32 codes, an offset
    assert mp.linear_bytes(4096, 4096, "nf4", 2) == n // 2 + n // 64 + 4 * (n // 64 // 256) + 64 + 1024 + 4
    assert mp.linear_bytes(4096, 4096, "int4", 2) == n // 2 + (4096 // 128) * 4096 * 4  # bf16 scale+zero / 128
    # torchao pads the input width to a multiple of 1024 and the outputs to 8: 11008 -> 11264
    assert mp.linear_bytes(4096, 11008, "int4", 2) == 4096 * 11264 // 2 + (11264 // 128) * 4096 * 4


def test_llama_7b_lm_bytes_by_hand_and_against_transformers():
    cfg = LlamaConfig(vocab_size=32064, **LLAMA_7B)
    # 32 x (4 x 4096^2 + 3 x 4096 x 11008 + 2 x 4096) + 2 x 32064 x 4096 + 4096 = 6,738,939,904 parameters
    assert mp.lm_bytes(cfg, "none", 2) == 2 * 6_738_939_904
    from transformers import LlamaConfig as HFConfig, LlamaForCausalLM

    with torch.device("meta"):
        hf = LlamaForCausalLM(HFConfig(vocab_size=32064, **LLAMA_7B))
    assert mp.lm_bytes(cfg, "none", 2) == 2 * sum(p.numel() for p in hf.parameters())
    # int8: the 32 x 202,375,168 decoder linear weights at 1 byte + 5 per row; the rest bf16
    linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    rows = 32 * (4 * 4096 + 2 * 11008 + 4096)
    assert mp.lm_bytes(cfg, "int8", 2) == linear + 5 * rows + 2 * (6_738_939_904 - linear)


@pytest.mark.parametrize("image, layers", [(224, 23), (336, 24)])
def test_clip_tower_params_match_transformers(image, layers):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    vcfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=layers,
                            num_attention_heads=16, image_size=image, patch_size=14)
    with torch.device("meta"):
        model = CLIPVisionModel(vcfg)
    assert mp.clip_tower_params(vcfg) == sum(p.numel() for p in model.parameters())
    if (image, layers) == (336, 24):
        assert mp.clip_tower_params(vcfg) == 303_507_456  # openai/clip-vit-large-patch14-336's vision model


def test_kv_and_eagle_head_by_hand():
    cfg = LlamaConfig(vocab_size=32064, **LLAMA_7B)
    assert mp.kv_bytes_per_row(cfg, 2) == 2 * 32 * 32 * 128 * 2          # 0.5 MiB per token
    assert mp.kv_bytes_per_row(cfg, 2, layers=1) == 2 * 32 * 128 * 2
    # fc (8192 -> 4096, bias) + one decoder layer
    assert mp.eagle_head_params(cfg) == 8192 * 4096 + 4096 + (4 * 4096 ** 2 + 3 * 4096 * 11008 + 2 * 4096)


# --------------------------------------------------------------------------------- real pair
@pytest.fixture(scope="module")
def real_pair():
    return mp.PairShape.read(TARGET, DRAFT, head_dir=HEAD)


def _plans(pair, gb):
    return mp.plans(pair, gb, cal=mp.default_calibration(), spec=SpecConfig())


def test_real_pair_shape_from_configs(real_pair):
    t, d = real_pair.target, real_pair.draft
    assert (t.lm.vocab_size, t.lm.hidden_size, t.lm.num_hidden_layers) == (32064, 4096, 32)
    assert (d.lm.vocab_size, d.lm.intermediate_size) == (32000, 11008)
    assert t.prompt_tokens == 2056 + mp.TEXT_TOKENS["target"]   # 8 frames x 257
    assert d.prompt_tokens == 582 + mp.TEXT_TOKENS["draft"]     # 5 frames + 577
    # Video-LLaVA's tower: 23 of CLIP ViT-L/14-224's 24 layers (features from hidden_states[-2])
    assert t.other_params["vision tower"] == 303_179_776 - 12_596_224
    assert d.other_params["event adaptor"] == 4096 * 4096 + 4096


@pytest.mark.parametrize("graphs", [True, False], ids=["verify-graphs", "no-target-graph"])
def test_real_pair_both_bf16_total_by_hand(real_pair, graphs):
    spec = SpecConfig(target_graph=None if graphs else False)
    parts = mp.plan_parts(real_pair, "none", "none", spec=spec, max_new=64, dtype="bfloat16")
    lm_t, lm_d = 6_738_939_904, 6_738_415_616
    assert real_pair.head.kind == "eagle2"
    weights = 2 * (lm_t + 290_583_552 + 20_979_712 + mp.eagle_head_params(real_pair.head.cfg)
                   + lm_d + 303_507_456 + 20_979_712 + 16_781_312)
    # on a GPU the target's rows are the static verify's cache (min(4096, 2560) + 64 rows), and its
    # graphs keep a [N, 32064] fp32 logits buffer per bucket and feature capture (two with a head)
    target_rows = 2560 + 64 if graphs else 2076 + 64 + 64 + 1
    graph_buffers = (1 + 8 + 16 + 24 + 32 + 48 + 64) * 32064 * 4 * 2 if graphs else 0
    kv = 524_288 * (target_rows + (642 + 64 + 32 * 4 + 64 + 2)) + 16_384 * (2076 + 64 + 6 * 4 + 64 + 2)
    work = (2076 + 642) * ((6 * 4096 + 3 * 11008) * 2 + 2 * 4096 * 4)
    head_features = 2076 * 4096 * 2  # the prompt's final features the EAGLE-2 head reads
    assert sum(parts.values()) == weights + kv + graph_buffers + work + head_features + 2 ** 29


def test_real_pair_24_gb_keeps_the_target_exact(real_pair):
    plans = _plans(real_pair, 24)
    chosen = mp.choose(plans)
    assert chosen.target_quant == "none" and chosen.draft_quant in ("int8", "nf4", "int4")
    assert chosen.fits and chosen.predicted_gb <= 0.95 * 24
    both = next(p for p in plans if p.name == "both bf16")
    assert not both.fits and both.predicted_gb > 27  # the wall of seed 002: ~27 GB for the pair in bf16


def test_real_pair_80_gb_picks_both_bf16_and_8_gb_nothing(real_pair):
    assert mp.choose(_plans(real_pair, 80)).name == "both bf16"
    plans = _plans(real_pair, 8)
    assert mp.choose(plans) is None
    msg = mp.shortfall(plans, 8)
    smallest = min(plans, key=lambda p: p.predicted_gb if p.runnable else 1e9)
    assert smallest.name in msg and f"{mp.card_needed(smallest):g} GB" in msg


def test_a_quantized_target_is_chosen_only_when_no_exact_plan_fits(real_pair):
    plans = _plans(real_pair, 14)
    assert all(not p.fits for p in plans if p.target_quant == "none" and p.runnable)
    assert mp.choose(plans).target_quant != "none"
    assert mp.choose(_plans(real_pair, 24)).target_quant == "none"  # while both 4-bit also fits


def test_plan_cli_json_contract_and_exit_codes():
    args = ["plan", "--target", str(TARGET), "--draft", str(DRAFT), "--head", str(HEAD), "--json"]
    rc, out, err = run_cli(args + ["--gpu-memory", "80"])
    assert rc == 0, err
    got = json.loads(out)
    assert got["gpu_memory_gb"] == 80 and got["chosen"] == "both bf16"
    for p in got["plans"]:
        assert {"name", "target_quant", "draft_quant", "predicted_gb", "fits", "predicted_speedup"} <= set(p)
    rc, out, err = run_cli(args + ["--gpu-memory", "24"])
    got = json.loads(out)
    chosen = next(p for p in got["plans"] if p["name"] == got["chosen"])
    # a 24 GB card: the exact target, the draft in NF4 (bitsandbytes, runs anywhere), not int4
    # (torchao, CUDA only) though it fits as well
    assert rc == 0 and got["chosen"] == "draft nf4" and chosen["draft_quant"] == "nf4"
    assert chosen["target_quant"] == "none" and chosen["fits"]
    rc, out, err = run_cli(args + ["--gpu-memory", "8"])
    assert rc == 2 and json.loads(out)["chosen"] is None
    assert err.startswith("phide: error: nothing fits in 8 GB") and err.count("\n") == 1


def test_plan_cli_bad_input_is_one_line():
    rc, out, err = run_cli(["plan", "--gpu-memory", "24"])
    assert rc == 2 and "needs --target" in err and err.count("\n") == 1
    rc, out, err = run_cli(["plan", "--target", str(TARGET)])
    assert rc == 2 and "needs --gpu-memory" in err
    rc, out, err = run_cli(["plan", "--gpu-memory", "0", "--target", str(TARGET)])
    assert rc == 2 and err.startswith("phide: error:")


# ---------------------------------------------------------------------------------- toy pair
@pytest.mark.parametrize("target_quant, draft_quant", [("none", "none"), ("none", "int8"), ("none", "nf4"),
                                                       ("int8", "int8")])
def test_toy_pair_predicted_weight_bytes_match_the_loaded_modules(target_quant, draft_quant):
    pytest.importorskip("torchao")
    pytest.importorskip("bitsandbytes")
    from phide.models.quant import weight_bytes
    from phide.tools.bench import bundled_session
    from phide.toy.bundle import bundled_dir

    with contextlib.redirect_stderr(io.StringIO()):
        s = bundled_session("main", calibration=None, draft_quant=draft_quant, target_quant=target_quant)
    t, d, e = s.target_side, s.draft_side, s.engine
    measured = {"target": weight_bytes(t.lm, t.tower, t.projector), "draft": weight_bytes(d.lm, d.tower, d.projector,
                                                                                         d.adaptor),
                "head": weight_bytes(e.head), "adapter": weight_bytes(e.draft_adapter)}
    pair = mp.PairShape.read(bundled_dir() / "target", bundled_dir() / "draft")
    parts = mp.weight_parts(pair, target_quant, draft_quant, 4)
    predicted = {"target": sum(v for k, v in parts.items() if k.startswith("target")),
                 "draft": sum(v for k, v in parts.items() if k.startswith("draft LM") or k.startswith("draft ")
                              and k != "draft adapter"),
                 "head": parts["EAGLE head"], "adapter": parts["draft adapter"]}
    for k in measured:
        assert abs(predicted[k] / measured[k] - 1) < 0.02, (k, predicted[k], measured[k])
    assert s.memory_plan["predicted_gb"] == mp.predicted_gb(pair, target_quant, draft_quant, spec=e.spec, max_new=64,
                                                            dtype="float32", with_context=False)


# -------------------------------------------------------------------- --draft-quant auto on a card
def _card(monkeypatch, gb):
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda *_: SimpleNamespace(total_memory=int(gb * mp.GIB)))


def _auto(**kw):
    from phide.session import memory_plan_for

    return memory_plan_for(TARGET, DRAFT, head_dir=HEAD, adapter_dir=None, clip_dir=None, device="cuda",
                           dtype=torch.bfloat16, spec=SpecConfig(), **kw)


def test_draft_quant_auto_picks_what_the_card_holds(monkeypatch):
    _card(monkeypatch, 80)
    assert _auto(draft_quant="auto", target_quant="none")["draft_quant"] == "none"
    _card(monkeypatch, 24)
    plan = _auto(draft_quant="auto", target_quant="none")
    assert plan["draft_quant"] in ("int8", "nf4", "int4") and plan["chosen_by"] == "auto"
    assert plan["predicted_gb"] <= 0.95 * 24
    _card(monkeypatch, 12)
    with pytest.raises(PhideError, match=r"nothing fits in 12 GB.*a card of at least [\d.]+ GB"):
        _auto(draft_quant="auto", target_quant="none")
    with pytest.raises(PhideError, match=r"needs [\d.]+ GB, this GPU has 12.0 GB"):
        _auto(draft_quant="int8", target_quant="none")  # flags are priced too: no load that cannot fit
    _card(monkeypatch, 24)
    given = _auto(draft_quant="int8", target_quant="none")  # 23.2 GB: over the 95% auto keeps, under the card
    assert given["draft_quant"] == "int8" and given["chosen_by"] == "flags"


def test_an_eagle3_head_is_priced_as_it_loads():
    """The EAGLE-3 head (SGLang layout config) is priced with its own LM head and vocabulary maps,
    and the prompt's captured layers (3 x H per position) the engine keeps for it."""
    pair = mp.PairShape.read(TARGET, DRAFT, head_dir=TARGET.parent / "eagle3-head-7B")
    assert (pair.head.kind, pair.head.n_capture, pair.head.draft_vocab) == ("eagle3", 3, 32000)
    parts = mp.plan_parts(pair, "none", "none", spec=SpecConfig(), max_new=64, dtype="bfloat16")
    assert parts["EAGLE head"] == 434_126_848 * 2 + 32000 * 8 + 32064
    assert parts["EAGLE head features"] == 2076 * 3 * 4096 * 2
    eagle2 = mp.plan_parts(mp.PairShape.read(TARGET, DRAFT, head_dir=HEAD), "none", "none", spec=SpecConfig(),
                           max_new=64, dtype="bfloat16")
    others = {k for k in parts if not k.startswith("EAGLE head")}
    assert all(parts[k] == eagle2[k] for k in others)  # only the head's parts differ
