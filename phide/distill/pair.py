"""The draft adapter's objective (the seeds' strategy B), from the same streaming pipeline as the head.

The frozen draft reads ITS input (events + question) followed by the target's answer; a residual
MLP on its final states (phide.models.draft_adapter) learns the target's next-token distribution at
every answer position (soft cross-entropy over the vocabulary the two share). The source gives
each micro-batch's draft states and the target's final features there (phide.distill.features:
online from both frozen models, or from the offline files), so nothing accumulates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from phide.distill.ttt import StepOutput
from phide.models.llama import lm_head_fp32


def _per_sample_mean(values: torch.Tensor, sample_of: torch.Tensor, n: int) -> torch.Tensor:
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, sample_of, values)
    counts = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, sample_of, torch.ones_like(values))
    return sums / counts.clamp(min=1)


class AdapterObjective(nn.Module):
    """forward(entries, step) -> StepOutput (one "step": the adapted draft's next token)."""

    def __init__(self, adapter: nn.Module, source, target_lm_head: torch.Tensor, vocab: int):
        super().__init__()
        self.adapter = adapter
        self.__dict__["source"] = source
        self.__dict__["lm_head"] = target_lm_head.detach()
        self.vocab = vocab

    def forward(self, entries, step: int):
        b = self.source.adapter_batch(entries)
        dev = self.adapter.w_in.weight.device
        hidden, sample_of = b.draft_hidden.to(dev), b.sample_of.to(dev)
        target = torch.softmax(lm_head_fp32(b.target_final.to(self.lm_head.device), self.lm_head)[:, : self.vocab],
                               dim=-1).to(dev)
        logp = F.log_softmax(self.adapter.logits(hidden)[:, : self.vocab], dim=-1)
        ce = -(target * logp).sum(-1)
        hits = (logp.argmax(-1) == target.argmax(-1)).sum().detach()
        return StepOutput(_per_sample_mean(ce, sample_of, len(entries)), ce.detach().mean().view(1),
                          hits.view(1), torch.tensor([ce.shape[0]], device=dev))


@torch.inference_mode()
def agreement(logits_fn, source, entries, vocab: int, chunk: int = 4) -> float:
    """Top-1 agreement of logits_fn(draft states) with the target's choice at every answer position."""
    hits = total = 0
    for i in range(0, len(entries), chunk):
        b = source.adapter_batch(entries[i: i + chunk])
        lm_head = source.target.lm_head.weight
        want = lm_head_fp32(b.target_final.to(lm_head.device), lm_head)[:, :vocab].argmax(-1)
        got = logits_fn(b.draft_hidden)[:, :vocab].argmax(-1).to(want.device)
        hits += int((got == want).sum())
        total += want.shape[0]
    return hits / max(total, 1)
