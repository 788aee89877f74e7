"""Quantized drafts keep the target's answer; a quantized target equals its own target-only run.

Greedy, fp32 target, on the bundled toy pair (Video-LLaVA + EventGPT formats, EAGLE head, draft
adapter) and on a LLaMA pair written with transformers (tests/conftest.py `tiny_pair`). The
weight formats come from torchao (int8) and bitsandbytes (nf4), the `phide[quant]` extra.
"""

import contextlib
import io
import json

import pytest
import torch

from cli_run import run_cli
from phide.errors import PhideError
from phide import schedules
from phide.models import quant

pytest.importorskip("torchao")
pytest.importorskip("bitsandbytes")


def _quiet(fn, *a, **k):
    with contextlib.redirect_stderr(io.StringIO()):
        return fn(*a, **k)


@pytest.fixture(scope="module")
def toy_requests():
    from phide.tools.bench import eval_samples, toy_request

    return [toy_request(s, 40) for s in eval_samples(2)]


@pytest.fixture(scope="module")
def toy_reference(toy_requests):
    from phide.tools.bench import bundled_session

    session = _quiet(bundled_session, "main", calibration=None, draft_quant="none")
    return [session.generate(r, "target-only").token_ids for r in toy_requests]


def _stored_as(linear) -> str:
    """How a linear's weight is stored: "nf4" (a bitsandbytes Linear4bit), "int8" (a torchao int8
    tensor), "none" (a plain tensor)."""
    import bitsandbytes as bnb

    if isinstance(linear, bnb.nn.Linear4bit):
        return "nf4"
    w = linear.weight
    return "int8" if type(w).__name__ == "Int8Tensor" and w.qdata.dtype == torch.int8 else "none"


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_quantized_draft_keeps_the_toy_targets_tokens_in_every_mode(scheme, toy_requests, toy_reference):
    from phide.tools.bench import bundled_session

    for variant in ("main", "no-head"):  # the head drafts rounds in main; the quantized draft every round without it
        session = _quiet(bundled_session, variant, calibration=None, draft_quant=scheme)
        assert _stored_as(session.draft_side.lm.layers[0].mlp.up_proj) == scheme
        assert _stored_as(session.target_side.lm.layers[0].mlp.up_proj) == "none"
        assert session.memory_plan["draft_quant"] == scheme
        for req, ref in zip(toy_requests, toy_reference):
            for mode in schedules.modes():
                if variant == "no-head" and mode == "head-only":
                    continue
                result = session.generate(req, mode)
                assert result.token_ids == ref, (scheme, variant, mode)
                st = result.stats
                if mode in ("sequential", "hide", "head-only"):  # the quantized draft (or the head) drafted
                    assert st["faults"] == 0 and st["accepted_per_verify"] > 1, (scheme, variant, mode, st["faults"])
                    assert mode == "head-only" or st["draft_forwards"] > 0
                assert result.stats["memory_plan"]["draft_quant"] == scheme
                assert result.stats["target_exact"] is True


