"""`phide distill --plan` (phide.distill.cost): the real pair's forwards, disk, GPU memory per rank
and projected H100 time against totals computed by hand from the public configs, the EAGLE-3
head fixture's shape, the printout, and bad arguments."""

import json
from pathlib import Path

import pytest

from phide import memory_plan as mp
from phide.distill.cost import distill_plan, format_plan
from phide.errors import PhideError

REAL = Path(__file__).parent / "fixtures" / "real_configs"
TARGET, DRAFT = REAL / "Video-LLaVA-7B-hf", REAL / "EventGPT-7b"
EAGLE3_HEAD, EAGLE2_HEAD = REAL / "eagle3-head-7B", REAL / "eagle-head-7B"

# the run of the report: 50,000 samples, 10 epochs of 8-sample steps, the draft's adapter
RUN = dict(samples=50_000, max_new_tokens=128, steps=62_500, batch=8, micro_batch=2, ttt_steps=7,
           adapter_steps=2_000, adapter_batch=16, held_out=64, validations=10)

# By hand, from the configs (Video-LLaVA's text config is LLaMA-7B's with vocab 32064; EventGPT's vocab 32000)
P, A, K = 2056 + 20, 128, 7                 # 8 frames x 257 visual tokens + 20 text; answer; unrolled steps
T, W = 2076 + 128, 128 + 7 + 1              # 2204 sequence tokens; the unrolled window
LAYER = 4 * 4096 ** 2 + 3 * 4096 * 11008 + 2 * 4096
LM_T = 32 * LAYER + 2 * 32064 * 4096 + 4096  # 6,738,939,904
LM_D = 32 * LAYER + 2 * 32000 * 4096 + 4096  # 6,738,415,616
HEAD3 = (3 * 4096 * 4096 + 2 * 4096 * (3 * 4096) + 4096 ** 2 + 3 * 4096 * 11008 + 3 * 4096 + 4096
         + 32000 * 4096)                    # fc, q/k/v (read 2H), o, MLP, 3 norms, final norm, LM head
HEAD2 = 2 * 4096 * 4096 + 4096 + LAYER       # fc (2H -> H, bias) + one decoder layer
FILE3 = 2 * (2204 * 4096 + 2204 * 3 * 4096 + 129 * 4096 + 128 * 4096)  # embeds, 3 layers, final, draft_hidden
RATE = 989e12 * 0.6
VERIFIES = 43                                # ceil(128 / 3.0)


def fwd_t(n):  # a target forward over n tokens, seconds
    return (2 * LM_T * n + 2 * 32 * n * n * 4096) / RATE


def fwd_d(n):
    return (2 * LM_D * n + 2 * 32 * n * n * 4096) / RATE


HEAD3_S = 3 * (2 * HEAD3 * 136 * 7 + 2 * (2 * 4096 * 3 * 4096) * 2204) / RATE
ANSWER_S = 0.040 + fwd_t(2075) + 128 * 0.0065
VALIDATE_S = 0.040 + fwd_t(2075) + 43 * 0.0065
DRAFT_S = 0.040 + fwd_d(642 + 128)
READ_S = FILE3 / 2e9


@pytest.fixture(scope="module")
def plans():
    return {(f, g): distill_plan(TARGET, DRAFT, features=f, gpus=g, **RUN)
            for f in ("online", "offline") for g in (1, 8)}


# ----------------------------------------------------------------------------- the head fixture
def test_eagle3_head_fixture_shape_and_params_by_hand():
    head = mp.head_config(EAGLE3_HEAD)
    assert (head.kind, head.n_capture, head.draft_vocab) == ("eagle3", 3, 32000)
    assert head.params() == HEAD3 == 434_126_848
    from phide.models.eagle3 import read_eagle3_config

    assert read_eagle3_config(EAGLE3_HEAD)["capture"] == (2, 16, 29)  # SGLang's ids + 1, as vLLM's say


