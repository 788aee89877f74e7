"""EventGPT draft adapter: phide vs an independent reference assembled from transformers parts.

The reference follows the documented EventGPT architecture (reference/models.md section 1):
transformers' CLIPVisionModel (loaded by transformers from the CLIP directory) and its PIL
CLIPImageProcessor, an nn.Sequential projector and an nn.Linear adaptor filled from the raw
safetensors, per-frame encoding, spatio-temporal mean pooling, `tokenizer_event_token`-style
chunked tokenization, and LlamaForCausalLM on inputs_embeds. Tiny random checkpoints, fp32.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from phide.engine import Engine, Request
from phide.errors import PhideError
from phide.models.eventgpt import (EVENT_TOKEN_INDEX, ClipPreprocess, EventGPTDraft, load_eventgpt,
                                   preprocess_frame, quiet_model_type_warning, read_preprocess,
                                   visual_token_count)
from phide.models.tiny_eventgpt import write_tiny_clip, write_tiny_eventgpt

# reference/models.md 1.6: prepare_event_prompt("Describe in detail what happened in the scene.", "eventgpt_v1")
DOC_PROMPT = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the human's questions. USER: <ev_start><event><ev_end>\n"
              "Describe in detail what happened in the scene. ASSISTANT:")
DOC_QUESTION = "Describe in detail what happened in the scene."
QUESTION = "what is the red car doing?"
TINY_SIDE, PATCH = 42, 14
TPF = (TINY_SIDE // PATCH) ** 2 + 1  # 10 tokens per tiny frame


def _quiet(fn, *a, **k):
    with contextlib.redirect_stderr(io.StringIO()):
        return fn(*a, **k)


def _load(path, **kw) -> EventGPTDraft:
    return _quiet(load_eventgpt, path, **kw)


def _frames(seed: int = 0, n: int = 5) -> list[np.ndarray]:
    """EventGPT-like frames: white background, blue/red pixels, a different extent per chunk."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 30 + 7 * i, 55 - 4 * i
        img = np.full((h, w, 3), 255, dtype=np.uint8)
        ys, xs = rng.integers(0, h, 300), rng.integers(0, w, 300)
        img[ys, xs] = np.where(rng.random(300)[:, None] < 0.5, [0, 0, 255], [255, 0, 0]).astype(np.uint8)
        out.append(img)
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny CLIP tower (+ a CLIPModel-format one) and EventGPT checkpoints sharing one tokenizer."""
    root = tmp_path_factory.mktemp("eventgpt")
    _quiet(write_tiny_clip, root / "clip", seed=0)
    _quiet(write_tiny_clip, root / "clip_full", seed=0, layout="clip", legacy_processor=True)
    _quiet(write_tiny_eventgpt, root / "base", clip_dir=root / "clip", seed=1)
    return root


@pytest.fixture(scope="module")
def base(root):
    return _load(root / "base")


def _ckpt(root: Path, name: str, **kw) -> Path:
    out = root / name
    if not out.exists():
        kw.setdefault("clip_dir", root / "clip")
        kw.setdefault("seed", 1)
        _quiet(write_tiny_eventgpt, out, tokenizer_dir=root / "base", **kw)
    return out


# ------------------------------------------------------------------------------ reference
def tokenizer_event_token(prompt: str, tok) -> list[int]:
    """EventGPT common/common.py `tokenizer_event_token`, re-derived for the test."""
    chunks = [tok(c).input_ids for c in prompt.split("<event>")]
    out, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tok.bos_token_id:
        offset = 1
        out.append(chunks[0][0])
    seps = [c for pair in zip(chunks, [[EVENT_TOKEN_INDEX] * (offset + 1)] * len(chunks)) for c in pair][:-1]
    for x in seps:
        out.extend(x[offset:])
    return out


class Reference:
    """EventGPT assembled from transformers parts (see the module docstring)."""

    def __init__(self, ckpt: Path, clip_dir: Path):
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        raw = json.loads((ckpt / "config.json").read_text())
        state = {}
        for f in sorted(ckpt.glob("*.safetensors")):
            state.update(load_file(str(f)))
        self.processor = CLIPImageProcessorPil.from_pretrained(str(clip_dir))
        self.tower = _quiet(CLIPVisionModel.from_pretrained, str(clip_dir)).eval()
        hidden = raw["hidden_size"]
        self.projector = nn.Sequential(nn.Linear(self.tower.config.hidden_size, hidden), nn.GELU(),
                                       nn.Linear(hidden, hidden))
        self.projector.load_state_dict({k[len("model.visual_projector."):]: v for k, v in state.items()
                                        if k.startswith("model.visual_projector.")}, strict=True)
        self.adaptor = nn.Linear(hidden, hidden)
        self.adaptor.load_state_dict({k[len("model.feature_adaptor."):]: v for k, v in state.items()
                                      if k.startswith("model.feature_adaptor.")}, strict=True)
        cfg = LlamaConfig.from_dict({**raw, "model_type": "llama"})
        self.llm = LlamaForCausalLM(cfg).eval()
        lm_keys = {k: v for k, v in state.items() if k == "lm_head.weight" or (
            k.startswith("model.") and not k.startswith(("model.visual_projector.", "model.feature_adaptor.",
                                                         "model.visual_tower.")))}
        self.llm.load_state_dict(lm_keys, strict=True)
        with quiet_model_type_warning():
            self.tok = AutoTokenizer.from_pretrained(str(ckpt))

    @torch.no_grad()
    def event_features(self, frames, *, swap=False, layer=None) -> torch.Tensor:
        per_frame = []
        for f in frames:  # EventGPT encodes the list one frame at a time
            px = torch.from_numpy(self.processor(f, return_tensors="np")["pixel_values"])
            out = self.tower(pixel_values=px, output_hidden_states=layer is not None)
            feat = out.last_hidden_state if layer is None else out.hidden_states[layer]
            per_frame.append(self.adaptor(self.projector(feat)).squeeze(0))
        feats = torch.stack(per_frame)  # [T, tokens, C]
        temporal, spatial = feats.mean(dim=1), feats.mean(dim=0)
        return torch.cat([spatial, temporal] if swap else [temporal, spatial], dim=0)

    @torch.no_grad()
    def embeds(self, frames, question: str, **kw) -> tuple[torch.Tensor, list[int]]:
        ids = tokenizer_event_token(DOC_PROMPT.replace(DOC_QUESTION, question), self.tok)
        at = ids.index(EVENT_TOKEN_INDEX)
        emb = self.llm.get_input_embeddings()
        parts = [emb(torch.tensor(ids[:at])), self.event_features(frames, **kw), emb(torch.tensor(ids[at + 1:]))]
        return torch.cat(parts)[None], ids

    @torch.no_grad()
    def logits(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.llm(inputs_embeds=embeds).logits[0].float()


@torch.no_grad()
def phide_logits(adapter: EventGPTDraft, embeds: torch.Tensor) -> torch.Tensor:
    lm, P = adapter.lm, embeds.shape[1]
    pos = torch.arange(P)[None]
    mask = torch.ones(P, P, dtype=torch.bool).tril()[None]
    h = lm(inputs_embeds=embeds, positions=pos, cache=lm.new_cache(1, P), slots=pos, attn_mask=mask, kv_len=P)
    return lm.logits(h)[0]


# ------------------------------------------------------------------------------ token counts, prompt
def test_visual_token_count_tiny_and_real(root, base):
    tiny = json.loads((root / "clip" / "config.json").read_text())
    assert visual_token_count(tiny) == 5 + TPF == 15
    assert visual_token_count(tiny, n_frames=3) == 3 + TPF
    # openai/clip-vit-large-patch14-336: image 336, patch 14 -> 5 + 24*24 + 1
    assert visual_token_count({"image_size": 336, "patch_size": 14}) == 582
    assert visual_token_count({"model_type": "clip", "vision_config": {"image_size": 336, "patch_size": 14}}) == 582
    assert visual_token_count({"model_type": "EventChat_llama", "mm_visual_tower": "x"}) == 582  # EventGPT config
    assert visual_token_count({"image_size": 336, "patch_size": 14}, n_frames=1) == 578
    from transformers import CLIPVisionConfig

    assert visual_token_count(CLIPVisionConfig(image_size=336, patch_size=14)) == 582
    assert base.visual_tokens == 15 and base.tokens_per_frame == TPF
    p = base.prepare(Request(prompt=QUESTION, events=_frames()))
    assert p.info["visual_tokens"] == 15 and p.info["event_frames"] == 5 and p.info["prompt_tokens"] == len(p.ids)
    p3 = base.prepare(Request(prompt=QUESTION, events=_frames(n=3)))
    assert p3.info["visual_tokens"] == 3 + TPF and len(p3.ids) == len(p.ids) - 2


def test_prompt_string_is_eventgpt_v1():
    assert EventGPTDraft.prompt_text(DOC_QUESTION) == DOC_PROMPT
    # SeparatorStyle.TWO, sep " ": system + sep + "USER: " + msg + sep + "ASSISTANT:"
    system = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the human's questions.")
    msg = "<ev_start><event><ev_end>\n" + QUESTION
    assert EventGPTDraft.prompt_text(QUESTION) == system + " " + "USER: " + msg + " " + "ASSISTANT:"
    full = "USER: <event>\nhi ASSISTANT:"
    assert EventGPTDraft.prompt_text(full) == full  # a full prompt passes unchanged


def test_prompt_ids_bos_once_and_splice(base):
    tok = base.tokenizer
    prompt = EventGPTDraft.prompt_text(QUESTION)
    ids = base.tokenize_prompt(prompt)
    first, second = prompt.split("<event>")
    a, b = tok(first)["input_ids"], tok(second)["input_ids"]
    assert a[0] == b[0] == tok.bos_token_id  # the tokenizer adds BOS to every chunk ...
    assert ids == a + [EVENT_TOKEN_INDEX] + b[1:]  # ... EventGPT keeps it on the first only
    assert ids.count(tok.bos_token_id) == 1 and ids.count(EVENT_TOKEN_INDEX) == 1
    p = base.prepare(Request(prompt=QUESTION, events=_frames()))
    at = ids.index(EVENT_TOKEN_INDEX)
    assert p.ids[:at] == ids[:at] and p.ids[at + 15:] == ids[at + 1:]
    assert p.ids.count(tok.bos_token_id) == 1 and p.ids[0] == tok.bos_token_id
    assert p.ids[-1] == b[-1] and tok.decode(p.ids[at + 15:]).endswith("ASSISTANT:")
    assert p.embeds.shape == (1, len(ids) - 1 + 15, base.lm.cfg.hidden_size)
    # text positions hold the token embeddings
    emb = base.lm.embed_tokens.weight
    assert torch.equal(p.embeds[0, :at], emb[torch.tensor(ids[:at])])
    assert torch.equal(p.embeds[0, at + 15:], emb[torch.tensor(ids[at + 1:])])


class _StubTok:
    """Maps each character to an id; optionally starts every call with BOS (id 1)."""

    bos_token_id, unk_token_id = 1, 0

    def __init__(self, add_bos: bool):
        self.add_bos = add_bos

    def __call__(self, text):
        from transformers import BatchEncoding

        return BatchEncoding({"input_ids": ([1] if self.add_bos else []) + [3 + (ord(c) % 50) for c in text]})


@pytest.mark.parametrize("add_bos", [True, False])
def test_tokenize_prompt_bos_rule_matches_eventgpt(base, add_bos):
    adapter = EventGPTDraft.__new__(EventGPTDraft)
    adapter.tokenizer = _StubTok(add_bos)
    for prompt in ("ab<event>cd", "<event>cd", "ab<event>", "x<event>y<event>z"):
        assert adapter.tokenize_prompt(prompt) == tokenizer_event_token(prompt, _StubTok(add_bos))
    assert adapter.tokenize_prompt("ab<event>cd") == (
        [1, 3 + ord("a") % 50, 3 + ord("b") % 50, EVENT_TOKEN_INDEX, 3 + ord("c") % 50, 3 + ord("d") % 50]
        if add_bos else [3 + ord("a") % 50, 3 + ord("b") % 50, EVENT_TOKEN_INDEX, 3 + ord("c") % 50,
                         3 + ord("d") % 50])


# ------------------------------------------------------------------------------ preprocessing
FRAME_SIZES = [(37, 53), (53, 37), (42, 42), (20, 90), (90, 20), (300, 401), (5, 7)]


def test_preprocess_equals_clip_image_processor(root):
    from transformers import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    pil = CLIPImageProcessorPil.from_pretrained(str(root / "clip"))  # 4.37's CLIPImageProcessor, EventGPT's pin
    tv = CLIPImageProcessor.from_pretrained(str(root / "clip"))  # 5.x default (torch resize)
    spec = read_preprocess([root / "clip"], TINY_SIDE)
    assert spec.shortest_edge == TINY_SIDE and spec.crop == (TINY_SIDE, TINY_SIDE) and spec.resample == 3
    rng = np.random.default_rng(0)
    worst_tv = 0.0
    for hw in FRAME_SIZES:
        f = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
        ours = preprocess_frame(f, spec)
        ref = pil(f, return_tensors="np")["pixel_values"][0]
        assert ours.dtype == np.float32 and ours.shape == ref.shape == (3, TINY_SIDE, TINY_SIDE)
        assert np.array_equal(ours, ref), (hw, np.abs(ours - ref).max())
        worst_tv = max(worst_tv, float(np.abs(ours - tv(f, return_tensors="np")["pixel_values"][0]).max()))
    # the torch-resize processor differs by at most a couple of uint8 levels after normalization
    assert worst_tv <= 2.5 / 255 / min(spec.image_std)


def test_preprocess_real_clip_336_settings():
    """openai/clip-vit-large-patch14-336's preprocessor_config.json (legacy int sizes)."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    legacy = {"crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
              "feature_extractor_type": "CLIPFeatureExtractor",
              "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
              "resample": 3, "size": 336}
    spec = ClipPreprocess.from_dict(legacy, "openai")
    assert spec.shortest_edge == 336 and spec.crop == (336, 336)
    pil = CLIPImageProcessorPil(**legacy)
    rng = np.random.default_rng(1)
    for hw in [(480, 640), (260, 346)]:  # DSEC, DAVIS346
        f = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
        ours, ref = preprocess_frame(f, spec), pil(f, return_tensors="np")["pixel_values"][0]
        assert ours.shape == (3, 336, 336) and np.array_equal(ours, ref)