def test_the_quantized_draft_really_drafts_with_quantized_weights(toy_requests):
    """Guards the test above: the quantized drafts' logits differ from the fp32 draft's (NF4 more
    than int8), so equality with the target is the verifier's doing, not an unquantized draft."""
    from phide.tools.bench import bundled_session

    def draft_logits(session):
        d = session.draft_side
        ids = torch.tensor([list(range(3, 40))])
        n = ids.shape[1]
        cache = d.lm.new_cache(1, n)
        with torch.inference_mode():
            h = d.lm(ids, positions=torch.arange(n)[None], cache=cache, slots=torch.arange(n)[None],
                     attn_mask="causal", kv_len=n)
            return d.lm.logits(h)

    exact = draft_logits(_quiet(bundled_session, "main", calibration=None, draft_quant="none"))
    nf4 = draft_logits(_quiet(bundled_session, "main", calibration=None, draft_quant="nf4"))
    int8 = draft_logits(_quiet(bundled_session, "main", calibration=None, draft_quant="int8"))
    err_nf4, err_int8 = (nf4 - exact).abs().max().item(), (int8 - exact).abs().max().item()
    assert err_nf4 > 1e-3 and err_int8 > 1e-5
    assert err_int8 < err_nf4  # 8 bits per weight round less than 4


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_quantized_draft_keeps_a_transformers_llama_targets_tokens(scheme, tiny_pair):
    rc, out, _ = run_cli(["generate", "--target", str(tiny_pair["target"]), "--prompt", "the quick brown fox",
                       "--mode", "target-only", "--max-new-tokens", "24", "--json"])
    assert rc == 0
    ref = json.loads(out)["token_ids"]
    for mode in ("sequential", "hide", "auto"):
        rc, out, err = run_cli(["generate", "--target", str(tiny_pair["target"]), "--draft", str(tiny_pair["near"]),
                             "--prompt", "the quick brown fox", "--mode", mode, "--max-new-tokens", "24",
                             "--draft-quant", scheme, "--json"])
        assert rc == 0, err
        got = json.loads(out)
        assert got["token_ids"] == ref, (scheme, mode)
        if mode != "auto":  # the quantized draft ran and its drafts were taken
            assert got["stats"]["faults"] == 0 and got["stats"]["draft_forwards"] > 0
            assert got["stats"]["accepted_per_verify"] > 1, (scheme, mode)
        assert got["stats"]["memory_plan"]["draft_quant"] == scheme
        assert got["stats"]["memory_plan"]["chosen_by"] == "flags"


def test_quantized_target_equals_its_own_target_only_and_says_so(tiny_pair, toy_requests):
    from phide.tools.bench import bundled_session

    session = _quiet(bundled_session, "main", calibration=None, draft_quant="none", target_quant="int8")
    for req in toy_requests:
        ref = session.generate(req, "target-only")
        assert ref.stats["target_exact"] is False and ref.stats["memory_plan"]["target_quant"] == "int8"
        for mode in ("sequential", "hide", "head-only"):
            assert session.generate(req, mode).token_ids == ref.token_ids, mode
    # the CLI says it out loud, and the JSON carries it
    rc, out, err = run_cli(["generate", "--target", str(tiny_pair["target"]), "--draft", str(tiny_pair["near"]),
                         "--prompt", "a b c", "--max-new-tokens", "8", "--target-quant", "int8", "--json"])
    assert rc == 0, err
    assert json.loads(out)["stats"]["target_exact"] is False
    assert "quantized (int8)" in err and "may differ" in err


def test_int4_on_a_cpu_is_one_error_naming_what_works(tiny_pair):
    rc, out, err = run_cli(["generate", "--target", str(tiny_pair["target"]), "--draft", str(tiny_pair["near"]),
                         "--prompt", "a b c", "--draft-quant", "int4"])
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("phide: error:")
    assert "int4 needs CUDA" in err and "int8 or nf4" in err


def test_a_missing_library_is_one_error_naming_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    with pytest.raises(PhideError, match=r"--draft-quant int8 needs torchao \(pip install 'phide\[quant\]'\)"):
        quant.check_scheme("int8", "cpu", "draft")
    assert not quant.available("int8") and quant.available("none")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(PhideError, match=r"--target-quant nf4 needs bitsandbytes"):
        quant.check_scheme("nf4", "cpu", "target")


def _cpu_has_avx512_bf16() -> bool:
    try:
        return "avx512_bf16" in open("/proc/cpuinfo").read()
    except OSError:
        return False


