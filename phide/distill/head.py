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
from phide.models.llama import LlamaModel, rope_cos_sin


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


def head_rollout(head: EagleHead, embeds: torch.Tensor, feats: torch.Tensor, depth: int,
                 tail: int | None = None) -> list[tuple[torch.Tensor, int]]:
    """The head drafting `depth` steps ahead from every position of a sequence, as in a tree
    (training-time test): step 1 reads the target's features; step k reads the head's own
    step-(k-1) predictions. Attention matches drafting: a step-k row at sequence index i sees the
    step-1 rows 0..i (the committed context) and its own chain (steps 2..k at index i).

    embeds, feats [T, H] -> [(pred [n, H], first index), ...] for k = 1..depth, where pred row r
    predicts feats[first + r + k]. Steps >= 2 cover only the last `tail` indices (answers sit at
    the end of a multimodal prompt; None: all)."""
    T, _ = embeds.shape
    cfg, dev = head.cfg, embeds.device
    start = 0 if tail is None else max(0, T - depth - tail)
    k_rows = v_rows = None  # K/V of the steps so far [1, Hkv, rows, D]; fresh tensors per step
    offsets: list[int] = []  # first cache row of each step
    out: list[tuple[torch.Tensor, int]] = []
    prev = feats
    for k in range(1, depth + 1):
        first = 0 if k == 1 else start
        n = T - k - first
        if n <= 0:
            break
        idx = torch.arange(first, first + n, device=dev)
        off = 0 if k_rows is None else k_rows.shape[2]
        kv_len = off + n
        shape = (1, cfg.num_key_value_heads, n, cfg.head_dim)
        new = torch.zeros(shape, dtype=embeds.dtype, device=dev)
        kc = new if k_rows is None else torch.cat([k_rows, new], dim=2)
        vc = new.clone() if v_rows is None else torch.cat([v_rows, new], dim=2)
        mask = torch.zeros(n, kv_len, dtype=torch.bool, device=dev)
        mask[:, : T - 1] = torch.arange(T - 1, device=dev)[None, :] <= idx[:, None]  # step-1 context
        rows = torch.arange(n, device=dev)
        if k > 1:  # the chain: this index in steps 2..k (its own row included)
            for o in offsets[1:] + [off]:
                mask[rows, o + idx - start] = True
        prev_rows = idx - start if k > 2 else idx  # step 1 covers every index, later steps from `start`
        x = head.fc(torch.cat([embeds[idx + k], prev[prev_rows]], dim=-1))
        cos, sin = rope_cos_sin(head.inv_freq, (idx + k - 1).unsqueeze(0), x.dtype)
        slots = torch.arange(off, kv_len, device=dev).unsqueeze(0)
        pred = head.layer(x.unsqueeze(0), cos, sin, kc, vc, slots, mask.unsqueeze(0), kv_len)[0]
        offsets.append(off)
        k_rows, v_rows = kc, vc
        out.append((pred, first))
        prev = pred
    return out


def train_eagle_head(target: LlamaModel, sequences: list[Sequence], *, steps: int = 300, lr: float = 3e-3,
                     batch: int = 8, seed: int = 0, ce_weight: float = 0.1, noise: float = 0.05,
                     rollout: int = 1, rollout_tail: int = 64, rollout_decay: float = 0.8,
                     log_every: int = 50, head: EagleHead | None = None) -> EagleHead:
    """Train (or continue training) a head on the frozen target; returns it in eval mode.

    `noise`: uniform noise added to the input features (EAGLE's robustness trick: at draft time
    the head reads its own slightly wrong predictions). `rollout` > 1 also trains the head on its
    own predictions `rollout` steps ahead (`head_rollout`; deeper tree levels read them), over the
    last `rollout_tail` positions, step k weighted `rollout_decay ** (k - 1)`.
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
            inp_f = f + noise * (torch.rand(f.shape, generator=g) - 0.5)
            loss = 0.0
            for k, (pred, first) in enumerate(head_rollout(head, e, inp_f, rollout, rollout_tail), 1):
                want = f[first + k: first + k + pred.shape[0]]
                soft = torch.softmax(want @ lm_head.T, dim=-1)
                ce = -(soft * torch.log_softmax(pred @ lm_head.T, dim=-1)).sum(-1).mean()
                loss = loss + rollout_decay ** (k - 1) * (F.smooth_l1_loss(pred, want) + ce_weight * ce)
            loss = loss / len(idx)
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
def head_top1_accuracy(target: LlamaModel, head: EagleHead, sequences: list[Sequence], *, depth: int = 1,
                       tail: int | None = None) -> float:
    """Top-1 agreement of the head's token choice with the target's, `depth` steps ahead of the
    target's features (1: teacher-forced; k: reading its own k-1 predictions, as tree level k
    does), over the last `tail` positions (None: all)."""
    lm_head = target.lm_head.weight.float()
    hits = total = 0
    for s in sequences:
        e, f = target_features(target, s)
        steps = head_rollout(head, e, f, depth, tail)
        if len(steps) < depth:
            continue
        pred, first = steps[-1]
        if tail is not None and depth == 1:
            pred, first = pred[-tail:], first + max(0, pred.shape[0] - tail)
        want = f[first + depth: first + depth + pred.shape[0]]
        hits += int(((pred @ lm_head.T).argmax(-1) == (want @ lm_head.T).argmax(-1)).sum())
        total += pred.shape[0]
    return hits / max(total, 1)
