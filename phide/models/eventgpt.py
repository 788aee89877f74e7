"""The EventGPT draft frontend: event frames + a question -> input embeddings for phide's decoder.

Follows XduSyL/EventGPT (`model/EventChatModel.py`, `common/common.py`, `dataset/conversation.py`;
see /work/shared/reference/models.md section 1), the list-of-frames path its inference takes:

  frames   T event frames (HxWx3 uint8 RGB; EventGPT renders T = 5 equal-count chunks of the stream,
           see `phide.io.events.load_event_frames`), each through the CLIP ViT-L/14-336 processor as
           transformers 4.37's `CLIPImageProcessor` does it (the one EventGPT pins): Pillow resize of
           the shortest edge (bicubic), center crop, rescale 1/255 (float64, then float32), normalize
           (float32). In transformers 5.x that PIL path is `CLIPImageProcessorPil`; the default
           `CLIPImageProcessor` resizes with torch and differs by a few uint8 levels.
  features CLIP `last_hidden_state` (final layer, CLS kept, no post-layernorm) -> visual_projector
           (Linear, GELU, Linear) -> feature_adaptor (Linear), per frame [tokens_per_frame, hidden];
           then spatio-temporal pooling: per-frame means over tokens (T "temporal" tokens) followed
           by per-token means over frames (tokens_per_frame "spatial" tokens): T + tokens_per_frame
           embeddings (5 + 577 = 582 for the real model).
  prompt   the `eventgpt_v1` template (LLaVA v1, SeparatorStyle.TWO, sep " "):
           SYSTEM + " USER: <ev_start><event><ev_end>\\n{question} ASSISTANT:", tokenized like
           `tokenizer_event_token`: split on "<event>", each chunk tokenized on its own, BOS kept on
           the first chunk only, the event embeddings spliced where "<event>" was.

The tower's weights come from the checkpoint when it holds them (`model.visual_tower.visual_tower.*`,
as `EventChatModel.save_pretrained` writes them), else from the CLIP directory named by the config's
`mm_visual_tower`. Weights load from safetensors only.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from phide.errors import PhideError
from phide.models.frontends import Prepared, check_path
from phide.models.llama import LlamaModel
from phide.models.loading import (check_layer_count, fill_module, llama_config, llama_from_state_dict,
                                  load_state_dict, load_tokenizer, pick_prefix, progress, quiet_logger,
                                  read_config, safetensors_files)
from phide.models.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, common_fields

MODEL_TYPE = "EventChat_llama"
NUM_FRAMES = 5
EVENT_TOKEN = "<event>"
EVENT_TOKEN_INDEX = -200  # EventGPT's sentinel (dataset/constants.py); never a vocabulary id
EV_PATCH_TOKEN, EV_START_TOKEN, EV_END_TOKEN = "<ev_patch>", "<ev_start>", "<ev_end>"
MAX_LENGTH = 2048  # EventGPT truncates the spliced sequence here (prepare_inputs_labels_for_multimodal)

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")
# conv.get_prompt() for SeparatorStyle.TWO, sep=" ", roles (USER, ASSISTANT), one user turn
# "<ev_start><event><ev_end>\n" + question and an empty assistant turn.
PROMPT_TEMPLATE = SYSTEM + " USER: " + EV_START_TOKEN + EVENT_TOKEN + EV_END_TOKEN + "\n{question} ASSISTANT:"

REAL_IMAGE_SIZE, REAL_PATCH_SIZE = 336, 14  # openai/clip-vit-large-patch14-336

# Where each part lives. The decoder is LlamaForCausalLM's (`model.*`, `lm_head.weight`).
PROJECTOR_PREFIXES = ("model.visual_projector.", "visual_projector.")
ADAPTOR_PREFIXES = ("model.feature_adaptor.", "feature_adaptor.")
# The tower inside an EventGPT checkpoint (transformers 4.x CLIPVisionModel has a `vision_model.`
# level, 5.x none), and inside a CLIP directory (CLIPModel / 4.x CLIPVisionModel, or 5.x).
CKPT_TOWER_PREFIXES = ("model.visual_tower.visual_tower.vision_model.", "model.visual_tower.visual_tower.",
                       "visual_tower.visual_tower.vision_model.", "visual_tower.visual_tower.")
CLIP_TOWER_PREFIXES = ("vision_model.", "")
_TOWER_PROBE = "embeddings.patch_embedding.weight"
_OPTIONAL_TOWER = ("post_layernorm.",)  # not used for last_hidden_state; loaded when present
CLIP_SUBFOLDERS = ("visual_tower", "clip")


def visual_token_count(config=None, n_frames: int = NUM_FRAMES) -> int:
    """Embeddings one event input occupies: n_frames + (image_size // patch_size) ** 2 + 1.

    `config`: a CLIP config dict (a CLIPModel config with `vision_config`, or a vision config with
    image_size / patch_size), a transformers CLIPVisionConfig, or an EventGPT config dict (which
    does not say; EventGPT's tower is CLIP ViT-L/14-336). 582 for the real model and 5 frames.
    """
    if config is None:
        image, patch = REAL_IMAGE_SIZE, REAL_PATCH_SIZE
    else:
        if not isinstance(config, dict):
            config = config.to_dict()
        vision = config.get("vision_config", config) or {}
        if "image_size" in vision or "patch_size" in vision:
            image = int(vision.get("image_size") or 224)  # CLIPVisionConfig defaults
            patch = int(vision.get("patch_size") or 32)
        else:
            image, patch = REAL_IMAGE_SIZE, REAL_PATCH_SIZE
    if n_frames < 1:
        raise PhideError("EventGPT needs at least one event frame")
    return int(n_frames) + (image // patch) ** 2 + 1


# ---------------------------------------------------------------------------------------- frames
_PIL_RESAMPLE = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


@dataclass
class ClipPreprocess:
    """CLIP image preprocessing, as a preprocessor_config.json describes it."""

    shortest_edge: int = REAL_IMAGE_SIZE
    crop: tuple[int, int] = (REAL_IMAGE_SIZE, REAL_IMAGE_SIZE)
    resample: int = 3
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple = OPENAI_CLIP_MEAN
    image_std: tuple = OPENAI_CLIP_STD
    source: str = field(default="defaults", compare=False)

    @classmethod
    def from_dict(cls, d: dict, source: str, default_side: int = REAL_IMAGE_SIZE) -> "ClipPreprocess":
        """Both formats: legacy ints (`"size": 336, "crop_size": 336`, as openai's hub files) and
        dicts (`{"shortest_edge": 336}`, `{"height": 336, "width": 336}`)."""
        size = d.get("size", default_side)
        if isinstance(size, dict):
            if size.get("shortest_edge"):
                short = int(size["shortest_edge"])
            else:
                raise PhideError(f"{source}: only shortest-edge resizing is supported, got size {size!r}")
        elif isinstance(size, int):
            short = size
        else:
            raise PhideError(f"{source}: unsupported size {size!r}")
        crop = d.get("crop_size", default_side)
        if isinstance(crop, int):
            crop_hw = (crop, crop)
        elif isinstance(crop, dict) and crop.get("height") and crop.get("width"):
            crop_hw = (int(crop["height"]), int(crop["width"]))
        else:
            raise PhideError(f"{source}: unsupported crop_size {crop!r}")
        resample = d.get("resample", 3)
        if resample not in _PIL_RESAMPLE:
            raise PhideError(f"{source}: unsupported resample {resample!r}")

        return cls(shortest_edge=short, crop=crop_hw, resample=int(resample), source=source, **common_fields(d))

    @property
    def out_hw(self) -> tuple[int, int] | None:
        """The output size when it does not depend on the input."""
        if self.do_center_crop:
            return self.crop
        return None


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PhideError(f"{path} is not valid JSON ({exc})") from None


def read_preprocess(dirs, image_size: int) -> ClipPreprocess:
    """The first preprocessor_config.json among `dirs` (the CLIP directory first: EventGPT builds
    its processor from `mm_visual_tower`), else CLIP defaults at the tower's image size."""
    for d in dirs:
        if d is None:
            continue
        f = Path(d) / "preprocessor_config.json"
        raw = _read_json(f)
        if isinstance(raw, dict):
            return ClipPreprocess.from_dict(raw, str(f), image_size)
    return ClipPreprocess(shortest_edge=image_size, crop=(image_size, image_size))


def _resized_hw(h: int, w: int, short: int) -> tuple[int, int]:
    # transformers' get_resize_output_image_size(size=int, default_to_square=False)
    if w <= h:
        return int(short * h / w), short
    return short, int(short * w / h)


def preprocess_frame(frame: np.ndarray, spec: ClipPreprocess) -> np.ndarray:
    """One HxWx3 uint8 RGB frame -> [3, S, S] float32, as CLIPImageProcessor (PIL path) makes it."""
    from PIL import Image

    img = np.asarray(frame)
    if spec.do_resize:
        h, w = img.shape[:2]
        nh, nw = _resized_hw(h, w, spec.shortest_edge)
        resample = getattr(Image.Resampling, _PIL_RESAMPLE[spec.resample])
        img = np.asarray(Image.fromarray(img).resize((nw, nh), resample=resample))
    if spec.do_center_crop:
        ch, cw = spec.crop
        h, w = img.shape[:2]
        if ch > h or cw > w:  # zero-pad like transformers' center_crop
            nh, nw = max(ch, h), max(cw, w)
            top, left = -(-(nh - h) // 2), -(-(nw - w) // 2)
            padded = np.zeros((nh, nw, 3), dtype=img.dtype)
            padded[top:top + h, left:left + w] = img
            img, h, w = padded, nh, nw
        top, left = (h - ch) // 2, (w - cw) // 2
        img = img[top:top + ch, left:left + cw]
    x = img
    if spec.do_rescale:
        x = (x.astype(np.float64) * spec.rescale_factor).astype(np.float32)
    if spec.do_normalize:
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        mean = np.asarray(spec.image_mean, dtype=x.dtype)
        std = np.asarray(spec.image_std, dtype=x.dtype)
        x = (x - mean) / std
    return np.ascontiguousarray(np.moveaxis(x, -1, 0).astype(np.float32, copy=False))


def _is_frame(x) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor))


def _check_frame(f, i: int) -> np.ndarray:
    if isinstance(f, torch.Tensor):
        f = f.detach().cpu().numpy()
    f = np.asarray(f)
    if f.dtype != np.uint8 or f.ndim != 3 or f.shape[-1] != 3 or f.shape[0] < 1 or f.shape[1] < 1:
        raise PhideError(f"event frame {i} must be an HxWx3 uint8 RGB image, got {f.dtype} {tuple(f.shape)}")
    return f


def as_event_frames(events, n_frames: int = NUM_FRAMES) -> list[np.ndarray]:
    """request.events -> list of HxWx3 uint8 RGB event frames.

    Frames as given: a list/tuple of HxWx3 uint8 arrays (sizes may differ: EventGPT renders each
    chunk at its own extent) or one [T,H,W,3] uint8 array. Anything else (a file path, an
    EventStream, a dict of x/y/t/p) goes through `phide.io.events.load_event_frames`.
    """
    if isinstance(events, (list, tuple)) and events and all(_is_frame(f) for f in events):
        return [_check_frame(f, i) for i, f in enumerate(events)]
    if _is_frame(events) and np.asarray(events).ndim == 4:
        return [_check_frame(f, i) for i, f in enumerate(events)]
    if isinstance(events, (list, tuple)):
        raise PhideError("--events: expected a list of HxWx3 uint8 event frames, an event file or an event stream")
    try:
        from phide.io.events import load_event_frames
    except ImportError as exc:
        raise PhideError(f"cannot read event files: phide.io.events is unavailable ({exc})") from None
    frames = load_event_frames(events, n_frames=n_frames)
    return [_check_frame(f, i) for i, f in enumerate(frames)]


# ---------------------------------------------------------------------------------------- model
class Projector(nn.Sequential):
    """EventGPT's visual_projector: Sequential(Linear, GELU, Linear) (checkpoint keys 0.* and 2.*)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


def spatio_temporal(features: torch.Tensor) -> torch.Tensor:
    """[T, N, C] per-frame features -> [T + N, C]: per-frame token means, then per-token frame means."""
    return torch.cat([features.mean(dim=1), features.mean(dim=0)], dim=0)


class EventGPTDraft:
    """Frontend for an EventGPT checkpoint (see the module docstring). `prepare(request)` reads
    `request.prompt` (the question, or a full prompt containing "<event>") and `request.events`."""

    def __init__(self, lm: LlamaModel, tokenizer, tower: nn.Module, projector: nn.Module, adaptor: nn.Module, *,
                 preprocess: ClipPreprocess, image_size: int, patch_size: int, n_frames: int = NUM_FRAMES,
                 max_length: int = MAX_LENGTH):
        self.lm, self.tokenizer = lm, tokenizer
        self.tower, self.projector, self.adaptor = tower, projector, adaptor
        self.preprocess = preprocess
        self.image_size, self.patch_size = image_size, patch_size
        self.tokens_per_frame = (image_size // patch_size) ** 2 + 1
        self.n_frames = n_frames
        self.max_length = max_length

    @property
    def visual_tokens(self) -> int:
        """Embeddings for the default number of frames (5 -> 582 for the real model)."""
        return self.n_frames + self.tokens_per_frame

    # -- events
    def pixel_values(self, frames: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack([preprocess_frame(f, self.preprocess) for f in frames]))

    @torch.inference_mode()
    def encode_events(self, pixels: torch.Tensor) -> torch.Tensor:
        """[T,3,S,S] pixel values -> [T + tokens_per_frame, hidden] event embeddings."""
        p = next(self.tower.parameters())
        feats = self.tower(pixel_values=pixels.to(device=p.device, dtype=p.dtype)).last_hidden_state
        feats = self.adaptor(self.projector(feats))
        return spatio_temporal(feats)

    # -- prompt
    @staticmethod
    def prompt_text(question: str) -> str:
        return question if EVENT_TOKEN in question else PROMPT_TEMPLATE.format(question=question)

    def tokenize_prompt(self, prompt: str) -> list[int]:
        """EventGPT's `tokenizer_event_token`: ids with EVENT_TOKEN_INDEX where "<event>" was. Each
        chunk is tokenized on its own; when the tokenizer starts chunks with BOS, the first chunk
        keeps it and every later chunk loses its first token."""
        chunks = [list(self.tokenizer(c)["input_ids"]) for c in prompt.split(EVENT_TOKEN)]
        bos = self.tokenizer.bos_token_id
        offset = 1 if chunks and chunks[0] and bos is not None and chunks[0][0] == bos else 0
        ids = [chunks[0][0]] if offset else []
        for i, c in enumerate(chunks):
            if i:
                ids.append(EVENT_TOKEN_INDEX)
            ids.extend(c[offset:])
        return ids

    def placeholder_id(self) -> int:
        unk = getattr(self.tokenizer, "unk_token_id", None)
        return int(unk) if unk is not None and 0 <= unk < self.lm.cfg.vocab_size else 0

    def _require(self, request) -> None:
        if request.events is None:
            raise PhideError("EventGPT draft needs --events")
        if request.prompt is None:
            raise PhideError("EventGPT draft needs --prompt (the question about the events)")
        check_path(request.events, "event file")

    def check(self, request) -> None:
        """Before any plan runs: the inputs are there, and an event file is opened and checked
        (cheaply: `check_event_file`), so a bad one is an error even when the plan never reads it."""
        from phide.io.events import check_event_file

        self._require(request)
        if isinstance(request.events, (str, os.PathLike)):
            check_event_file(request.events)

    def prepare(self, request) -> Prepared:
        self._require(request)
        prompt = self.prompt_text(request.prompt)
        n = prompt.count(EVENT_TOKEN)
        if n != 1:
            raise PhideError(f"the EventGPT prompt must contain exactly one {EVENT_TOKEN}, found {n}")
        ids = self.tokenize_prompt(prompt)
        at = ids.index(EVENT_TOKEN_INDEX)
        if at == len(ids) - 1:
            raise PhideError(f"the EventGPT prompt must not end with {EVENT_TOKEN}")
        bad = [t for t in ids if t != EVENT_TOKEN_INDEX and not 0 <= t < self.lm.cfg.vocab_size]
        if bad:
            raise PhideError(f"prompt token id {bad[0]} is outside the EventGPT vocabulary ({self.lm.cfg.vocab_size})")

        frames = as_event_frames(request.events, self.n_frames)
        if not frames:
            raise PhideError("--events gave no event frames")
        feats = self.encode_events(self.pixel_values(frames))
        n_vis = len(frames) + self.tokens_per_frame
        if feats.shape[0] != n_vis:
            raise PhideError(f"internal: event features cover {feats.shape[0]} tokens, expected {n_vis}")
        ids = ids[:at] + [self.placeholder_id()] * n_vis + ids[at + 1:]
        if len(ids) > self.max_length:
            raise PhideError(f"the EventGPT prompt is {len(ids)} tokens with the events; EventGPT takes at most "
                             f"{self.max_length}")
        dev = self.lm.device
        embeds = self.lm.embed_tokens(torch.tensor([ids], dtype=torch.int64, device=dev))
        embeds[0, at:at + n_vis] = feats.to(device=dev, dtype=embeds.dtype)
        return Prepared(ids, embeds, {"visual_tokens": n_vis, "event_frames": len(frames), "prompt_tokens": len(ids)})


# ---------------------------------------------------------------------------------------- loading
def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "~")) and "\\" not in s


def resolve_clip_dir(model_dir, raw: dict, clip_dir=None, *, required: bool = True) -> Path | None:
    """The CLIP ViT directory: the explicit `clip_dir`; else the config's `mm_visual_tower` as an
    absolute path, relative to the checkpoint, relative to the working directory, or a hub id in
    the local Hugging Face cache; else a `visual_tower/` or `clip/` subfolder of the checkpoint.
    A candidate counts when it holds a config.json. With required=False, None when none does."""
    model_dir = Path(model_dir)
    if clip_dir is not None:
        p = Path(clip_dir)
        if not (p / "config.json").is_file():
            raise PhideError(f"clip_dir {p}: not a CLIP model directory (no config.json)")
        return p
    tried: list[str] = []

    def ok(p: Path, why: str) -> bool:
        if (p / "config.json").is_file():
            return True
        tried.append(f"{p} ({why}: {'no config.json' if p.is_dir() else 'not found'})")
        return False

    name = raw.get("mm_visual_tower")
    if isinstance(name, str) and name.strip():
        name = os.path.expanduser(name.strip())
        p = Path(name)
        if p.is_absolute():
            if ok(p, "mm_visual_tower"):
                return p
        else:
            for cand, why in ((model_dir / p, "mm_visual_tower relative to the checkpoint"),
                              (Path.cwd() / p, "mm_visual_tower relative to the working directory")):
                if ok(cand, why):
                    return cand
            if _looks_like_hub_id(name):
                try:
                    from huggingface_hub import snapshot_download

                    cached = Path(snapshot_download(name, local_files_only=True))
                    if ok(cached, "mm_visual_tower in the local Hugging Face cache"):
                        return cached
                except Exception:  # not cached (or no hub client): offline lookups only
                    tried.append(f"{name} (not in the local Hugging Face cache)")
    elif name is not None:
        tried.append(f"mm_visual_tower = {name!r} (not a path)")
    else:
        tried.append("config.json has no mm_visual_tower")
    for sub in CLIP_SUBFOLDERS:
        if ok(model_dir / sub, "checkpoint subfolder"):
            return model_dir / sub
    if not required:
        return None
    raise PhideError(f"{model_dir}: cannot find the CLIP ViT tower EventGPT needs (a local copy of "
                     "openai/clip-vit-large-patch14-336); tried: " + "; ".join(tried)
                     + ". Point the config's mm_visual_tower at it (absolute, or relative to the checkpoint), "
                     "put it in the checkpoint's visual_tower/ subfolder, or pass its directory as clip_dir")


def clip_vision_config(clip_dir: Path):
    """The CLIPVisionConfig of a CLIP directory (a CLIPModel's vision_config, or a vision model's)."""
    from transformers import CLIPVisionConfig

    raw = read_config(clip_dir)
    d = raw.get("vision_config") if raw.get("model_type") == "clip" or "vision_config" in raw else raw
    if not isinstance(d, dict):
        raise PhideError(f"{clip_dir}/config.json has no vision_config")
    try:
        return CLIPVisionConfig.from_dict(d)
    except Exception as exc:  # strict config validation raises several types
        raise PhideError(f"{clip_dir}: invalid CLIP vision config ({type(exc).__name__}: {exc})") from None


def infer_clip_vision_config(state: dict, prefix: str):
    """A CLIPVisionConfig from tower weight shapes, for checkpoints that carry the tower but whose
    CLIP directory is not at hand. Assumes CLIP's 64-wide heads and defaults (quick_gelu, eps 1e-5)."""
    from transformers import CLIPVisionConfig

    patch_w = state[f"{prefix}embeddings.patch_embedding.weight"]
    hidden, patch = int(patch_w.shape[0]), int(patch_w.shape[-1])
    n_pos = int(state[f"{prefix}embeddings.position_embedding.weight"].shape[0])
    side = int(round((n_pos - 1) ** 0.5))
    layers = 0
    while f"{prefix}encoder.layers.{layers}.mlp.fc1.weight" in state:
        layers += 1
    if layers == 0 or side * side != n_pos - 1 or hidden % 64:
        raise PhideError("cannot infer the CLIP tower's configuration from the checkpoint's weights; "
                         "pass the CLIP directory as clip_dir")
    inter = int(state[f"{prefix}encoder.layers.0.mlp.fc1.weight"].shape[0])
    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                            num_attention_heads=hidden // 64, image_size=side * patch, patch_size=patch,
                            num_channels=int(patch_w.shape[1]))


def _load_eventgpt_state(model_dir: Path) -> dict:
    """All safetensors in the checkpoint: the indexed shards plus any other *.safetensors beside
    them (adapters saved separately)."""
    state = load_state_dict(model_dir)
    if (model_dir / "model.safetensors.index.json").is_file():
        indexed = set(safetensors_files(model_dir))
        from safetensors.torch import load_file

        for f in sorted(model_dir.glob("*.safetensors")):
            if f not in indexed:
                try:
                    state.update(load_file(str(f)))
                except Exception as exc:
                    raise PhideError(f"cannot read {f}: {exc}") from None
    return state


def _mirror_inference_tokens(tokenizer, raw: dict) -> None:
    """Add the tokens EventGPT's inference.py adds before tokenizing (no-op when already there):
    <ev_patch> with mm_use_im_patch_token (default True), <ev_start>/<ev_end> with
    mm_use_im_start_end (default False). Only the latter changes the prompt's ids."""
    vocab = tokenizer.get_vocab()
    if raw.get("mm_use_im_patch_token", True) and EV_PATCH_TOKEN not in vocab:
        tokenizer.add_tokens([EV_PATCH_TOKEN], special_tokens=True)
    if raw.get("mm_use_im_start_end", False):
        new = [t for t in (EV_START_TOKEN, EV_END_TOKEN) if t not in vocab]
        if new:
            tokenizer.add_tokens(new, special_tokens=True)


def quiet_model_type_warning():
    """AutoTokenizer reads config.json and warns that EventChat_llama is not a transformers model
    type; that is expected here."""
    return quiet_logger("transformers.configuration_utils")


def load_eventgpt(model_dir: str | os.PathLike, device="cpu", dtype=torch.float32, clip_dir=None,
                  label: str = "draft") -> EventGPTDraft:
    """Load an EventGPT checkpoint directory (model_type EventChat_llama) as a frontend (a draft,
    usually; `label` names its role in progress messages)."""
    from transformers import CLIPVisionModel

    t0 = time.perf_counter()
    model_dir = Path(model_dir)
    raw = read_config(model_dir)
    if raw.get("model_type") != MODEL_TYPE:
        raise PhideError(f"{model_dir}: not an EventGPT checkpoint (model_type {raw.get('model_type')!r}, "
                         f"expected {MODEL_TYPE!r})")
    where = str(model_dir / "config.json")
    cfg = llama_config(raw, where)  # config problems surface here, long before the tokenizer loads
    progress(f"loading EventGPT {label} from {model_dir} ...")
    state = _load_eventgpt_state(model_dir)

    # Vocabulary: 32000, or 32001 after inference.py's <ev_patch> resize; trust the weights when the
    # config disagrees but embeddings and head agree with each other.
    emb = state.get("model.embed_tokens.weight")
    head = state.get("lm_head.weight")
    if emb is not None and head is not None and emb.shape[0] == head.shape[0] != cfg.vocab_size:
        progress(f"EventGPT: config vocab_size {cfg.vocab_size}, weights {emb.shape[0]} rows: using the weights")
        cfg.vocab_size = int(emb.shape[0])

    # CLIP tower: weights from the checkpoint when present, else from the CLIP directory.
    ckpt_tower = pick_prefix(state, CKPT_TOWER_PREFIXES, _TOWER_PROBE)
    clip_path = resolve_clip_dir(model_dir, raw, clip_dir, required=ckpt_tower is None)
    if clip_path is not None:
        vcfg = clip_vision_config(clip_path)
    else:
        vcfg = infer_clip_vision_config(state, ckpt_tower)
        progress("EventGPT: CLIP directory not found; tower configuration inferred from the checkpoint's weights")
    if ckpt_tower is not None:
        tower_state, tower_prefix, tower_src = state, ckpt_tower, f"{model_dir} ({ckpt_tower}*)"
    else:
        tower_state = load_state_dict(clip_path)
        tower_prefix = pick_prefix(tower_state, CLIP_TOWER_PREFIXES, _TOWER_PROBE)
        tower_src = str(clip_path)
        if tower_prefix is None:
            raise PhideError(f"{clip_path}: no CLIP vision weights (no vision_model.{_TOWER_PROBE})")

    missing: list[str] = []
    with torch.device("meta"):
        tower = CLIPVisionModel(vcfg)
        projector = Projector(vcfg.hidden_size, cfg.hidden_size)
        adaptor = nn.Linear(cfg.hidden_size, cfg.hidden_size)
    fill_module(tower, tower_state, tower_prefix, missing, optional=_OPTIONAL_TOWER)
    for module, prefixes, probe in ((projector, PROJECTOR_PREFIXES, "0.weight"),
                                    (adaptor, ADAPTOR_PREFIXES, "weight")):
        prefix = pick_prefix(state, prefixes, probe) or prefixes[0]
        fill_module(module, state, prefix, missing)
    check_layer_count(cfg, state, "model.", where)  # before the missing keys: a wrong count is a config error
    with torch.device("meta"):
        names = list(LlamaModel(cfg).state_dict())
    missing += [f"model.{n}" for n in names if n != "lm_head.weight" and f"model.{n}" not in state]
    if "lm_head.weight" not in state and not cfg.tie_word_embeddings:
        missing.append("lm_head.weight")
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise PhideError(f"{model_dir}: checkpoint is missing EventGPT weights: {shown}")
    lm = llama_from_state_dict(cfg, state, device=device, dtype=dtype, prefix="model.", where=where)
    del state, tower_state

    n_pos = tower.embeddings.position_embedding.weight.shape[0]
    tower.embeddings.position_ids = torch.arange(n_pos).expand((1, -1))
    left = [n for n, t in list(tower.named_parameters()) + list(tower.named_buffers()) if t.is_meta]
    if left:
        raise PhideError(f"internal: CLIP tower tensors not loaded: {', '.join(left)}")
    tower = tower.to(device=device, dtype=dtype).eval()
    projector = projector.to(device=device, dtype=dtype).eval()
    adaptor = adaptor.to(device=device, dtype=dtype).eval()

    with quiet_model_type_warning():
        tokenizer = load_tokenizer(model_dir)
    _mirror_inference_tokens(tokenizer, raw)
    preprocess = read_preprocess([clip_path, model_dir], vcfg.image_size)
    side = vcfg.image_size
    if preprocess.out_hw != (side, side):
        raise PhideError(f"{model_dir}: the processor settings ({preprocess.source}) do not make {side}x{side} "
                         "frames, the size the CLIP tower takes")
    draft = EventGPTDraft(lm, tokenizer, tower, projector, adaptor, preprocess=preprocess, image_size=side,
                          patch_size=vcfg.patch_size)
    n = sum(p.numel() for m in (lm, tower, projector, adaptor) for p in m.parameters())
    progress(f"loaded EventGPT {label}: {n / 1e6:.2f}M parameters, {dtype}, {device}, CLIP tower from {tower_src}, "
             f"{draft.visual_tokens} event tokens for {draft.n_frames} frames ({time.perf_counter() - t0:.2f}s)")
    return draft
