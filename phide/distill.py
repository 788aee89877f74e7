"""Distillation on the target: train the EAGLE continuation head from the target's own features.

Data are sequences the target itself produced (its greedy answers to prompts), so the head learns
to predict exactly what verification will accept. For every sequence the frozen target gives
input embeddings e_t and final features f_t; the head maps (e_{t+1}, f_t) to h_{t+1} and is
trained to match f_{t+1} (smooth L1) and the target's next-token distribution at t+1 (soft
cross-entropy through the target's frozen LM head), EAGLE's two losses.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from phide.models.eagle import EagleHead
from phide.models.llama import LlamaModel


@dataclass
class Sequence:
    """One training sequence: token ids [T] and optionally the target's input embeddings [T, H]
    (multimodal prompts: visual features spliced in)."""

    ids: list[int]
    embeds: torch.Tensor | None = None


@torch.inference_mode()
def target_features(target: LlamaModel, seq: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """(input embeddings [T,H], final features [T,H]) of the frozen target over a sequence."""
    ids = torch.tensor([seq.ids], device=target.device)
    embeds = seq.embeds.unsqueeze(0).to(target.device) if seq.embeds is not None else target.embed_tokens(ids)
    T = ids.shape[1]
    cache = target.new_cache(1, T)
    pos = torch.arange(T, device=target.device).unsqueeze(0)
    mask = torch.ones(T, T, dtype=torch.bool, device=target.device).tril().unsqueeze(0)
    feats = target(inputs_embeds=embeds, positions=pos, cache=cache, slots=pos, attn_mask=mask, kv_len=T)
    return embeds[0].float(), feats[0].float()


def train_eagle_head(target: LlamaModel, sequences: list[Sequence], *, steps: int = 300, lr: float = 3e-3,
                     batch: int = 8, seed: int = 0, ce_weight: float = 0.1, noise: float = 0.05,
                     log_every: int = 50, head: EagleHead | None = None) -> EagleHead:
    """Train (or continue training) a head on the frozen target; returns it in eval mode.

    `noise`: uniform noise added to the input features (EAGLE's robustness trick: at draft time
    the head reads its own slightly wrong predictions).
    """
    torch.manual_seed(seed)
    # clone() outside inference mode: autograd may save these for backward.
    data = [tuple(t.clone() for t in target_features(target, s)) for s in sequences if len(s.ids) >= 3]
    if not data:
        raise ValueError("no training sequence has 3 or more tokens")
    if head is None:
        head = EagleHead(target.cfg).to(target.device)
        with torch.no_grad():  # start near "copy the feature": fc ~ [0 | I]
            H = target.cfg.hidden_size
            head.fc.weight.zero_()
            head.fc.weight[:, H:] = torch.eye(H)
            head.fc.bias.zero_()
    head.train()
    lm_head = target.lm_head.weight.detach().float()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(len(data), (min(batch, len(data)),), generator=g).tolist()
        loss_sum = 0.0
        opt.zero_grad()
        for i in idx:
            e, f = data[i]
            inp_f = f[:-1] + noise * (torch.rand(f[:-1].shape, generator=g) - 0.5)
            pred = head.forward_train(e[1:].unsqueeze(0), inp_f.unsqueeze(0))[0]
            want = f[1:]
            reg = F.smooth_l1_loss(pred, want)
            soft = torch.softmax(want @ lm_head.T, dim=-1)
            ce = -(soft * torch.log_softmax(pred @ lm_head.T, dim=-1)).sum(-1).mean()
            loss = (reg + ce_weight * ce) / len(idx)
            loss.backward()
            loss_sum += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"phide: distill step {step + 1}/{steps} loss {loss_sum:.4f} ({time.perf_counter() - t0:.1f}s)",
                  file=sys.stderr, flush=True)
    return head.eval()


@torch.inference_mode()
def head_top1_accuracy(target: LlamaModel, head: EagleHead, sequences: list[Sequence]) -> float:
    """Teacher-forced top-1 agreement of the head's next-token choice with the target's."""
    lm_head = target.lm_head.weight.float()
    hits = total = 0
    for s in sequences:
        e, f = target_features(target, s)
        if e.shape[0] < 3:
            continue
        pred = head.forward_train(e[1:].unsqueeze(0), f[:-1].unsqueeze(0))[0]
        hits += int(((pred @ lm_head.T).argmax(-1) == (f[1:] @ lm_head.T).argmax(-1)).sum())
        total += e.shape[0] - 1
    return hits / max(total, 1)