def test_adapter_pixels_use_clip_dir_processor(root, base):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    pil = CLIPImageProcessorPil.from_pretrained(str(root / "clip"))
    frames = _frames()
    px = base.pixel_values(frames)
    ref = np.stack([pil(f, return_tensors="np")["pixel_values"][0] for f in frames])
    assert np.array_equal(px.numpy(), ref)


# ------------------------------------------------------------------------------ numerics vs reference
@pytest.mark.parametrize("variant", ["base", "ev_patch"])
def test_logits_equal_reference(root, variant):
    kw = {"add_ev_patch": True, "seed": 2} if variant == "ev_patch" else {}
    ckpt = root / "base" if variant == "base" else _ckpt(root, "ev_patch", **kw)
    adapter = _load(ckpt)
    if variant == "ev_patch":
        assert adapter.lm.cfg.vocab_size == len(adapter.tokenizer)  # 384 + <ev_patch>: the 32001 case
    ref = Reference(ckpt, root / "clip")
    frames = _frames(3)
    p = adapter.prepare(Request(prompt=QUESTION, events=frames))
    ref_embeds, ref_ids = ref.embeds(frames, QUESTION)
    at = ref_ids.index(EVENT_TOKEN_INDEX)
    assert p.ids[:at] == ref_ids[:at] and p.ids[at + 15:] == ref_ids[at + 1:]
    assert p.embeds.shape == ref_embeds.shape
    torch.testing.assert_close(p.embeds, ref_embeds, atol=2e-5, rtol=1e-5)
    ours, theirs = phide_logits(adapter, p.embeds), ref.logits(ref_embeds)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # the comparison is sensitive to the documented choices: pooling order, feature layer
    swapped = ref.event_features(frames, swap=True)
    penultimate = ref.event_features(frames, layer=-2)
    mine = p.embeds[0, at:at + 15]
    assert (mine - swapped).abs().max() > 1e-2 and (mine - penultimate).abs().max() > 1e-2