def test_the_head_built_for_the_target_is_the_fixture_head(plans):
    """No head_dir: the head is built from the target's LM config (Vd = min(32064, 32000)); the
    same numbers come out of the EAGLE-3 fixture."""
    built = plans[("offline", 1)]
    read = distill_plan(TARGET, DRAFT, head_dir=EAGLE3_HEAD, features="offline", **RUN)
    assert built["head_params"] == read["head_params"] == 434_126_848
    assert built["draft_vocab"] == 32000 and built["feature_width"] == 3 * 4096
    assert {k: v for k, v in read.items() if k != "head_dir"} == {k: v for k, v in built.items() if k != "head_dir"}


# ----------------------------------------------------------------------------- counted
def test_shape_and_epochs(plans):
    p = plans[("online", 8)]
    assert (p["prompt_tokens"], p["answer_tokens"], p["sequence_tokens"], p["window_tokens"]) == (2076, 128, 2204, 136)
    assert p["epochs"] == 62_500 * 8 / 50_000 == 10.0 and p["adapter_epochs"] == 2_000 * 16 / 50_000
    assert p["per_rank"]["samples"] == 50_000 // 8 and p["per_rank"]["sample_uses_head"] == 500_000 // 8
    assert p["per_rank"]["micro_batch"] == 1   # a rank's share of an 8-sample step on 8 GPUs
    assert plans[("online", 1)]["per_rank"]["micro_batch"] == 2


def test_online_forwards_by_hand(plans):
    tot, ps = plans[("online", 1)]["total"], plans[("online", 1)]["per_sample"]
    assert tot["target_forwards_by_stage"] == {"answers": 50_000 * 129, "features": 0, "head": 62_500 * 8,
                                               "adapter": 2_000 * 16, "validation": 10 * 64 * (1 + 43)}
    assert tot["target_forwards"] == 6_450_000 + 500_000 + 32_000 + 28_160 == 7_010_160
    assert tot["draft_forwards"] == 32_000
    assert (ps["target_forwards_answers"], ps["target_forwards_head"], ps["target_forwards_adapter"]) == (129, 10, 0.64)
    assert tot["offline_disk_bytes"] == 0 and ps["offline_bytes"] == 0
    assert plans[("online", 8)]["total"]["target_forwards"] == 7_010_160  # ranks split the work, not add to it


def test_offline_forwards_and_disk_by_hand(plans):
    tot, ps = plans[("offline", 1)]["total"], plans[("offline", 1)]["per_sample"]
    assert tot["target_forwards_by_stage"] == {"answers": 6_450_000, "features": 50_000, "head": 0, "adapter": 0,
                                               "validation": 28_160}
    assert tot["target_forwards"] == 6_528_160
    assert tot["draft_forwards"] == 50_000  # once per sample, while its file is written
    assert ps["offline_bytes_parts"] == {"embeds": 2 * 2204 * 4096, "features": 2 * 2204 * 12288,
                                         "final": 2 * 129 * 4096, "draft_hidden": 2 * 128 * 4096}
    assert ps["offline_bytes"] == FILE3 == 74_326_016
    assert tot["offline_disk_bytes"] == 50_000 * 74_326_016
    assert tot["offline_disk_gb"] == pytest.approx(50_000 * 74_326_016 / 2 ** 30, abs=1e-3)  # ~3461 GiB
    assert tot["checkpoint_disk_bytes"] == 2 * 434_126_848 * (4 + 8)


def test_eagle2_file_has_no_final_and_no_draft_hidden_without_a_draft():
    p = distill_plan(TARGET, head_kind="eagle2", features="offline", **{**RUN, "adapter_steps": 0})
    assert p["per_sample"]["offline_bytes_parts"] == {"embeds": 2 * 2204 * 4096, "features": 2 * 2204 * 4096}
    assert p["head_params"] == HEAD2 == 235_941_888
    assert p["total"]["draft_forwards"] == 0 and p["total"]["checkpoint_disk_bytes"] == 2 * 235_941_888 * 12


def test_prompt_tokens_override():
    p = distill_plan(TARGET, prompt_tokens=100, features="offline", **{**RUN, "adapter_steps": 0})
    assert p["sequence_tokens"] == 228
    assert p["per_sample"]["offline_bytes"] == 2 * (228 * 4096 + 228 * 3 * 4096 + 129 * 4096)


