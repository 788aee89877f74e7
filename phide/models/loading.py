"""Load HF-format checkpoints from local directories: config, safetensors weights, tokenizer.

Never unpickles: weights load from safetensors only (single file or sharded with an index).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import torch

from phide.errors import PhideError
from phide.models.llama import LlamaConfig, LlamaModel, rope_inv_freq

# Prefixes under which HF checkpoints store a LLaMA language model; the first that matches wins.
LLAMA_PREFIXES = ("model.", "language_model.model.", "model.language_model.", "")
LM_HEAD_KEYS = ("lm_head.weight", "language_model.lm_head.weight")


@contextlib.contextmanager
def quiet_logger(name: str):
    """Silence the `name` logger's warnings for a block (a library's expected complaint)."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def progress(msg: str) -> None:
    """Progress for long work goes to stderr so `--json` stdout stays one object."""
    print(f"phide: {msg}", file=sys.stderr, flush=True)


def read_config(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir)
    if not path.is_dir():
        raise PhideError(f"checkpoint directory not found: {path}")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise PhideError(f"{path} has no config.json (expected an HF-format checkpoint directory)")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PhideError(f"{cfg_path} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):  # every caller reads fields with .get()
        raise PhideError(f"{cfg_path} must hold a JSON object, got {_json_kind(raw)}")
    return raw


def _json_kind(value) -> str:
    kinds = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def llama_config(raw: dict, where: str = "config.json") -> LlamaConfig:
    """The LLaMA config of a config.json dict (the dict itself, or its text_config); its problems
    are reported as `where`'s, so the user knows which checkpoint's config to fix."""
    d = raw.get("text_config", raw) if "vocab_size" not in raw else raw
    if not isinstance(d, dict):
        raise PhideError(f"{where}: text_config must be a JSON object, got {_json_kind(d)}")
    try:
        return LlamaConfig.from_dict(d)
    except PhideError as exc:
        raise PhideError(f"{where}: {exc}") from None


def safetensors_files(model_dir: str | os.PathLike) -> list[Path]:
    """The weight files of a checkpoint: the shards named by model.safetensors.index.json, else
    every *.safetensors file in the directory."""
    path = Path(model_dir)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
            raise PhideError(f"{index} is malformed ({exc})") from None
        files = sorted({path / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise PhideError(f"{path}: shards named in the index are missing: {', '.join(missing)}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = (
            f" (found {', '.join(pickled)}: phide does not unpickle weights; re-save with "
            "save_pretrained(safe_serialization=True))"
            if pickled
            else ""
        )
        raise PhideError(f"{path} has no .safetensors weights{hint}")
    return files


def load_state_dict(model_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in safetensors_files(model_dir):
        try:
            part = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as exc:
            raise PhideError(f"cannot read {f}: {exc}") from None
        for k, v in part.items():
            state[k] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    return state


def pick_prefix(state: dict, prefixes, probe: str) -> str | None:
    """The first of `prefixes` under which the key `probe` exists in `state`, else None."""
    return next((p for p in prefixes if f"{p}{probe}" in state), None)


def fill_module(module: torch.nn.Module, state: dict, prefix: str, missing: list, optional=()) -> None:
    """Load `module` (built on the meta device) from state[prefix + name]. Absent keys are appended
    to `missing` unless their name starts with one of `optional` (those get ones/zeros); a shape
    that disagrees with the module raises PhideError."""
    tensors = {}
    for name, p in module.state_dict().items():
        key = f"{prefix}{name}"
        if key not in state:
            if not name.startswith(optional):
                missing.append(key)
            tensors[name] = torch.zeros(p.shape) if name.endswith("bias") else torch.ones(p.shape)
            continue
        t = state[key]
        if tuple(t.shape) != tuple(p.shape):
            raise PhideError(f"weight {key} has shape {tuple(t.shape)}, the config implies {tuple(p.shape)}")
        tensors[name] = t
    module.load_state_dict(tensors, assign=True, strict=False)


def _pick_prefix(state: dict, prefixes=LLAMA_PREFIXES) -> str:
    for prefix in prefixes:
        if f"{prefix}embed_tokens.weight" in state:
            return prefix
    raise PhideError("weights contain no LLaMA decoder (no '*embed_tokens.weight' key)")


_LAYER_KEY = re.compile(r"layers\.(\d+)\.")


def check_layer_count(cfg: LlamaConfig, state: dict, prefix: str, where: str = "config.json") -> None:
    """The decoder layers in the weights (`{prefix}layers.N.*` keys) must be the config's
    num_hidden_layers: extra layers would be silently ignored, and missing ones are a wrong config
    rather than a damaged checkpoint. Key names only; `where` names the config in the error."""
    found = set()
    for key in state:
        if key.startswith(prefix):
            m = _LAYER_KEY.match(key, len(prefix))
            if m:
                found.add(int(m.group(1)))
    n = cfg.num_hidden_layers
    top = max(found, default=-1) + 1  # layers the weights reach
    if top == n:
        return  # gaps below n are missing weights: the missing-key errors name them
    if not found:
        held = "no decoder layers"
    elif found == set(range(top)):
        held = f"{top} decoder layers (layers.0-{top - 1})"
    else:
        held = f"decoder layers up to layers.{top - 1}"
    raise PhideError(f"{where} says num_hidden_layers={n} but the weights hold {held}")


def llama_from_state_dict(
    cfg: LlamaConfig, state: dict[str, torch.Tensor], *, device="cpu", dtype=torch.float32, prefix=None,
    where: str = "config.json",
) -> LlamaModel:
    """Build phide's decoder from an HF state dict; missing keys are named in the error, a layer
    count that disagrees with the config is a config error (`where` names the config)."""
    prefix = _pick_prefix(state) if prefix is None else prefix
    check_layer_count(cfg, state, prefix, where)
    with torch.device("meta"):
        model = LlamaModel(cfg)
    wanted = {}
    for name in model.state_dict():
        if name == "lm_head.weight":
            key = next((k for k in LM_HEAD_KEYS if k in state), None)
            if key is None and cfg.tie_word_embeddings:
                key = f"{prefix}embed_tokens.weight"
            wanted[name] = key
        else:
            wanted[name] = f"{prefix}{name}"
    missing = sorted(k or name for name, k in wanted.items() if k is None or k not in state)
    if missing:
        shown = ", ".join(missing[:6]) + (f" ... ({len(missing)} in all)" if len(missing) > 6 else "")
        raise PhideError(f"checkpoint is missing decoder weights: {shown}")
    tensors = {}
    for name, key in wanted.items():
        t = state[key]
        expect = model.state_dict()[name].shape
        if tuple(t.shape) != tuple(expect):
            raise PhideError(f"weight {key} has shape {tuple(t.shape)}, config implies {tuple(expect)}")
        tensors[name] = t.to(device=device, dtype=dtype)
    model.load_state_dict(tensors, assign=True)
    model.inv_freq = rope_inv_freq(cfg).to(device)  # non-persistent buffer: not in the state dict
    return model.eval()


def load_llama(model_dir: str | os.PathLike, *, device="cpu", dtype=torch.float32, label="model") -> LlamaModel:
    """Load a LlamaForCausalLM-format directory into phide's decoder."""
    t0 = time.perf_counter()
    where = str(Path(model_dir) / "config.json")
    cfg = llama_config(read_config(model_dir), where)
    progress(f"loading {label} from {model_dir} ...")
    state = load_state_dict(model_dir)
    model = llama_from_state_dict(cfg, state, device=device, dtype=dtype, where=where)
    n = sum(p.numel() for p in model.parameters())
    progress(f"loaded {label}: {n / 1e6:.2f}M parameters, {dtype}, {device} ({time.perf_counter() - t0:.2f}s)")
    return model


def load_tokenizer(model_dir: str | os.PathLike):
    """The checkpoint's tokenizer, from local files only."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a missing/broken tokenizer
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PhideError(f"cannot load the tokenizer in {model_dir}: {first}") from None