def test_greedy_equals_generate(root, base):
    ref = Reference(root / "base", root / "clip")
    frames = _frames(4)
    ref_embeds, _ = ref.embeds(frames, QUESTION)
    n = 12
    with torch.no_grad():
        gen = ref.llm.generate(inputs_embeds=ref_embeds, max_new_tokens=n, do_sample=False, eos_token_id=2,
                               pad_token_id=0, attention_mask=torch.ones(ref_embeds.shape[:2], dtype=torch.long))
    want = gen[0].tolist()
    engine = Engine(base)  # the EventGPT adapter on the TARGET side, just to decode greedily
    got = engine.generate(Request(prompt=QUESTION, events=frames, max_new_tokens=n), "target-only").token_ids
    assert got == want and len(got) >= 1


def test_as_draft_in_hide_mode_is_lossless(root, base):
    draft = _load(root / "base")
    frames = _frames(5)
    req = dict(prompt=QUESTION, events=frames, max_new_tokens=10)
    alone = Engine(base).generate(Request( **req), "target-only").token_ids
    for mode in ("hide", "sequential"):
        res = Engine(base, draft).generate(Request( **req), mode)
        assert res.token_ids == alone
        assert res.stats["faults"] == 0 and res.stats["draft_visual_tokens"] == 15
        assert res.stats["accepted_per_verify"] > 1.5  # identical draft: most proposals accepted


