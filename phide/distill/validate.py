"""Validation while a head trains: what verification will make of it, on held-out samples.

  val_tau           the real engine in head-only (greedy) over the held-out samples: tokens
                    emitted per verify (τ, as `stats.accepted_per_verify` counts them)
  val_identical     the share of those answers equal to the target's own (stage 1): 1.0, or a bug
  val_accept_d{d}   of the verified trees that reached depth d, the share accepted that deep
  val_top1_step{k}  training-time test on the held-out samples: how often the head's k-th own
                    step chooses the target's token (teacher-forced tokens, its own features)

train_curve.png plots the training loss and val_tau against the step (from train_log.csv).
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import torch

from phide.schedules import HEAD_ONLY
from phide.distill.features import item_request
from phide.distill.ttt import ttt_forward
from phide.models.llama import rope_inv_freq


def val_columns(depth: int, ttt_steps: int) -> tuple[str, ...]:
    return ("val_tau", "val_identical", *[f"val_accept_d{d}" for d in range(1, depth + 1)],
            *[f"val_top1_step{k}" for k in range(1, ttt_steps + 1)])


def validate_head(engine, head, held: list, source, *, max_new_tokens: int, ttt_steps: int, chunk: int = 4) -> dict:
    """The metrics above for `head` (a copy runs, in the engine's dtype, in eval mode)."""
    from phide.engine import Engine, acceptance_by_depth

    h = copy.deepcopy(head).to(dtype=engine.target.dtype).eval()
    h.inv_freq = rope_inv_freq(h.cfg).to(h.inv_freq.device)  # fp32, as the loaders rebuild it: validate the shipped head
    with torch.inference_mode():
        runner = Engine(engine.target_side, None, head=h, eos_token_ids=sorted(engine.eos), spec=engine.spec)
        stats, same = [], 0
        for e in held:  # the answers are the target's own greedy ones at the same max_new_tokens
            res = runner.generate(item_request(e.item, max_new_tokens), HEAD_ONLY)
            stats.append(res.stats)
            same += res.token_ids == e.answer
        out = {"val_tau": sum(s["new_tokens"] for s in stats) / max(1, sum(s["verifies"] for s in stats)),
               "val_identical": same / max(1, len(held))}
        out.update({f"val_accept_d{d}": v for d, v in acceptance_by_depth(stats).items()})
    for k, v in enumerate(top1_by_step(h, source, held, engine.target.lm_head.weight, ttt_steps, chunk), 1):
        out[f"val_top1_step{k}"] = v
    return out


@torch.inference_mode()
def top1_by_step(head, source, entries: list, lm_head: torch.Tensor, steps: int, chunk: int = 4) -> list[float]:
    """Per unrolled step k: the share of answer positions where the head's k-th own step chooses
    the target's token (training-time test, no noise)."""
    hits = counts = None
    dtype = next(head.parameters()).dtype
    for i in range(0, len(entries), chunk):
        b = source.head_batch(entries[i: i + chunk]).to(head.device)
        b.embeds, b.features, b.final = (t.to(dtype) for t in (b.embeds, b.features, b.final))
        r = ttt_forward(head, b, lm_head, steps=steps)
        hits = r.hits.double() if hits is None else hits + r.hits.double()
        counts = r.counts.double() if counts is None else counts + r.counts.double()
    return [float(hits[k] / counts[k].clamp(min=1)) for k in range(steps)]


def plot_curve(log_path: Path, png: Path) -> Path | None:
    """Training loss and validation τ against the step."""
    if not log_path.is_file():
        return None
    rows = list(csv.DictReader(log_path.open()))
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, [float(r["loss"]) for r in rows], color="tab:blue", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss", color="tab:blue")
    val = [(int(r["step"]), float(r["val_tau"])) for r in rows if r.get("val_tau")]
    if val:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in val], [t for _, t in val], "o-", color="tab:orange", label="held-out τ (head-only)")
        ax2.set_ylabel("τ (tokens / verify)", color="tab:orange")
    ax.set_title(f"phide distill: {log_path.parent.name}")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
