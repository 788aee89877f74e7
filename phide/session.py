"""A session: the pair loaded from checkpoint directories, its engine, and its planner with this
machine's calibration. `load_session` is the one loader behind every command (generate, trace,
demo, bench, calibrate), and `Session.generate` the one way a request runs: the planner decides
the Plan, the engine runs exactly that, the planner learns from it. So what the CLI runs is what
the bench measures.

Directories are checked (config.json readable) before anything heavy loads. The EAGLE head and the
draft adapter are optional: by default each is taken from the directory that owns it (the head
from the target directory, the adapter from the draft directory) when its files are there.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from phide.engine import Engine, Request, Result, SpecConfig
from phide.errors import PhideError
from phide import schedules
from phide.planner import Calibration, Planner, calibration_dir, load_calibration


@dataclass
class Session:
    engine: Engine
    planner: Planner
    target_side: Any                 # the target frontend (tokenizer, prompt building), as Engine.target_side
    draft_side: Any = None           # the draft frontend, or None
    key: dict | None = None          # what the calibration is keyed by (`pair_key`)
    memory_plan: dict | None = None  # the weight formats loaded and their predicted memory (`memory_plan`)

    def generate(self, req: Request, mode: str = schedules.AUTO, split: dict | None = None) -> Result:
        """Run one request: the planner decides the plan for `mode` (with `split`, that lane
        split: {"draft_threads": n} or {"draft_sms": n}), the engine runs it, the planner learns
        from the result. stats["mode"] is `mode`; stats["plan"] says what ran."""
        if mode not in schedules.modes():
            raise PhideError(f"unknown mode {mode!r} (choose from {', '.join(schedules.modes())})")
        plan = self.planner.decide(req.max_new_tokens, mode, split)
        result = self.engine.generate(req, plan)
        self.planner.observe(plan, result.stats)
        result.stats["mode"] = mode
        if self.memory_plan is not None:  # predicted; the engine's peak_memory_mb is measured
            result.stats["memory_plan"] = self.memory_plan
            result.stats["target_exact"] = self.memory_plan["target_quant"] == "none"
        return result

    def decode(self, ids: list[int]) -> str:
        return self.target_side.tokenizer.decode(ids, skip_special_tokens=True)


def resolve_device(device: str, dtype: str):
    """(device, torch dtype) for the CLI's --device / --dtype: "auto" dtype is float32 on a CPU,
    bfloat16 on a GPU; --device auto is cuda when one is present."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PhideError("--device cuda requested but no CUDA device is available")
    if dtype == "auto":
        return device, torch.float32 if device == "cpu" else torch.bfloat16
    return device, getattr(torch, dtype)