# ------------------------------------------------------------------------------ layouts, vocab, keys
@pytest.mark.parametrize("layout", ["bare_adapters", "with_tower", "with_tower_v5", "split"])
def test_layout_variants_load(root, base, layout):
    ckpt = _ckpt(root, f"layout_{layout}", layout=layout)
    if layout == "with_tower_v5":  # tower weights in the checkpoint, CLIP directory out of reach
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["mm_visual_tower"] = "does/not/exist"
        (ckpt / "config.json").write_text(json.dumps(cfg))
    adapter = _load(ckpt)
    frames = _frames(6)
    want = base.prepare(Request(prompt=QUESTION, events=frames))
    got = adapter.prepare(Request(prompt=QUESTION, events=frames))
    assert got.ids == want.ids
    torch.testing.assert_close(got.embeds, want.embeds, atol=1e-5, rtol=1e-5)


def test_checkpoint_tower_weights_take_precedence(root):
    """EventChatModel.from_pretrained loads the checkpoint over the CLIP directory's tower."""
    from safetensors.torch import load_file, save_file

    ckpt = root / "tower_override"
    shutil.copytree(_ckpt(root, "layout_with_tower", layout="with_tower"), ckpt)
    state = load_file(str(ckpt / "model.safetensors"))
    key = "model.visual_tower.visual_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    state[key] = state[key] + 0.5
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    adapter = _load(ckpt)
    assert torch.equal(adapter.tower.encoder.layers[0].mlp.fc1.weight, state[key])


