"""The training loop of `phide distill`: batched, checkpointed, resumable, data-parallel.

One loop serves the head and the draft adapter: an *objective* (an nn.Module whose forward takes a
micro-batch of entries and returns per-sample losses and top-1 counts) over a stream of global
batches. What makes a run reproducible, and a resumed run equal to an uninterrupted one:

  data order  the samples in a seeded permutation per epoch; optimizer step s takes positions
              [s*G, (s+1)*G) of the concatenated epochs (G: the global batch), so the data
              position IS the step number
  ranks       rank r takes every world-th sample of each global batch; each sample's loss is
              scaled by world/G and DistributedDataParallel averages the gradients, so every rank
              steps with the gradient of the global batch's mean, as one process would
  noise       keyed by (seed, step, sample) (phide.distill.ttt.keyed_noise), not drawn from a stream
  lr          a function of the step: linear warm-up, then cosine to 0
  checkpoint  every N steps: the weights and AdamW's moments (fp32), the step and the RNG states,
              in safetensors + JSON (never pickle), written aside and renamed; the last two kept

so `--resume` after a kill loads the newest checkpoint and replays exactly what followed it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from phide.distill import dist
from phide.errors import PhideError


@dataclass
class TrainConfig:
    steps: int
    batch: int                    # global batch: samples per optimizer step, all ranks together
    micro_batch: int              # samples per forward on one rank (gradient accumulation over the rest)
    lr: float
    warmup: int                   # steps of linear warm-up
    seed: int = 0
    betas: tuple[float, float] = (0.9, 0.95)   # EAGLE-3's AdamW
    weight_decay: float = 0.0
    clip: float = 0.5             # EAGLE-3's gradient clip
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    validate_every: int = 0       # 0: only at the end
    log_every: int = 10

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(1, self.steps - self.warmup)
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warmup) / span)))


def global_batch(step: int, n: int, batch: int, seed: int) -> list[int]:
    """Indices (into the n training samples) of step `step`'s global batch."""
    out, perms = [], {}
    for g in range(step * batch, (step + 1) * batch):
        epoch, pos = divmod(g, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(perms[epoch][pos]))
    return out


def rank_share(indices: list[int], rank: int, world: int) -> list[int]:
    return indices[rank::world]


# ----------------------------------------------------------------------------------- checkpoints
STATE = "state.json"


def _opt_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {f"state.{i}.{k}": v.detach().cpu().contiguous() for i, s in sd["state"].items() for k, v in s.items()
               if torch.is_tensor(v)}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def save_checkpoint(root: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, *, keep: int,
                    extra: dict | None = None) -> Path:
    """root/step-NNNNNNN/{model,optimizer}.safetensors + state.json, written aside and renamed."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    tensors, groups = _opt_tensors(opt)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / STATE).write_text(json.dumps({"step": step, "param_groups": groups, **(extra or {})}, indent=2))
    for f in tmp.iterdir():
        with open(f, "rb+") as h:
            os.fsync(h.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    done = [p for p in sorted(root.glob("step-*")) if (p / STATE).is_file()]
    return done[-1] if done else None


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Restore weights, optimizer moments and RNG states; returns state.json."""
    from safetensors.torch import load_file

    state = json.loads((path / STATE).read_text())
    weights = load_file(str(path / "model.safetensors"))
    have = model.state_dict()
    missing = sorted(set(have) - set(weights))
    if missing:
        raise PhideError(f"checkpoint {path} lacks {', '.join(missing[:4])}: it is another model's (another "
                         "--head-kind?)")
    model.load_state_dict({k: v.to(have[k].device) for k, v in weights.items()})
    tensors = load_file(str(path / "optimizer.safetensors"))
    per: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("state."):
            _, i, name = key.split(".", 2)
            per.setdefault(int(i), {})[name] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in state["param_groups"]]
    opt.load_state_dict({"state": per, "param_groups": groups})
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state