def load_session(target_dir, draft_dir=None, *, head_dir=None, adapter_dir=None, use_head: bool = True,
                 use_adapter: bool = True, device: str = "cpu", dtype=None, spec: SpecConfig | None = None,
                 shape: dict | None = None, overlap: bool = False, draft_graph: bool = False, clip_dir=None,
                 calibration="auto", draft_quant: str = "auto", target_quant: str = "none") -> Session:
    """head_dir / adapter_dir: explicit locations (must hold the files); None = the default places
    when present. use_head / use_adapter=False leave them out. spec: the SpecConfig, else one
    from the target directory's tree_shape.json (the shape the pair is run with, when present)
    updated with `shape`, with post-verify `overlap` and the CUDA-graph draft step (`draft_graph`)
    as asked. calibration: "auto" (this
    machine's saved calibration for this pair, when there is one), a path, or None (none).
    draft_quant / target_quant: the weight format of each LM's decoder (phide.models.quant);
    draft_quant "auto" lets the memory planner pick on a GPU (the fastest plan that fits with
    the target exact; one error naming the card needed when none does) and is "none" on a CPU.
    A quantized target answers as the quantized model (stats say so)."""
    from phide.models import quant
    from phide.models.draft_adapter import has_draft_adapter, load_draft_adapter
    from phide.models.heads import check_head_dir, default_head_dir, load_head
    from phide.models.loading import read_config
    from phide.models.vocab import bridge_vocabularies

    dtype = dtype or torch.float32
    read_config(target_dir)  # fail fast on a bad directory, before any loading
    if draft_dir is not None:
        read_config(draft_dir)
    if not use_head:
        head_dir = None
    elif head_dir is None:
        head_dir = default_head_dir(target_dir)
    else:
        check_head_dir(head_dir)  # a bad --head fails now, before any loading
    if spec is None:
        spec = SpecConfig(**{**tree_shape(target_dir), **(shape or {})}, overlap=overlap, draft_graph=draft_graph)
    if draft_dir is None:
        draft_quant = "none"
    quant.check_scheme(target_quant, device, "target", dtype)
    if draft_quant != "auto":
        quant.check_scheme(draft_quant, device, "draft", dtype)
    memory = memory_plan_for(target_dir, draft_dir, head_dir=head_dir,
                             adapter_dir=(adapter_dir or draft_dir) if use_adapter else None, clip_dir=clip_dir,
                             device=device, dtype=dtype, spec=spec, draft_quant=draft_quant, target_quant=target_quant)
    draft_quant = memory["draft_quant"] or "none"
    quant.check_scheme(draft_quant, device, "draft", dtype)
    cal_path = Path(calibration) if calibration not in ("auto", None) else None
    cal = load_calibration(cal_path) if cal_path is not None else None  # a bad --calibration fails now
    target = _load_quantized(target_dir, "target", target_quant, device=device, dtype=dtype)
    draft = shared = bridge = head = adapter = None
    if draft_dir is not None:
        draft = _load_quantized(draft_dir, "draft", draft_quant, device=device, dtype=dtype, clip_dir=clip_dir)
        shared, bridge = bridge_vocabularies(target.tokenizer, draft.tokenizer, target.lm.cfg.vocab_size)
        if use_adapter:
            adapter_dir = adapter_dir or (draft_dir if has_draft_adapter(draft_dir) else None)
            if adapter_dir is not None:
                adapter = load_draft_adapter(adapter_dir, draft.lm.lm_head)
    if head_dir is not None:
        head = load_head(head_dir, target_cfg=target.lm.cfg, device=device, dtype=dtype)
    engine = Engine(target, draft, eos_token_ids=eos_ids(target.tokenizer, target.lm), shared_vocab=shared,
                    spec=spec, vocab_bridge=bridge, head=head, draft_adapter=adapter)
    key = pair_key(target_dir, draft_dir, head_dir, adapter_dir if adapter is not None else None,
                   device=device, dtype=dtype, spec=spec, quant={"target": target_quant, "draft": draft_quant})
    if calibration == "auto":
        cal_path = calibration_dir() / f"{key_digest(key)}.json"
        cal = load_calibration(cal_path) if cal_path.is_file() else None
    planner = Planner(cal, has_draft=draft is not None, has_head=head is not None, depth=spec.depth,
                      budget=spec.budget, window_steps=spec.window_depth, default_split=default_split(device))
    return Session(engine, planner, target, draft, key, memory)


def _load_quantized(model_dir, role: str, scheme: str, *, device: str, dtype, clip_dir=None):
    """A frontend with its decoder in `scheme`. Quantized for a GPU, it loads on the CPU and each
    decoder linear reaches the GPU already quantized: the unquantized model never sits whole on
    the card (on a 24 GB card the bf16 draft beside the target is what does not fit)."""
    from torch import nn

    from phide.models import quant
    from phide.models.registry import load_frontend

    staged = scheme != "none" and device != "cpu"
    frontend = load_frontend(model_dir, role=role, device="cpu" if staged else device, dtype=dtype,
                             clip_dir=clip_dir)
    quant.quantize_decoder(frontend.lm, scheme, device)
    if staged:
        for name in ("tower", "projector", "adaptor"):  # the frontends' other modules
            module = getattr(frontend, name, None)
            if isinstance(module, nn.Module):
                setattr(frontend, name, module.to(device))
    return frontend


