"""Video-LLaVA target adapter: phide vs transformers' VideoLlavaForConditionalGeneration.

Tiny random checkpoints in the real directory format (both weight layouts); transformers loads the
same directories with its own processor. Checks: greedy target-only tokens equal `generate()`,
draft modes (hide / sequential) give the same tokens, prompt ids and pixel values equal the
processor's, visual-token counts (tiny and the real 7B config), weight layouts, missing keys.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch

from phide.engine import Engine, Request
from phide.errors import PhideError
from phide.models.frontends import Prepared
from phide.models.loading import load_llama, load_tokenizer
from phide.models.tiny_video_llava import write_tiny_video_llava
from phide.models.video_llava import (FrameSpec, load_video_llava, parse_config, preprocess_frames, text_config,
                                      visual_token_count)

# LanguageBind/Video-LLaVA-7B-hf config.json (values as published; see reference/models.md 2.1).
REAL_CONFIG = {
    "architectures": ["VideoLlavaForConditionalGeneration"], "model_type": "video_llava",
    "image_token_index": 32000, "video_token_index": 32001, "pad_token_id": 32002, "ignore_index": -100,
    "projector_hidden_act": "gelu", "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
    "vocab_size": 32064, "torch_dtype": "bfloat16",
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "model_type": "llama", "max_position_embeddings": 4096,
                    "rms_norm_eps": 1e-05, "pad_token_id": 0, "vocab_size": 32064},
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                      "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768},
}

QUESTIONS = ["what is the car doing?", "where is the red ball", "how many dogs are there?",
             "the person moves left", "which light is bright", "is the truck near the road?"]


def _quiet(fn, *a, **k):
    with contextlib.redirect_stderr(io.StringIO()):
        return fn(*a, **k)


def _frames(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (8, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two tiny checkpoints: transformers-saved layout (42 px frames) and hub layout (28 px)."""
    from transformers import VideoLlavaForConditionalGeneration, VideoLlavaProcessor

    root = tmp_path_factory.mktemp("video_llava")
    out = {}
    for layout, seed, side in (("transformers", 1, 42), ("hub", 2, 28)):
        d = root / layout
        _quiet(write_tiny_video_llava, d, seed=seed, layout=layout, image_size=side)
        hf = _quiet(VideoLlavaForConditionalGeneration.from_pretrained, str(d)).eval()
        proc = _quiet(VideoLlavaProcessor.from_pretrained, str(d))
        out[layout] = {"dir": d, "hf": hf, "proc": proc, "phide": _quiet(load_video_llava, d), "side": side}
    return out


def _hf_generate(c, question, frames, n):
    inputs = c["proc"](text=f"USER: <video>\n{question} ASSISTANT:", videos=frames, return_tensors="pt")
    with torch.no_grad():
        out = c["hf"].generate(**inputs, do_sample=False, max_new_tokens=n)
    return inputs, out[0, inputs["input_ids"].shape[1]:].tolist()


# (layout, frame seed, frame H, frame W, question, max_new_tokens): frames larger, smaller
# (upscaled), portrait, landscape, and exactly the tower's size.
CASES = [
    ("transformers", 0, 48, 64, 0, 12), ("transformers", 1, 64, 48, 1, 16), ("transformers", 2, 42, 42, 2, 10),
    ("transformers", 3, 30, 20, 3, 14), ("transformers", 4, 90, 160, 4, 12), ("transformers", 5, 57, 43, 5, 20),
    ("hub", 6, 48, 64, 0, 12), ("hub", 7, 28, 28, 1, 16), ("hub", 8, 20, 36, 2, 10),
    ("hub", 9, 120, 90, 3, 14), ("hub", 10, 33, 71, 4, 12), ("hub", 11, 64, 64, 5, 20),
]