# ----------------------------------------------------------------------------------- the loop
def train(objective: torch.nn.Module, module: torch.nn.Module, entries: list, cfg: TrainConfig, *,
          ckpt_dir: Path | None,
          resume: bool, log_path: Path | None = None, validate: Callable[[int], dict] | None = None,
          desc: str = "train", quiet: bool = False, val_columns: tuple[str, ...] = ()) -> list[dict]:
    """Run the optimizer steps on `module`'s parameters; `objective(entries, step)` returns a
    StepOutput (per-sample `loss` [b], `hits`/`counts` per unrolled step). Returns the log rows.
    Resumes from ckpt_dir's newest checkpoint when `resume` (ckpt_dir None: no checkpoints)."""
    from tqdm import tqdm

    rank, world = dist.rank(), dist.world_size()
    if cfg.batch % world:
        raise PhideError(f"--batch {cfg.batch} must be a multiple of the {world} processes")
    device = next(module.parameters()).device
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    start = 0
    ckpt = latest_checkpoint(ckpt_dir) if resume and ckpt_dir is not None else None
    if ckpt is not None:
        start = int(load_checkpoint(ckpt, module, opt)["step"])
    model = objective
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None)
    log_rows: list[dict] = []
    writer = _LogWriter(log_path, start, val_columns) if (log_path is not None and dist.is_main()) else None
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    bar = tqdm(total=cfg.steps, initial=start, unit="step", desc=f"phide distill: {desc}", file=sys.stderr,
               disable=quiet or not dist.is_main() or start >= cfg.steps, dynamic_ncols=True)
    busy, seen = 0.0, 0  # seconds spent in training steps (not checkpoints or validation)
    with bar:
        for step in range(start, cfg.steps):
            t_step = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = cfg.lr_at(step)
            mine = rank_share(global_batch(step, len(entries), cfg.batch, cfg.seed), rank, world)
            chunks = [mine[i: i + cfg.micro_batch] for i in range(0, len(mine), cfg.micro_batch)]
            opt.zero_grad(set_to_none=True)
            loss_sum, hits, counts = 0.0, None, None
            for c, chunk in enumerate(chunks):
                sync = c == len(chunks) - 1 or world == 1
                ctx = contextlib.nullcontext() if sync else model.no_sync()
                with ctx, autocast:
                    out = model([entries[i] for i in chunk], step)
                    loss = out.loss.sum() * (world / cfg.batch)
                loss.backward()
                loss_sum += float(loss.detach()) / world
                hits = out.hits.double() if hits is None else hits + out.hits.double()
                counts = out.counts.double() if counts is None else counts + out.counts.double()
            if cfg.clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            opt.step()
            totals = dist.all_sum([loss_sum, *hits.tolist(), *counts.tolist()], device=device)
            seen += cfg.batch
            busy += time.perf_counter() - t_step
            done = step + 1
            K = len(hits)
            row = {"step": done, "samples": done * cfg.batch, "epoch": round(done * cfg.batch / len(entries), 4),
                   "lr": cfg.lr_at(step), "loss": totals[0]}
            for k in range(K):
                row[f"top1_step{k + 1}"] = totals[1 + k] / max(1.0, totals[1 + K + k])
            row["samples_per_s"] = seen / max(1e-9, busy)
            if ckpt_dir is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                if dist.is_main():
                    save_checkpoint(ckpt_dir, done, module, opt, keep=cfg.keep_checkpoints)
                dist.barrier()
            if validate is not None and ((cfg.validate_every and done % cfg.validate_every == 0) or done == cfg.steps):
                if dist.is_main():
                    row.update(validate(done))
                dist.barrier()
            if writer is not None and (done % cfg.log_every == 0 or done == cfg.steps or any(c in row for c in val_columns)):
                writer.write(row)
            log_rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", top1=f"{row.get('top1_step1', 0):.2f}",
                            sps=f"{row['samples_per_s']:.1f}")
            bar.update()
    if writer is not None:
        writer.close()
    return log_rows


class _LogWriter:
    """train_log.csv: one row per logged step; a resumed run first cuts rows past its checkpoint."""

    def __init__(self, path: Path, start: int, val_columns):
        self.path, self.val_columns = path, tuple(val_columns)
        kept = []
        if path.is_file() and start > 0:
            with path.open() as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= start]
        self.kept, self.f, self.w = kept, None, None

    def write(self, row: dict) -> None:
        if self.w is None:
            cols = [c for c in row if c not in self.val_columns] + list(self.val_columns)
            self.f = self.path.open("w", newline="")
            self.w = csv.DictWriter(self.f, fieldnames=cols, extrasaction="ignore")
            self.w.writeheader()
            for r in self.kept:
                self.w.writerow(r)
        self.w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
        self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