def memory_plan_for(target_dir, draft_dir, *, head_dir, adapter_dir, clip_dir, device: str, dtype, spec: SpecConfig,
                    draft_quant: str, target_quant: str, max_new: int = 64) -> dict:
    """The plan this session loads, with its predicted memory (config files only): the given
    formats, or with draft_quant "auto" on a GPU the memory planner's choice for this card."""
    from phide import memory_plan as mp
    from phide.models import quant

    dtype_name = str(dtype).replace("torch.", "")
    card_gb = torch.cuda.get_device_properties(torch.device(device)).total_memory / mp.GIB if device == "cuda" else None
    pair = mp.PairShape.read(target_dir, draft_dir, head_dir=head_dir, adapter_dir=adapter_dir, clip_dir=clip_dir)
    chosen_by = "flags"
    if draft_quant == "auto":
        chosen_by, draft_quant = "auto", "none"
        if card_gb is not None and draft_dir is not None:
            # the formats this machine can load (their library installed)
            layouts = [(f"draft {dq}", target_quant, dq, 1) for dq in ("none", "int8", "nf4", "int4")
                       if quant.available(dq)]
            candidates = mp.plans(pair, card_gb, cal=mp.default_calibration(), spec=spec, max_new=max_new,
                                  dtype=dtype_name, device=device, layouts=layouts)
            chosen = mp.choose(candidates)
            if chosen is None:
                raise PhideError(mp.shortfall(candidates, card_gb) + " (or pass --draft-quant / --target-quant)")
            draft_quant = chosen.draft_quant
    gb = mp.predicted_gb(pair, target_quant, draft_quant if draft_dir is not None else None, spec=spec,
                         max_new=max_new, dtype=dtype_name, with_context=device == "cuda")
    if chosen_by == "flags" and card_gb is not None and gb > card_gb:  # fail before loading, not at an OOM
        raise PhideError(f"target {target_quant} + draft {draft_quant} needs {gb:.1f} GB, this GPU has {card_gb:.1f} GB "
                         "(--draft-quant auto picks a plan that fits; `phide plan --gpu-memory` lists them)")
    head = None
    if pair.head is not None:  # the head that loads, priced as it is stored (EAGLE-3: its own LM head)
        head = {"kind": pair.head.kind, "params": pair.head.params(),
                "weights_gb": round(pair.head.bytes(mp.DTYPE_BYTES[dtype_name]) / mp.GIB, 4)}
    return {"target_quant": target_quant, "draft_quant": draft_quant if draft_dir is not None else None,
            "predicted_gb": gb, "device_memory_gb": None if card_gb is None else round(card_gb, 2),
            "chosen_by": chosen_by, "for_new_tokens": max_new, "head": head}


TREE_SHAPE_FILE = "tree_shape.json"


def tree_shape(target_dir) -> dict:
    """The tree shape a pair is run with (tree_shape.json in the target directory), or {}."""
    if not (Path(target_dir) / TREE_SHAPE_FILE).is_file():
        return {}
    path = Path(target_dir) / TREE_SHAPE_FILE
    try:
        shape = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise PhideError(f"{path} is not valid JSON ({exc})") from None
    allowed = {"topk", "depth", "budget", "window_depth", "window_budget"}
    if not isinstance(shape, dict) or not set(shape) <= allowed or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in shape.values()):
        raise PhideError(f"{path} must be a JSON object of positive integers among {', '.join(sorted(allowed))}")
    return shape


def default_split(device: str) -> dict:
    """A forced hide with no calibrated split: on a CPU the draft lane reserves one core of at
    least two (without a split both lanes' thread pools fight over every core); on a GPU no
    split (the draft gets its own stream, kernels of both lanes take any SM)."""
    if device == "cpu" and torch.get_num_threads() >= 2:
        return {"draft_threads": 1}
    return {}


def eos_ids(tokenizer, model) -> list[int]:
    ids = set(model.cfg.eos_token_id)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def _dir_identity(path) -> dict | None:
    """A checkpoint directory's identity: its config and its weight files' names and sizes (cheap,
    and a retrained or swapped checkpoint changes it)."""
    if path is None:
        return None
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".json") and f.is_file())
    return {"dir": str(p.resolve()), "files": {f.name: f.stat().st_size for f in files}}


def pair_key(target_dir, draft_dir, head_dir, adapter_dir, *, device: str, dtype, spec: SpecConfig,
             quant: dict | None = None) -> dict:
    """What a calibration depends on: the checkpoints, the machine (device, threads), the dtype,
    the tree shape and the weight formats (only when one is quantized: unquantized pairs keep
    the keys they had)."""
    if device == "cuda":
        machine = torch.cuda.get_device_name()
    else:
        machine = f"cpu:{torch.get_num_threads()}t"
    key = {"target": _dir_identity(target_dir), "draft": _dir_identity(draft_dir), "head": _dir_identity(head_dir),
           "adapter": _dir_identity(adapter_dir), "machine": machine, "dtype": str(dtype).replace("torch.", ""),
           "spec": asdict(spec)}
    if quant and any(v != "none" for v in quant.values()):
        key["quant"] = quant
    return key


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def save_session_calibration(session: Session, cal: Calibration) -> Path:
    """Store `cal` where `load_session` looks for this session's pair and machine."""
    from phide.planner import save_calibration

    cal.key = session.key or {}
    path = calibration_dir() / f"{key_digest(cal.key)}.json"
    save_calibration(cal, path)
    session.planner = session.planner.with_calibration(cal)
    return path