@pytest.mark.parametrize("layout,seed,h,w,q,n", CASES)
def test_target_only_matches_transformers_generate(ckpts, layout, seed, h, w, q, n):
    c = ckpts[layout]
    frames, question = _frames(seed, h, w), QUESTIONS[q]
    inputs, ref = _hf_generate(c, question, frames, n)
    target = c["phide"]
    prepared = target.prepare(Request(prompt=question, video=frames))
    assert prepared.ids == inputs["input_ids"][0].tolist()  # same template, same expansion
    assert torch.equal(target.pixel_values(frames), inputs["pixel_values_videos"][0])
    res = Engine(target, None).generate(Request(prompt=question, video=frames,
                                                max_new_tokens=n), "target-only")
    assert res.token_ids == ref
    tpf = (c["side"] // 14) ** 2 + 1
    assert res.stats["target_visual_tokens"] == 8 * tpf and res.stats["target_frames"] == 8
    assert res.stats["target_prompt_tokens"] == len(prepared.ids)


def test_frames_steer_generation(ckpts):
    """The equality above could not tell a model that ignores the video: here the video matters,
    and the prompt-position logits match transformers' forward over the whole vocabulary."""
    c = ckpts["transformers"]
    target = c["phide"]
    outs = set()
    for seed in range(4):
        frames = _frames(100 + seed, 50, 60)
        res = Engine(target, None).generate(Request(prompt=QUESTIONS[0], video=frames,
                                                    max_new_tokens=8), "target-only")
        outs.add(tuple(res.token_ids))
    assert len(outs) >= 3
    # Full-vocabulary logits at the last prompt position (nothing sliced: 448 rows > 387 tokens).
    frames = _frames(7, 50, 60)
    inputs = c["proc"](text=f"USER: <video>\n{QUESTIONS[1]} ASSISTANT:", videos=frames, return_tensors="pt")
    with torch.no_grad():
        ref = c["hf"](**inputs).logits[0, -1]
    prepared = target.prepare(Request(prompt=QUESTIONS[1], video=frames))
    lm = target.lm
    P = len(prepared.ids)
    cache = lm.new_cache(1, P)
    pos = torch.arange(P).view(1, -1)
    mask = torch.ones(P, P, dtype=torch.bool).tril().view(1, P, P)
    with torch.no_grad():
        logits = lm.logits(lm(inputs_embeds=prepared.embeds, positions=pos, cache=cache, slots=pos,
                              attn_mask=mask, kv_len=P))[0, -1]
    assert logits.shape == ref.shape == (448,)
    torch.testing.assert_close(logits, ref, atol=2e-4, rtol=1e-4)


# ------------------------------------------------------------------------------ draft modes
class _TextDraft:
    """Test-local draft frontend: the target's LM (+ noise) as a text-only LLaMA; its prompt is the
    template without the video, so it ends with the target prompt's last token."""

    def __init__(self, lm, tokenizer, target):
        self.lm, self.tokenizer, self.target = lm, tokenizer, target

    def check(self, request) -> None:
        pass

    def prepare(self, request) -> Prepared:
        ids = list(self.tokenizer(f"USER: \n{request.prompt} ASSISTANT:")["input_ids"])
        assert ids[-1] == self.target.prompt_ids(request.prompt)[-1]
        return Prepared(ids)


def _write_text_draft(c, out_dir, noise=0.02, seed=5):
    """Save the tiny target's language model as a plain LlamaForCausalLM directory (+ tokenizer)."""
    from transformers import LlamaForCausalLM

    hf = c["hf"]
    lm = LlamaForCausalLM(hf.config.text_config).eval()
    state = {f"model.{k}": v for k, v in hf.model.language_model.state_dict().items()}
    state["lm_head.weight"] = hf.lm_head.weight
    lm.load_state_dict(state)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(torch.randn(p.shape, generator=g) * noise * p.std())
    lm.save_pretrained(str(out_dir))
    c["proc"].tokenizer.save_pretrained(str(out_dir))


@pytest.mark.parametrize("layout,kind", [("transformers", "text"), ("hub", "text"), ("transformers", "video")])
def test_draft_modes_equal_target_only(ckpts, tmp_path, layout, kind):
    """hide and sequential give target-only's tokens. "text": a text-only draft (no video: few
    acceptances); "video": the same noisy LM fed the target's spliced video embeddings (a
    multimodal draft: Prepared.embeds on the draft lane, many acceptances)."""
    from phide.models.video_llava import VideoLlavaTarget

    c = ckpts[layout]
    _write_text_draft(c, tmp_path / "draft")
    target = c["phide"]
    draft_lm, draft_tok = _quiet(load_llama, tmp_path / "draft"), load_tokenizer(tmp_path / "draft")
    if kind == "text":
        draft = _TextDraft(draft_lm, draft_tok, target)
    else:
        draft = VideoLlavaTarget(draft_lm, draft_tok, target.tower, target.projector,
                                 feature_layers=target.feature_layers, video_token_id=target.video_token_id,
                                 frame_spec=target.frame_spec, image_size=c["side"], patch_size=14)
    engine = Engine(target, draft)
    accepted = 0
    for i in range(3):
        frames = _frames(200 + i, 40 + 8 * i, 56)
        question = QUESTIONS[i + 2]
        base = engine.generate(Request(prompt=question, video=frames, max_new_tokens=16), "target-only")
        for mode in ("hide", "sequential"):
            res = engine.generate(Request(prompt=question, video=frames, max_new_tokens=16), mode)
            assert res.token_ids == base.token_ids, (mode, i)
            assert res.stats["faults"] == 0, res.stats.get("fault_messages")
            accepted += round(res.stats["accepted_drafts_per_verify"] * res.stats["verifies"])
    print(f"{layout}/{kind} draft: tokens accepted over 6 drafted runs of 16: {accepted}")
    if kind == "video":  # a draft that sees the video is accepted, so the accept/commit path ran
        assert accepted > 0


# ------------------------------------------------------------------------------ counts, config
def test_visual_token_counts(ckpts):
    assert visual_token_count(REAL_CONFIG) == 2056
    assert visual_token_count({"vision_config": {"patch_size": 14}}) == 2056  # image_size unset -> 224
    assert visual_token_count({}) == 2056  # no vision_config: VideoLlavaConfig's 224 / 14
    for c in ckpts.values():
        raw = json.loads((c["dir"] / "config.json").read_text())
        side = raw["vision_config"]["image_size"]
        assert visual_token_count(raw) == 8 * ((side // 14) ** 2 + 1) == c["phide"].visual_tokens
        assert visual_token_count(raw) == raw["video_seq_length"]
    # The real config leaves most of text_config unset: transformers' LLaMA defaults fill it.
    cfg = text_config(parse_config(REAL_CONFIG))
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.intermediate_size, cfg.head_dim) == (32064, 4096, 32, 32, 32, 11008, 128)
    assert cfg.rms_norm_eps == 1e-5 and cfg.rope["rope_theta"] == 10000.0 and not cfg.tie_word_embeddings
    with pytest.raises(PhideError, match="model_type"):
        parse_config({**REAL_CONFIG, "model_type": "llava"})


# ------------------------------------------------------------------------------ pixels
PIXEL_SHAPES = [(240, 320), (320, 240), (224, 224), (100, 150), (481, 641), (57, 300)]


def test_pixels_equal_video_processor():
    """phide's preprocessing vs transformers' VideoLlavaVideoProcessor (torchvision backend) at the
    real 224 settings: bit-identical (both run torch's uint8 antialiased bicubic kernel on CPU).
    vs VideoLlavaImageProcessor (PIL resize, what transformers 4.x used for videos): PIL's and
    torch's uint8 bicubic differ by at most 2 uint8 levels in < 1% of values (rounding of the
    fixed-point passes), i.e. <= 2/255/min(std) ~= 0.030 after normalisation."""
    from transformers import VideoLlavaImageProcessor, VideoLlavaVideoProcessor

    vp, ip = VideoLlavaVideoProcessor(), _quiet(VideoLlavaImageProcessor)
    spec = FrameSpec()
    level = 1 / 255 / min(spec.image_std)
    worst_pil, differing = 0.0, []
    for i, (h, w) in enumerate(PIXEL_SHAPES):
        frames = _frames(300 + i, h, w)
        ours = preprocess_frames(frames, spec)
        assert ours.shape == (8, 3, 224, 224) and ours.dtype == torch.float32
        ref = vp(videos=frames, return_tensors="pt")["pixel_values_videos"][0]
        assert torch.equal(ours, ref), (h, w, (ours - ref).abs().max().item())
        # (5.23's image processor still returns `pixel_values_images` unless told otherwise)
        pil = ip(images=list(frames), return_tensors="np", return_legacy_image_output=False)["pixel_values"]
        pil = torch.as_tensor(np.asarray(pil))
        diff = (ours - pil).abs()
        worst_pil = max(worst_pil, diff.max().item())
        differing.append((diff > level / 2).float().mean().item())
        assert diff.max().item() <= 2 * level + 1e-5, (h, w, diff.max().item())
        assert differing[-1] < 0.02, (h, w, differing[-1])
    print(f"max |phide - PIL image processor| = {worst_pil:.5f} (one uint8 level = {level:.5f}); "
          f"values differing: {max(differing):.4%} at most")


def test_pixels_follow_checkpoint_processor_settings(tmp_path):
    """Size, crop, mean and std come from the checkpoint's processor file."""
    from transformers import VideoLlavaVideoProcessor

    from phide.models.video_llava import read_frame_spec

    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 56}, "crop_size": {"height": 56, "width": 56}, "resample": 2,
         "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3], "rescale_factor": 1 / 255}))
    spec = read_frame_spec(tmp_path, 224)
    assert spec.size == {"shortest_edge": 56} and spec.resample == "bilinear" and spec.image_mean == (0.5, 0.4, 0.3)
    vp = VideoLlavaVideoProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, resample=2,
                                  image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    frames = _frames(9, 70, 100)
    ref = vp(videos=frames, return_tensors="pt")["pixel_values_videos"][0]
    ours = preprocess_frames(frames, spec)
    assert ours.shape == ref.shape == (8, 3, 56, 56)
    assert (ours - ref).abs().max().item() <= 1e-5
    # Hub style: only preprocessor_config.json (flat image-processor settings).
    (tmp_path / "video_preprocessor_config.json").unlink()
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 70},
                                                                   "crop_size": {"height": 70, "width": 70}}))
    assert read_frame_spec(tmp_path, 224).crop_size == {"height": 70, "width": 70}
    (tmp_path / "empty").mkdir()
    assert read_frame_spec(tmp_path / "empty", 42).crop_size == {"height": 42, "width": 42}  # no file: tower size


