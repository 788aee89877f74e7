"""The continuation head's training objective and its starting point.

Both heads learn from the target's own answers (stage 1, phide.distill.answers), over their own
unrolled steps (training-time test, phide.distill.ttt), from tensors the source gives per batch
(phide.distill.features: online from the frozen target, or offline files).

  EAGLE-2 (phide.models.eagle)   reads the target's final features; feature regression + 0.1 CE
  EAGLE-3 (phide.models.eagle3)  fuses the target's low/middle/high layers; token loss only;
                                 its own LM head over a draft vocabulary (d2t / t2d)
"""

from __future__ import annotations

import torch
from torch import nn

from phide.distill.ttt import ttt_forward
from phide.models.eagle import EagleHead
from phide.models.eagle3 import DEFAULT_DRAFT_VOCAB, Eagle3Head, default_capture, draft_vocab_map
from phide.models.llama import LlamaModel


def new_head(kind: str, target: LlamaModel, *, draft_vocab: int | None = None,
             answer_counts: torch.Tensor | None = None, capture: tuple[int, ...] | None = None) -> nn.Module:
    """A fresh head for `target`, started near "copy the feature" (the EAGLE-2 head's fc picks the
    feature, the EAGLE-3 head's the highest captured layer) so early drafts are the target's
    own guess; the EAGLE-3 head's LM head starts as the target's rows of its draft vocabulary.
    draft_vocab / answer_counts [V]: EAGLE-3's reduced vocabulary, the most frequent answer ids."""
    cfg = target.cfg
    H = cfg.hidden_size
    if kind == "eagle2":
        head = EagleHead(cfg)
        with torch.no_grad():
            head.fc.weight.zero_()
            head.fc.weight[:, H:] = torch.eye(H)
            head.fc.bias.zero_()
        return head.to(target.device)
    if kind != "eagle3":
        raise ValueError(f"unknown head kind {kind!r}")
    V = cfg.vocab_size
    vd = min(draft_vocab or DEFAULT_DRAFT_VOCAB, V)  # the --plan's and the CLI help's default
    head = Eagle3Head(cfg, capture or default_capture(cfg.num_hidden_layers), vd)
    counts = answer_counts if answer_counts is not None else torch.zeros(V)
    d2t, t2d = draft_vocab_map(counts, vd)
    head.set_vocab_map(d2t, t2d)
    with torch.no_grad():
        head.fc.weight.zero_()
        head.fc.weight[:, -H:] = torch.eye(H)
        head.lm_head.weight.copy_(target.lm_head.weight.detach().float()[torch.arange(vd) + d2t])
        head.norm.weight.copy_(target.norm.weight.detach().float())
    return head.to(target.device)


class HeadObjective(nn.Module):
    """forward(entries, step) -> StepOutput: the head's training-time-test loss on a micro-batch
    whose tensors `source` gives (an nn.Module so DistributedDataParallel can wrap it)."""

    def __init__(self, head: nn.Module, source, lm_head: torch.Tensor, *, ttt_steps: int, decay: float = 0.8,
                 noise: float = 0.0, seed: int = 0):
        super().__init__()
        self.head = head
        self.__dict__["source"] = source                 # not a submodule: the frozen target's
        self.__dict__["lm_head"] = lm_head.detach()      # the target's LM head [V, H], frozen
        self.ttt_steps, self.decay, self.noise, self.seed = ttt_steps, decay, noise, seed

    def forward(self, entries, step: int):
        batch = self.source.head_batch(entries).to(self.head.device)
        return ttt_forward(self.head, batch, self.lm_head, steps=self.ttt_steps, decay=self.decay, noise=self.noise,
                           seed=self.seed, step_index=step)


def answer_counts(answers: list[list[int]], vocab: int) -> torch.Tensor:
    """How often each target id occurs in the answers [V] (EAGLE-3's draft vocabulary)."""
    counts = torch.zeros(vocab, dtype=torch.int64)
    for ids in answers:
        t = torch.tensor([i for i in ids if 0 <= i < vocab], dtype=torch.int64)
        counts += torch.bincount(t, minlength=vocab)
    return counts


def fit_head(engine, entries, *, kind: str = "eagle3", steps: int = 300, batch: int = 8, lr: float = 3e-3,
             ttt_steps: int = 3, noise: float = 0.0, seed: int = 0, head: nn.Module | None = None) -> nn.Module:
    """Train a head on in-memory entries with online features, no checkpoints (tests, small
    experiments; `phide distill` is the full pipeline). Returns it in eval mode."""
    from phide.distill.features import OnlineSource
    from phide.distill.trainer import TrainConfig, train

    torch.manual_seed(seed)
    target = engine.target
    if head is None:
        counts = answer_counts([e.answer for e in entries], target.cfg.vocab_size)
        head = new_head(kind, target, answer_counts=counts)
    head = head.float().train()
    objective = HeadObjective(head, OnlineSource(engine, head.capture), target.lm_head.weight, ttt_steps=ttt_steps,
                              noise=noise, seed=seed)
    cfg = TrainConfig(steps=steps, batch=min(batch, len(entries)), micro_batch=batch, lr=lr,
                      warmup=max(1, steps // 20), seed=seed)
    train(objective, head, entries, cfg, ckpt_dir=None, resume=False, quiet=True)
    return head.eval()