def _memory(m, with_draft=True):
    # LM, Video-LLaVA's 23-layer tower, projector
    target = 2 * (LM_T + (303_179_776 - 12_596_224) + (1024 * 4096 + 4096 * 4096 + 2 * 4096))
    draft = 2 * (LM_D + 303_507_456 + (1024 * 4096 + 4096 * 4096 + 2 * 4096) + (4096 * 4096 + 4096))
    return (target + (draft if with_draft else 0) + 16 * 434_126_848
            + m * 2204 * (2 * 32 * 32 * 128 * 2)                        # target KV
            + m * 2204 * ((6 * 4096 + 3 * 11008) * 2 + 2 * 4096 * 4)    # its forward's workspace
            + m * 2204 * (3 * 4096 + 2 * 4096) * 2                      # captured layers, embeds, final
            + m * 2204 * (2 * 4096 + 4096 + 2 * 32 * 128) * 2           # head context: q/k/v in, residual, k/v
            + m * 136 * 7 * ((2 * 4096 + 8 * 4096 + 3 * 11008) * 2 + 3 * 32000 * 4)  # the unrolled window
            + 2 ** 29)                                                  # CUDA context


def test_gpu_memory_per_rank_by_hand(plans):
    one, eight = plans[("online", 1)]["per_rank"], plans[("online", 8)]["per_rank"]
    assert one["gpu_memory_bytes"] == _memory(2)
    assert eight["gpu_memory_bytes"] == _memory(1)
    assert one["gpu_memory_gb"] == pytest.approx(_memory(2) / 2 ** 30, abs=1e-3)  # ~37.3 GiB
    assert one["fits_80gb"] and not one["fits_24gb"]
    parts = one["gpu_memory_parts_gb"]
    assert parts["head training state"] == pytest.approx(16 * 434_126_848 / 2 ** 30, abs=1e-3)
    assert parts["target KV"] == pytest.approx(2 * 2204 * 2 ** 19 / 2 ** 30, abs=1e-3)
    assert parts["CUDA context"] == 0.5 and "draft LM" in parts
    assert plans[("offline", 1)]["per_rank"]["gpu_memory_bytes"] == _memory(2)  # a use's tensors, read or computed


def test_gpu_memory_without_a_draft_eagle2():
    p = distill_plan(TARGET, head_kind="eagle2", **{**RUN, "adapter_steps": 0})
    m = 2
    target = 2 * (LM_T + (303_179_776 - 12_596_224) + (1024 * 4096 + 4096 * 4096 + 2 * 4096))
    expected = (target + 16 * 235_941_888 + m * 2204 * 2 ** 19 + m * 2204 * ((6 * 4096 + 3 * 11008) * 2 + 2 * 4096 * 4)
                + m * 2204 * (4096 + 2 * 4096) * 2                     # final features, embeds, final
                + m * 2204 * (4096 + 4096 + 2 * 32 * 128) * 2          # q/k/v read the fused H
                + m * 136 * 7 * ((2 * 4096 + 8 * 4096 + 3 * 11008) * 2 + 3 * 32064 * 4)  # the target's LM head
                + 2 ** 29)
    assert p["per_rank"]["gpu_memory_bytes"] == expected
    assert not any(k.startswith("draft") for k in p["per_rank"]["gpu_memory_parts_gb"])


# ----------------------------------------------------------------------------- projected
def test_projected_forward_agrees_with_the_planners_h100_prefill():
    # planner.h100_projection: the target's prefill of 2,073 tokens ~48 ms
    assert fwd_t(2073) == pytest.approx(0.048, rel=0.05)
    p = distill_plan(TARGET, prompt_tokens=2074, **{**RUN, "max_new_tokens": 1, "adapter_steps": 0})
    assert p["per_sample"]["h100_seconds"]["answers"] == pytest.approx(0.040 + fwd_t(2073) + 0.0065, abs=1e-6)