def test_prepare_errors(ckpts):
    target = ckpts["hub"]["phide"]
    with pytest.raises(PhideError, match="needs --video"):
        target.prepare(Request(prompt="what is the car doing?"))
    with pytest.raises(PhideError, match="exactly one <video>"):
        target.prepare(Request(prompt="USER: <video> <video>\nwhat? ASSISTANT:", video=_frames(0, 28, 28)))
    # A full prompt with its own <video> is used as is.
    frames = _frames(1, 30, 40)
    full = target.prepare(Request(prompt="USER: <video>\nwhat is the car doing? ASSISTANT:", video=frames))
    short = target.prepare(Request(prompt="what is the car doing?", video=frames))
    assert full.ids == short.ids and torch.equal(full.embeds, short.embeds)


# ------------------------------------------------------------------------------ weight layouts
def _layout_state(hf_state: dict, layout: str) -> dict:
    """Rename transformers-5 in-memory names (model.language_model.*, model.video_tower.*, lm_head)
    to one checkpoint layout."""
    out = {}
    for k, v in hf_state.items():
        if layout == "hub":
            k = (k.replace("model.language_model.", "language_model.model.")
                 .replace("lm_head.", "language_model.lm_head.")
                 .replace("model.video_tower.", "video_tower.vision_model.")
                 .replace("model.image_tower.", "image_tower.vision_model.")
                 .replace("model.multi_modal_projector.", "multi_modal_projector."))
        elif layout == "v4_memory":  # transformers 4.52-4.57 in memory / save_pretrained
            k = (k.replace("model.video_tower.", "model.video_tower.vision_model.")
                 .replace("model.image_tower.", "model.image_tower.vision_model."))
        elif layout == "v5_memory":
            pass
        elif layout == "v5_saved":  # what 5.23 save_pretrained writes
            k = (k.replace("model.language_model.", "language_model.model.")
                 .replace("lm_head.", "language_model.lm_head.")
                 .replace("model.video_tower.", "video_tower.").replace("model.image_tower.", "image_tower.")
                 .replace("model.multi_modal_projector.", "multi_modal_projector."))
        out[k] = v.detach().clone().contiguous()
    return out