def test_clip_model_format_tower_dir(root, base):
    """A whole-CLIPModel directory (openai's hub layout: vision_model.*, nested config, legacy processor)."""
    adapter = _load(root / "base", clip_dir=root / "clip_full")
    frames = _frames(7)
    want = base.prepare(Request(prompt=QUESTION, events=frames))
    got = adapter.prepare(Request(prompt=QUESTION, events=frames))
    torch.testing.assert_close(got.embeds, want.embeds, atol=1e-5, rtol=1e-5)


def test_config_vocab_disagreeing_with_weights(root):
    ckpt = root / "vocab_mismatch"
    shutil.copytree(_ckpt(root, "ev_patch", add_ev_patch=True, seed=2), ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    rows = cfg["vocab_size"]
    cfg["vocab_size"] = rows - 1  # e.g. config says 32000, weights hold 32001 rows
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert _load(ckpt).lm.cfg.vocab_size == rows


def test_start_end_tokens_mirror_inference(root):
    ckpt = _ckpt(root, "start_end", start_end=True, seed=3)
    adapter = _load(ckpt)
    tok, n = adapter.tokenizer, adapter.lm.cfg.vocab_size - 3  # n = the saved tokenizer's size
    assert [tok.convert_tokens_to_ids(t) for t in ("<ev_patch>", "<ev_start>", "<ev_end>")] == [n, n + 1, n + 2]
    p = adapter.prepare(Request(prompt=QUESTION, events=_frames()))
    at = p.ids.index(n + 1)
    assert p.ids.count(n + 1) == 1 and p.ids.count(n + 2) == 1 and p.ids[at + 16] == n + 2  # 15 event tokens


def test_missing_keys_are_named(root, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "broken"
    shutil.copytree(root / "base", ckpt)
    state = load_file(str(ckpt / "model.safetensors"))
    gone = ["model.feature_adaptor.weight", "model.visual_projector.2.bias", "model.layers.1.mlp.up_proj.weight",
            "lm_head.weight"]
    for k in gone:
        del state[k]
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["mm_visual_tower"] = str((root / "clip").resolve())
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PhideError) as e:
        _load(ckpt)
    for k in gone:
        assert k in str(e.value)


def test_bad_weight_shape_is_reported(root, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "shape"
    shutil.copytree(root / "base", ckpt)
    state = load_file(str(ckpt / "model.safetensors"))
    state["model.visual_projector.0.weight"] = state["model.visual_projector.0.weight"][:, :-1].contiguous()
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["mm_visual_tower"] = str((root / "clip").resolve())
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PhideError, match="model.visual_projector.0.weight has shape"):
        _load(ckpt)


# ------------------------------------------------------------------------------ CLIP path resolution
def _with_tower_path(ckpt: Path, value) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    if value is None:
        cfg.pop("mm_visual_tower", None)
    else:
        cfg["mm_visual_tower"] = value
    (ckpt / "config.json").write_text(json.dumps(cfg))


def test_clip_path_relative_pair_is_relocatable(root, tmp_path):
    assert json.loads((root / "base" / "config.json").read_text())["mm_visual_tower"] == "../clip"
    shutil.copytree(root / "clip", tmp_path / "moved" / "clip")
    shutil.copytree(root / "base", tmp_path / "moved" / "base")
    assert _load(tmp_path / "moved" / "base").tokens_per_frame == TPF


def test_clip_path_absolute_explicit_subfolder_cwd(root, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(root / "base", ckpt)
    _with_tower_path(ckpt, str((root / "clip").resolve()))  # absolute
    assert _load(ckpt).tokens_per_frame == TPF
    _with_tower_path(ckpt, "/nonexistent/clip-vit-large-patch14-336")
    assert _load(ckpt, clip_dir=root / "clip").tokens_per_frame == TPF  # explicit wins
    for sub in ("visual_tower", "clip"):  # subfolder fallback
        shutil.copytree(root / "clip", ckpt / sub)
        assert _load(ckpt).tokens_per_frame == TPF
        shutil.rmtree(ckpt / sub)
    shutil.copytree(root / "clip", tmp_path / "work" / "checkpoints" / "clip-336")
    _with_tower_path(ckpt, "./checkpoints/clip-336")  # as the EventGPT README has it: relative to the run dir
    monkeypatch.chdir(tmp_path / "work")
    assert _load(ckpt).tokens_per_frame == TPF


def test_clip_path_errors_are_clear(root, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(root / "base", ckpt)
    _with_tower_path(ckpt, "missing/clip-vit")
    with pytest.raises(PhideError) as e:
        _load(ckpt)
    msg = str(e.value)
    for part in ("CLIP", str(ckpt / "missing" / "clip-vit"), "relative to the checkpoint",
                 "relative to the working directory", str(ckpt / "visual_tower"), str(ckpt / "clip"),
                 "mm_visual_tower", "clip_dir"):
        assert part in msg, part
    with pytest.raises(PhideError, match="no config.json"):
        _load(ckpt, clip_dir=tmp_path / "nowhere")
    _with_tower_path(ckpt, None)
    with pytest.raises(PhideError, match="has no mm_visual_tower"):
        _load(ckpt)
    _with_tower_path(ckpt, "openai/clip-vit-large-patch14-336")  # a hub id, offline and not cached
    with pytest.raises(PhideError, match="not in the local Hugging Face cache"):
        _load(ckpt)


def test_not_an_eventgpt_checkpoint(tmp_path, root):
    ckpt = tmp_path / "llama"
    shutil.copytree(root / "base", ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "llama"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PhideError, match="not an EventGPT checkpoint"):
        _load(ckpt)


# ------------------------------------------------------------------------------ event inputs
def test_events_required_and_validated(base):
    with pytest.raises(PhideError, match="EventGPT draft needs --events"):
        base.prepare(Request(prompt=QUESTION))
    with pytest.raises(PhideError, match="HxWx3 uint8"):
        base.prepare(Request(prompt=QUESTION, events=[np.zeros((10, 10, 3), np.float32)] * 5))
    with pytest.raises(PhideError, match="exactly one <event>"):
        base.prepare(Request(prompt="a <event> b <event> c", events=_frames()))


def test_frame_array_and_event_stream_inputs(base, tmp_path):
    from phide.io.events import EventStream, load_event_frames

    frames = _frames(8)
    same = [f[:28, :36] for f in frames]  # equal sizes so they stack
    a = base.prepare(Request(prompt=QUESTION, events=same))
    b = base.prepare(Request(prompt=QUESTION, events=np.stack(same)))
    assert torch.equal(a.embeds, b.embeds)

    rng = np.random.default_rng(9)
    n = 2000
    ev = {"x": rng.integers(0, 64, n).astype(np.uint16), "y": rng.integers(0, 48, n).astype(np.uint16),
          "t": np.sort(rng.integers(0, 40_000, n)).astype(np.int64), "p": rng.integers(0, 2, n).astype(np.int8)}
    rendered = load_event_frames(ev, n_frames=5)
    want = base.prepare(Request(prompt=QUESTION, events=rendered))
    for source in (ev, EventStream.from_mapping(ev)):
        got = base.prepare(Request(prompt=QUESTION, events=source))
        assert got.info["event_frames"] == 5 and torch.equal(got.embeds, want.embeds)
    np.savez(tmp_path / "ev.npz", **ev)
    got = base.prepare(Request(prompt=QUESTION, events=str(tmp_path / "ev.npz")))
    assert torch.equal(got.embeds, want.embeds)


def test_tiny_writer_cli(tmp_path):
    from phide.models.tiny_eventgpt import main

    assert _quiet(main, [str(tmp_path / "t")]) == 0
    adapter = _load(tmp_path / "t" / "eventgpt")
    assert adapter.visual_tokens == 15
    assert adapter.prepare(Request(prompt=QUESTION, events=_frames())).embeds.shape[1] > 15