def test_online_h100_time_by_hand(plans):
    use = 0.040 + fwd_t(2204) + HEAD3_S
    adapter = 0.040 + fwd_t(2204) + DRAFT_S
    p1, p8 = plans[("online", 1)], plans[("online", 8)]
    assert p1["per_sample"]["h100_seconds"] == pytest.approx(
        {"answers": ANSWER_S, "features": 0.0, "head": use, "adapter": adapter, "validation": VALIDATE_S}, abs=1e-6)
    hours1 = (50_000 * ANSWER_S + 500_000 * use + 32_000 * adapter + 640 * VALIDATE_S) / 3600
    hours8 = (6_250 * ANSWER_S + 62_500 * use + 4_000 * adapter + 640 * VALIDATE_S) / 3600  # validation: rank 0 only
    assert p1["total"]["h100_hours"] == pytest.approx(hours1, abs=1e-3)
    assert p8["total"]["h100_hours"] == pytest.approx(hours8, abs=1e-3)
    assert p8["total"]["gpu_hours"] == pytest.approx(8 * hours8, abs=1e-2)
    assert p1["total"]["h100_hours_by_stage"]["head"] == pytest.approx(500_000 * use / 3600, abs=1e-3)
    assert hours1 == pytest.approx(27.89, abs=0.01)  # the figure the report quotes


def test_offline_h100_time_by_hand(plans):
    write = 0.040 + fwd_t(2204) + DRAFT_S + READ_S   # target + draft forwards, then the file written
    use = READ_S + HEAD3_S
    p1, p8 = plans[("offline", 1)], plans[("offline", 8)]
    assert p1["per_sample"]["h100_seconds"] == pytest.approx(
        {"answers": ANSWER_S, "features": write, "head": use, "adapter": READ_S, "validation": VALIDATE_S}, abs=1e-6)
    hours1 = (50_000 * (ANSWER_S + write) + 500_000 * use + 32_000 * READ_S + 640 * VALIDATE_S) / 3600
    hours8 = (6_250 * (ANSWER_S + write) + 62_500 * use + 4_000 * READ_S + 640 * VALIDATE_S) / 3600
    assert p1["total"]["h100_hours"] == pytest.approx(hours1, abs=1e-3)
    assert p8["total"]["h100_hours"] == pytest.approx(hours8, abs=1e-3)


# ----------------------------------------------------------------------------- the printout
def test_format_plan_prints_the_figures_and_assumptions(plans):
    p = plans[("offline", 1)]
    text = format_plan(p)
    for s in ("6,450,000", "6,528,160", "70.9 MiB", f"{50_000 * FILE3 / 2 ** 30:,.2f} GiB",
              f"{p['total']['h100_hours']:,.2f} h", f"{p['per_rank']['gpu_memory_gb']:.2f} GiB", "fits 80 GB: yes",
              "24 GB: no", "0.0065 s", "989 TFLOP/s", "tau = 3", "2 GB/s"):
        assert s in text, s
    assert all(f"{k}:" in text for k in p["assumptions"])
    assert json.loads(json.dumps(p)) == p  # JSON-able (--plan --json)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("change, match", [
    ({"samples": 0}, "samples must be an integer >= 1"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"features": "disk"}, "features must be one of online, offline"),
    ({"head_kind": "medusa"}, "head_kind must be one of"),
    ({"batch": 6, "gpus": 4}, "batch 6 must be a multiple of the 4 GPUs"),
    ({"held_out": 60_000}, "held_out 60000 is more than the 50000 samples"),
    ({"adapter_batch": 12, "gpus": 8}, "adapter_batch 12 must be a positive multiple of the 8 GPUs"),
    ({"draft_vocab": 40_000}, r"draft_vocab must be in 1\.\.32064"),
    ({"head_dir": EAGLE2_HEAD}, "holds an eagle2 head, head_kind is eagle3"),
])
def test_bad_arguments_raise_phide_errors(change, match):
    with pytest.raises(PhideError, match=match):
        distill_plan(TARGET, DRAFT, **{**RUN, **change})


def test_an_adapter_needs_a_draft_and_a_head_dir_needs_a_config(tmp_path):
    with pytest.raises(PhideError, match="adapter_steps > 0 needs a draft"):
        distill_plan(TARGET, **RUN)
    with pytest.raises(PhideError, match="has no head config"):
        distill_plan(TARGET, DRAFT, head_dir=tmp_path, **RUN)
    with pytest.raises(PhideError, match="draft_vocab is for EAGLE-3"):
        distill_plan(TARGET, head_kind="eagle2", draft_vocab=1000, **{**RUN, "adapter_steps": 0})