def _write_layout(src_dir, dst_dir, state):
    from safetensors.torch import save_file

    shutil.copytree(src_dir, dst_dir, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    save_file(state, str(dst_dir / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("layout", ["hub", "v4_memory", "v5_memory", "v5_saved"])
def test_weight_layouts_transformers_and_phide_accept(ckpts, tmp_path, layout):
    from safetensors import safe_open
    from transformers import VideoLlavaForConditionalGeneration

    c = ckpts["transformers"]
    if layout == "v5_saved":  # the layout write_tiny_video_llava(layout="transformers") wrote is that one
        with safe_open(str(c["dir"] / "model.safetensors"), "pt") as f:
            keys = set(f.keys())
        assert "language_model.model.embed_tokens.weight" in keys and "video_tower.embeddings.class_embedding" in keys
    d = tmp_path / layout
    _write_layout(c["dir"], d, _layout_state(c["hf"].state_dict(), layout))
    hf, info = _quiet(VideoLlavaForConditionalGeneration.from_pretrained, str(d), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info  # transformers takes it ...
    target = _quiet(load_video_llava, d)  # ... and so does phide, with the same weights
    frames = _frames(42, 44, 52)
    a = target.prepare(Request(prompt=QUESTIONS[0], video=frames))
    b = c["phide"].prepare(Request(prompt=QUESTIONS[0], video=frames))
    assert a.ids == b.ids and torch.equal(a.embeds, b.embeds)
    for name, p in c["phide"].lm.state_dict().items():
        assert torch.equal(target.lm.state_dict()[name], p), name


def test_missing_keys_are_named(ckpts, tmp_path):
    c = ckpts["hub"]
    state = _layout_state(c["hf"].state_dict(), "hub")
    gone = ["video_tower.vision_model.encoder.layers.0.mlp.fc1.weight", "multi_modal_projector.linear_2.bias",
            "language_model.model.layers.1.self_attn.k_proj.weight", "language_model.lm_head.weight"]
    for k in gone:
        del state[k]
    # Unused by video features (last layer, post-layernorm, image tower): not required.
    for k in list(state):
        if k.startswith(("video_tower.vision_model.encoder.layers.1.", "video_tower.vision_model.post_layernorm",
                         "image_tower.")):
            del state[k]
    _write_layout(c["dir"], tmp_path / "broken", state)
    with pytest.raises(PhideError) as err:
        _quiet(load_video_llava, tmp_path / "broken")
    msg = str(err.value)
    for k in gone:
        assert k in msg, (k, msg)
    assert "layers.1." not in msg.replace("language_model.model.layers.1.self_attn.k_proj.weight", "")
    # No video tower at all: the expected names are given.
    state2 = {k: v for k, v in _layout_state(c["hf"].state_dict(), "hub").items() if "video_tower" not in k}
    _write_layout(c["dir"], tmp_path / "no_tower", state2)
    with pytest.raises(PhideError, match="video_tower.vision_model.embeddings.patch_embedding.weight"):
        _quiet(load_video_llava, tmp_path / "no_tower")


# ------------------------------------------------------------------------------ tiny writer
def test_tiny_writer_deterministic_and_cli(tmp_path):
    from safetensors.torch import load_file

    from phide.models.tiny_video_llava import main

    _quiet(write_tiny_video_llava, tmp_path / "a", seed=3, image_size=28)
    with contextlib.redirect_stdout(io.StringIO()):
        assert _quiet(main, [str(tmp_path / "b"), "--seed", "3", "--image-size", "28"]) == 0
    _quiet(write_tiny_video_llava, tmp_path / "c", seed=4, image_size=28)
    a, b, c = (load_file(str(tmp_path / x / "model.safetensors")) for x in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    tok = load_tokenizer(tmp_path / "a")
    base = len(tok) - 3
    assert tok.convert_tokens_to_ids(["<image>", "<video>", "<pad>"]) == [base, base + 1, base + 2]
    raw = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (raw["image_token_index"], raw["video_token_index"], raw["pad_token_id"]) == (base, base + 1, base + 2)
    assert raw["text_config"]["vocab_size"] % 64 == 0 and raw["text_config"]["vocab_size"] > len(tok)
