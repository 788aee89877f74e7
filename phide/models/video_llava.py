"""The Video-LLaVA target frontend: 8 RGB frames + a question -> input embeddings for phide's decoder.

Borrowed from transformers: the CLIP video tower (`CLIPVisionModel`, loaded from the checkpoint's
own weights) and the configuration classes (so unset fields get transformers' defaults: the real
`LanguageBind/Video-LLaVA-7B-hf` config.json leaves most of text_config and vision_config.image_size
unset). Owned by phide: frame preprocessing, the projector, the prompt, the splice, and the LM.

What the frontend reproduces (transformers 5.23 `VideoLlavaForConditionalGeneration`):
  frames   8 frames [8,H,W,3] uint8 RGB; shortest edge -> crop size (bicubic, antialiased, on uint8
           tensors: torch's kernel, which is what `VideoLlavaVideoProcessor` calls through
           torchvision on CPU), center crop, rescale 1/255, OPENAI-CLIP mean/std (fused like the
           processor: (x - 255*mean) / (255*std)).
  features video tower hidden_states[vision_feature_layer] (-2), ALL tokens including CLS (no
           `[:, 1:]` for video), then Linear -> act -> Linear: tokens_per_frame = (S/patch)^2 + 1
           (257 for 224/14; 2056 for 8 frames).
  prompt   "USER: <video>\\n{question} ASSISTANT:"; the one <video> id becomes 8 * tokens_per_frame
           copies whose embeddings are the projected features in order (masked_scatter order).
The target's logits are never sliced: its distribution stays its own.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from phide.errors import PhideError
from phide.models.frontends import Prepared, check_path
from phide.models.llama import LlamaConfig, LlamaModel
from phide.models.loading import (check_layer_count, fill_module, llama_config, llama_from_state_dict,
                                  load_state_dict, load_tokenizer, pick_prefix, progress, read_config)
from phide.models.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, common_fields

NUM_FRAMES = 8
PROMPT_TEMPLATE = "USER: <video>\n{question} ASSISTANT:"
VIDEO_TOKEN = "<video>"

# Where each part of the model lives, for every weight layout transformers loads:
#   hub / conversion script / transformers-5 save_pretrained: language_model.model.*, language_model.lm_head.weight
#   transformers >= 4.52 in memory (and its save_pretrained):  model.language_model.*, lm_head.weight
# The CLIP towers appear with and without their `vision_model.` level (5.x CLIPVisionModel has none).
LM_PREFIXES = ("language_model.model.", "model.language_model.", "language_model.")
TOWER_PREFIXES = ("video_tower.vision_model.", "model.video_tower.vision_model.", "video_tower.",
                  "model.video_tower.")
PROJECTOR_PREFIXES = ("multi_modal_projector.", "model.multi_modal_projector.")
_OPTIONAL_TOWER = ("post_layernorm.",)  # unused for features (taken before it); loaded when present

_RESAMPLE = {2: "bilinear", 3: "bicubic", "bilinear": "bilinear", "bicubic": "bicubic"}


def visual_token_count(config: dict, num_frames: int = NUM_FRAMES) -> int:
    """Visual tokens one video occupies: num_frames * ((image_size // patch_size) ** 2 + 1).

    `config` is a Video-LLaVA config.json dict. Unset fields take transformers' defaults: no
    vision_config at all -> VideoLlavaConfig's (224 / 14); a vision_config without image_size /
    patch_size -> CLIPVisionConfig's (224 / 32).
    """
    vision = config.get("vision_config")
    if vision is None:
        image, patch = 224, 14
    else:
        image, patch = int(vision.get("image_size") or 224), int(vision.get("patch_size") or 32)
    return num_frames * ((image // patch) ** 2 + 1)


# ---------------------------------------------------------------------------------------- frames
@dataclass
class FrameSpec:
    """Frame preprocessing, as a transformers (video) processor config describes it."""

    size: dict = field(default_factory=lambda: {"shortest_edge": 224})
    crop_size: dict = field(default_factory=lambda: {"height": 224, "width": 224})
    resample: str = "bicubic"
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple = OPENAI_CLIP_MEAN
    image_std: tuple = OPENAI_CLIP_STD
    source: str = "defaults"

    @classmethod
    def from_dict(cls, d: dict, source: str, default_side: int) -> "FrameSpec":
        def as_size(v, shortest: bool) -> dict:
            if v is None:
                return {"shortest_edge": default_side} if shortest else {"height": default_side, "width": default_side}
            if isinstance(v, int):
                return {"shortest_edge": v} if shortest else {"height": v, "width": v}
            if isinstance(v, (list, tuple)) and len(v) == 2:
                return {"height": int(v[0]), "width": int(v[1])}
            if isinstance(v, dict):
                if v.get("shortest_edge"):
                    return {"shortest_edge": int(v["shortest_edge"])}
                if v.get("height") and v.get("width"):
                    return {"height": int(v["height"]), "width": int(v["width"])}
            raise PhideError(f"{source}: unsupported size {v!r}")

        resample = d.get("resample", 3)
        if resample not in _RESAMPLE:
            raise PhideError(f"{source}: unsupported resample {resample!r} (phide supports bilinear, bicubic)")

        return cls(size=as_size(d.get("size"), True), crop_size=as_size(d.get("crop_size"), False),
                   resample=_RESAMPLE[resample], source=source, **common_fields(d))


def read_frame_spec(model_dir: str | os.PathLike, image_size: int) -> FrameSpec:
    """The checkpoint's frame preprocessing: the video processor's settings when saved
    (processor_config.json "video_processor", video_preprocessor_config.json), else the image
    processor's (preprocessor_config.json, as on the hub; processor_config.json "image_processor"),
    else Video-LLaVA's defaults at the tower's image size."""
    path = Path(model_dir)

    def load(name):
        f = path / name
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PhideError(f"{f} is not valid JSON ({exc})") from None

    proc = load("processor_config.json") or {}
    candidates = [
        ("processor_config.json[video_processor]", proc.get("video_processor")),
        ("video_preprocessor_config.json", load("video_preprocessor_config.json")),
        ("preprocessor_config.json", load("preprocessor_config.json")),
        ("processor_config.json[image_processor]", proc.get("image_processor")),
    ]
    for name, d in candidates:
        if isinstance(d, dict):
            return FrameSpec.from_dict(d, f"{path}/{name}", image_size)
    return FrameSpec(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def _resized_hw(h: int, w: int, size: dict) -> tuple[int, int]:
    if "shortest_edge" in size:  # transformers' get_resize_output_image_size(default_to_square=False)
        short = size["shortest_edge"]
        if w <= h:
            return int(short * h / w), short
        return short, int(short * w / h)
    return size["height"], size["width"]


def preprocess_frames(frames: np.ndarray, spec: FrameSpec) -> torch.Tensor:
    """[F,H,W,3] uint8 RGB frames -> [F,3,S,S] float32 pixel values (on CPU).

    Mirrors `VideoLlavaVideoProcessor` (torchvision backend): the resize runs on the uint8 tensor
    with antialiasing (torch's separable uint8 kernel, the one torchvision calls on CPU, so the
    result is bit-identical to the processor's; it is Pillow's algorithm, but PIL's own BICUBIC,
    which `VideoLlavaImageProcessor` and transformers 4.x video inputs use, differs by <= 2 uint8
    levels in < 1% of values), crop offsets int((H - crop) / 2), then the fused rescale + normalize.
    Runs on CPU whatever the model's device: the uint8 bicubic kernel is CPU-only in torch
    (torchvision on CUDA resizes in float, which would not match bit for bit).
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()  # [F,3,H,W] uint8
    if spec.do_resize:
        h, w = x.shape[-2:]
        nh, nw = _resized_hw(h, w, spec.size)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode=spec.resample, antialias=True, align_corners=False)
    if spec.do_center_crop:
        ch, cw = spec.crop_size["height"], spec.crop_size["width"]
        h, w = x.shape[-2:]
        if ch > h or cw > w:  # pad like the processor (torchvision pad, fill 0)
            left, top = max(cw - w, 0) // 2, max(ch - h, 0) // 2
            x = F.pad(x, (left, max(cw - w, 0) - left, top, max(ch - h, 0) - top))
            h, w = x.shape[-2:]
        top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
        x = x[:, :, top:top + ch, left:left + cw]
    mean = torch.tensor(spec.image_mean, dtype=torch.float32)
    std = torch.tensor(spec.image_std, dtype=torch.float32)
    if spec.do_rescale and spec.do_normalize:
        mean, std = mean * (1.0 / spec.rescale_factor), std * (1.0 / spec.rescale_factor)
    x = x.to(torch.float32)
    if spec.do_normalize:
        return (x - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
    if spec.do_rescale:
        return x * spec.rescale_factor
    return x


def _as_frames(video) -> np.ndarray:
    """request.video -> [8,H,W,3] uint8 frames. An already-sampled 8-frame uint8 HWC array is used
    as is; anything else (file, frame folder, other arrays) goes through phide.io.video."""
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    if (isinstance(video, np.ndarray) and video.dtype == np.uint8 and video.ndim == 4
            and video.shape[0] == NUM_FRAMES and video.shape[-1] == 3):
        return video
    try:
        from phide.io.video import load_video_frames
    except ImportError as exc:
        raise PhideError(f"cannot read videos: phide.io.video is unavailable ({exc})") from None
    return load_video_frames(video, num_frames=NUM_FRAMES)


# ---------------------------------------------------------------------------------------- model
class Projector(nn.Module):
    """Video-LLaVA's multi-modal projector: Linear -> act -> Linear (names match the checkpoint)."""

    def __init__(self, in_dim: int, out_dim: int, act: str, bias: bool = True):
        super().__init__()
        from transformers.activations import ACT2FN

        if act not in ACT2FN:
            raise PhideError(f"unsupported projector_hidden_act {act!r}")
        self.linear_1 = nn.Linear(in_dim, out_dim, bias=bias)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(out_dim, out_dim, bias=bias)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class VideoLlavaTarget:
    """Frontend for a Video-LLaVA checkpoint (see the module docstring). `prepare(request)` reads
    `request.prompt` (the question, or a full prompt containing "<video>") and `request.video`."""

    def __init__(self, lm: LlamaModel, tokenizer, tower: nn.Module, projector: Projector, *,
                 feature_layers: list[int], video_token_id: int, frame_spec: FrameSpec, image_size: int,
                 patch_size: int):
        self.lm, self.tokenizer = lm, tokenizer
        self.tower, self.projector = tower, projector
        self.feature_layers = feature_layers
        self.video_token_id = video_token_id
        self.frame_spec = frame_spec
        self.tokens_per_frame = (image_size // patch_size) ** 2 + 1
        self.num_frames = NUM_FRAMES

    @property
    def visual_tokens(self) -> int:
        return self.num_frames * self.tokens_per_frame

    def pixel_values(self, frames: np.ndarray) -> torch.Tensor:
        return preprocess_frames(frames, self.frame_spec)

    @torch.inference_mode()
    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """[F,3,S,S] pixel values -> projected features [F * tokens_per_frame, hidden]."""
        p = next(self.tower.parameters())
        out = self.tower(pixel_values=pixels.to(device=p.device, dtype=p.dtype), output_hidden_states=True)
        hs = out.hidden_states
        feats = hs[self.feature_layers[0]] if len(self.feature_layers) == 1 else \
            torch.cat([hs[i] for i in self.feature_layers], dim=-1)
        proj = self.projector(feats)
        return proj.reshape(-1, proj.shape[-1])

    def prompt_text(self, question: str) -> str:
        return question if VIDEO_TOKEN in question else PROMPT_TEMPLATE.format(question=question)

    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of the prompt with ONE video placeholder (before expansion)."""
        ids = list(self.tokenizer(self.prompt_text(question))["input_ids"])
        n = ids.count(self.video_token_id)
        if n != 1:
            raise PhideError(f"the Video-LLaVA prompt must contain exactly one <video>, found {n}")
        return ids

    @torch.inference_mode()
    def check(self, request) -> None:
        if request.video is None:
            raise PhideError("Video-LLaVA target needs --video")
        if request.prompt is None:
            raise PhideError("Video-LLaVA target needs --prompt (the question about the video)")
        check_path(request.video, "video")

    def prepare(self, request) -> Prepared:
        self.check(request)
        frames = _as_frames(request.video)
        ids = self.prompt_ids(request.prompt)
        at = ids.index(self.video_token_id)
        ids = ids[:at] + [self.video_token_id] * self.visual_tokens + ids[at + 1:]
        if ids[-1] == self.video_token_id:
            raise PhideError("the Video-LLaVA prompt must not end with <video>")
        feats = self.encode_video(self.pixel_values(frames))
        if feats.shape[0] != self.visual_tokens:
            raise PhideError(f"video features cover {feats.shape[0]} tokens, the prompt {self.visual_tokens}")
        dev = self.lm.device
        embeds = self.lm.embed_tokens(torch.tensor([ids], dtype=torch.int64, device=dev))
        embeds[0, at:at + self.visual_tokens] = feats.to(device=dev, dtype=embeds.dtype)
        return Prepared(ids, embeds, {"visual_tokens": self.visual_tokens, "frames": int(frames.shape[0]),
                                      "prompt_tokens": len(ids)})


# ---------------------------------------------------------------------------------------- loading
def parse_config(raw: dict):
    """config.json dict -> transformers VideoLlavaConfig (unset fields get transformers' defaults)."""
    from transformers import VideoLlavaConfig

    if raw.get("model_type") != "video_llava":
        raise PhideError(f"not a Video-LLaVA checkpoint (model_type {raw.get('model_type')!r}, "
                         "expected 'video_llava')")
    try:
        return VideoLlavaConfig.from_dict(raw)
    except Exception as exc:  # strict dataclass validation raises several types
        raise PhideError(f"invalid Video-LLaVA config ({type(exc).__name__}: {exc})") from None


def text_config(vl, where: str = "config.json text_config") -> LlamaConfig:
    d = vl.text_config.to_dict()
    if d.get("model_type", "llama") != "llama":
        raise PhideError(f"Video-LLaVA text model {d.get('model_type')!r} is not a LLaMA")
    d["tie_word_embeddings"] = bool(getattr(vl, "tie_word_embeddings", False) or d.get("tie_word_embeddings"))
    return llama_config(d, where)


def tower_config(vl):
    """(CLIPVisionConfig of the video tower phide builds, the hidden-state indices it reads).
    hidden_states[k] needs only the first k encoder layers: the tower is cut after the last."""
    vcfg = copy.deepcopy(vl.vision_config)
    layers = _feature_layers(vl.vision_feature_layer, vcfg.num_hidden_layers)
    vcfg.num_hidden_layers = max(max(layers), 1)
    return vcfg, layers


def _feature_layers(layer, n_layers: int) -> list[int]:
    layers = [layer] if isinstance(layer, int) else list(layer)
    n_states = n_layers + 1  # hidden_states = (embeddings, layer 1 ... layer N)
    out = []
    for i in layers:
        if not -n_states <= int(i) < n_states:
            raise PhideError(f"vision_feature_layer {i} is out of range for a {n_layers}-layer tower")
        out.append(int(i) % n_states)
    return out


def _load_module(module: nn.Module, state: dict, prefixes, probe: str, missing: list, optional=()) -> None:
    """Fill `module` (built on the meta device) from state[prefix + name], the prefix being the
    first of `prefixes` under which `probe` exists; appends absent keys to `missing`."""
    prefix = pick_prefix(state, prefixes, probe)
    if prefix is None:
        missing.append(f"{prefixes[0]}{probe} (or under {', '.join(prefixes[1:])})")
        return
    fill_module(module, state, prefix, missing, optional)


def _missing_lm_keys(cfg: LlamaConfig, state: dict, prefix: str, where: str) -> list[str]:
    """Decoder keys absent from `state`, named in the checkpoint's own layout (after the layer count
    is checked: layers beyond text_config's count are a config error, not missing weights)."""
    check_layer_count(cfg, state, prefix, where)
    with torch.device("meta"):
        names = list(LlamaModel(cfg).state_dict())
    out = [f"{prefix}{n}" for n in names if n != "lm_head.weight" and f"{prefix}{n}" not in state]
    if not cfg.tie_word_embeddings and not any(k in state for k in ("lm_head.weight", "language_model.lm_head.weight")):
        out.append("language_model.lm_head.weight" if prefix.startswith("language_model.") else "lm_head.weight")
    return out


def load_video_llava(model_dir: str | os.PathLike, device="cpu", dtype=torch.float32) -> VideoLlavaTarget:
    """Load a Video-LLaVA checkpoint directory (any layout transformers loads) as a target frontend."""
    from transformers import CLIPVisionModel

    t0 = time.perf_counter()
    where = f"{Path(model_dir) / 'config.json'} text_config"
    vl = parse_config(read_config(model_dir))
    cfg = text_config(vl, where)  # config problems surface here, long before the tokenizer loads
    vcfg, layers = tower_config(vl)
    progress(f"loading Video-LLaVA target from {model_dir} ...")
    state = load_state_dict(model_dir)

    missing: list[str] = []
    with torch.device("meta"):
        tower = CLIPVisionModel(vcfg)
        projector = Projector(vcfg.hidden_size * len(layers), cfg.hidden_size, vl.projector_hidden_act,
                              bias=getattr(vl, "multimodal_projector_bias", True))
    _load_module(tower, state, TOWER_PREFIXES, "embeddings.patch_embedding.weight", missing,
                 optional=_OPTIONAL_TOWER)
    _load_module(projector, state, PROJECTOR_PREFIXES, "linear_1.weight", missing)
    lm_prefix = pick_prefix(state, LM_PREFIXES, "embed_tokens.weight")
    if lm_prefix is None:
        missing.append(f"{LM_PREFIXES[0]}embed_tokens.weight (or under {', '.join(LM_PREFIXES[1:])})")
    else:
        missing += _missing_lm_keys(cfg, state, lm_prefix, where)
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise PhideError(f"{model_dir}: checkpoint is missing Video-LLaVA weights: {shown}")
    lm = llama_from_state_dict(cfg, state, device=device, dtype=dtype, prefix=lm_prefix, where=where)
    del state
    # Non-persistent buffers are not in checkpoints: rebuild them off the meta device.
    n_pos = tower.embeddings.position_embedding.weight.shape[0]
    tower.embeddings.position_ids = torch.arange(n_pos).expand((1, -1))
    left = [n for n, t in list(tower.named_parameters()) + list(tower.named_buffers()) if t.is_meta]
    if left:
        raise PhideError(f"internal: video tower tensors not loaded: {', '.join(left)}")
    tower = tower.to(device=device, dtype=dtype).eval()
    projector = projector.to(device=device, dtype=dtype).eval()

    tokenizer = load_tokenizer(model_dir)
    video_id = int(vl.video_token_index)
    tok_video = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    if tok_video != video_id:
        raise PhideError(f"{model_dir}: the tokenizer maps <video> to {tok_video}, the config says {video_id}")
    spec = read_frame_spec(model_dir, vcfg.image_size)
    out = spec.crop_size if spec.do_center_crop else spec.size if spec.do_resize else {}
    side = vcfg.image_size
    if (out.get("height"), out.get("width")) != (side, side):
        raise PhideError(f"{model_dir}: the processor settings ({spec.source}) do not make {side}x{side} "
                         "frames, the size the video tower takes")
    target = VideoLlavaTarget(lm, tokenizer, tower, projector, feature_layers=layers, video_token_id=video_id,
                              frame_spec=spec, image_size=side, patch_size=vcfg.patch_size)
    n = sum(p.numel() for p in lm.parameters()) + sum(p.numel() for p in tower.parameters()) \
        + sum(p.numel() for p in projector.parameters())
    progress(f"loaded Video-LLaVA target: {n / 1e6:.2f}M parameters, {dtype}, {device}, "
             f"{target.visual_tokens} visual tokens per video ({time.perf_counter() - t0:.2f}s)")
    return target