@pytest.mark.skipif(not _cpu_has_avx512_bf16(), reason="bitsandbytes asks for a hub kernel only on AVX512-BF16 CPUs")
def test_bitsandbytes_imports_without_fetching_hub_kernels(tmp_path):
    """bitsandbytes' CPU backend asks `kernels.get_kernel` for a hub kernel at import; phide hides
    `kernels` during that import, so nothing is fetched or run, and restores it afterwards. In a
    fresh interpreter (bitsandbytes registers its ops once per process), with a `kernels` stand-in
    that records any call."""
    import subprocess
    import sys

    (tmp_path / "kernels.py").write_text(
        "import pathlib\n"
        "def get_kernel(*a, **k):\n"
        f"    pathlib.Path({str(tmp_path / 'called')!r}).write_text(repr(a))\n")
    code = ("import sys, kernels\n"
            "from phide.models import quant\n"
            "quant.check_scheme('nf4', 'cpu', 'draft')\n"
            "assert 'bitsandbytes' in sys.modules\n"
            "assert sys.modules['kernels'] is kernels\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert not (tmp_path / "called").exists()
    assert "kernels-community" not in run.stderr


def test_measured_weight_bytes_count_the_quantized_storage():
    from phide.models.llama import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    model = LlamaModel(cfg)
    fp32 = quant.weight_bytes(model)
    assert fp32 == 4 * sum(p.numel() for p in model.parameters())
    quant.quantize_decoder(model, "int8")
    # per layer 147,456 int8 weights + 5 bytes (fp32 scale, int8 zero point) for each of 1,024 rows;
    # embeddings, LM head (2 x 64 x 128) and norms (5 x 128) stay fp32
    assert quant.weight_bytes(model) == 2 * (147_456 + 5 * 1_024) + 4 * (2 * 64 * 128 + 5 * 128)


def test_4bit_on_layers_narrower_than_a_block_is_one_clear_error():
    from phide.models.llama import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    with pytest.raises(PhideError, match="blocks of 64: this model has linear layers 32 wide; use int8"):
        quant.quantize_decoder(LlamaModel(cfg), "nf4")
    quant.quantize_decoder(LlamaModel(cfg), "int8")  # int8 has no blocks


def test_a_staged_load_reaches_the_gpu_quantized(monkeypatch):
    """On a GPU a quantized model loads on the CPU and quantize_decoder moves it linear by linear
    (the whole bf16 draft beside the target is what a 24 GB card cannot hold). Checked here by the
    devices each step is given; tests below measure the peak on a real GPU."""
    from phide import session as session_mod
    from phide.models import quant as quant_mod
    from phide.models import registry

    calls = []
    monkeypatch.setattr(registry, "load_frontend",
                        lambda d, role, device, dtype, clip_dir=None: calls.append(("load", device)) or
                        type("F", (), {"lm": torch.nn.Linear(2, 2)})())
    monkeypatch.setattr(quant_mod, "quantize_decoder", lambda lm, scheme, device: calls.append(("quant", device)))
    session_mod._load_quantized("x", "draft", "nf4", device="cuda", dtype=torch.bfloat16)
    session_mod._load_quantized("x", "draft", "none", device="cuda", dtype=torch.bfloat16)
    assert calls == [("load", "cpu"), ("quant", "cuda"), ("load", "cuda"), ("quant", "cuda")]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("scheme", ["int8", "nf4", "int4"])
def test_quantized_draft_on_a_gpu(scheme, toy_requests):
    """On a GPU: the quantized draft loads staged (the peak while loading stays near what is
    finally held), and in fp32 (int8, nf4) the tokens equal target-only's in hide and sequential;
    int4 needs bf16, where tokens may differ from target-only by near-ties (see docs/gpu.md, Numerics),
    so it is only run and checked for faults."""
    from phide.tools.bench import bundled_session

    dtype = torch.bfloat16 if scheme == "int4" else torch.float32
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    s = _quiet(bundled_session, "main", calibration=None, draft_quant=scheme, device="cuda", dtype=dtype)
    held = torch.cuda.memory_allocated()
    assert torch.cuda.max_memory_allocated() <= 1.15 * held + 2 ** 20
    for req in toy_requests:
        ref = s.generate(req, "target-only")
        for mode in ("hide", "sequential"):
            out = s.generate(req, mode)
            assert out.stats["faults"] == 0
            if scheme != "int4":
                assert out.token_ids == ref.token_ids, mode
