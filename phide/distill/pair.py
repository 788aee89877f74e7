"""`phide distill --data DIR`: distillation on paired (video, events, question) samples.

Both products learn the TARGET's behaviour, so every sample is first answered by the target alone
(greedy); verification accepts exactly those tokens.

  1. the EAGLE continuation head (`phide.distill.train_eagle_head`) on the target's own features of
     prompt + answer (the visual features spliced in, as the engine prefills them);
  2. the draft adapter (`phide.models.draft_adapter`, the seeds' strategy B): the frozen draft reads
     ITS input (events + question) followed by the target's answer, and a residual MLP on its
     hidden states learns the target's next-token distribution at every answer position (soft
     cross-entropy over the shared vocabulary). The draft's features are computed once; only the
     adapter trains, so this is cheap even for a 7B draft.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from phide.distill.head import Sequence, target_features
from phide.models.draft_adapter import DraftAdapter
from phide.models.loading import progress
from phide.speculation.runners import causal_inputs


@dataclass
class PairExample:
    head_seq: Sequence            # target prompt + target answer (embeds spliced)
    draft_hidden: torch.Tensor    # [A, H_draft] draft states that predict the A answer tokens
    target_probs: torch.Tensor    # [A, V] the target's next-token distribution there (shared vocab)


@torch.inference_mode()
def _draft_hidden(draft_lm, draft_embeds: torch.Tensor, answer: list[int]) -> torch.Tensor:
    """Frozen draft over its prompt (embeds [1,T,H]) + answer ids: the states at the A positions
    whose next token is an answer token -> [A, H]."""
    dev = draft_lm.device
    ans = draft_lm.embed_tokens(torch.tensor([answer], dtype=torch.int64, device=dev))
    x = torch.cat([draft_embeds.to(device=dev, dtype=ans.dtype), ans], dim=1)
    n, T = x.shape[1], draft_embeds.shape[1]
    cache = draft_lm.new_cache(1, n)
    pos, mask = causal_inputs(0, n, dev)
    hidden = draft_lm(inputs_embeds=x, positions=pos, cache=cache, slots=pos, attn_mask=mask, kv_len=n)
    return hidden[0, T - 1:n - 1].float().cpu()


def collect(engine, samples, *, max_new_tokens: int, vocab: int) -> list[PairExample]:
    """Answer each sample with the target alone and gather the training tensors.
    engine: a phide Engine over the target and draft adapters (Request fields from the samples)."""
    from phide.engine import Request

    target_side, draft_side = engine.target_side, engine.draft_side
    lm_head = engine.target.lm_head.weight.detach().float()
    out, t0 = [], time.perf_counter()
    for i, s in enumerate(samples):
        req = Request(prompt=s.question, video=str(s.video), events=str(s.events),
                      max_new_tokens=max_new_tokens)
        answer = engine.generate(req, "target-only").token_ids
        prep = target_side.prepare(req)
        with torch.inference_mode():
            ans_emb = engine.target.embed_tokens(torch.tensor([answer], device=engine.target.device))
            embeds = torch.cat([prep.embeds, ans_emb], dim=1)[0]
        seq = Sequence(list(prep.ids) + answer, embeds.clone())
        _, feats = target_features(engine.target, seq)
        n_prompt = len(prep.ids)
        probs = torch.softmax(feats[n_prompt - 1:-1] @ lm_head[:vocab].T, dim=-1)
        if draft_side is not None:
            dprep = draft_side.prepare(req)
            dh = _draft_hidden(engine.draft, dprep.embeds if dprep.embeds is not None else
                               engine.draft.embed_tokens(torch.tensor([dprep.ids], device=engine.draft.device)),
                               answer)
        else:
            dh = torch.empty(0)
        out.append(PairExample(seq, dh, probs.cpu()))
        if (i + 1) % 20 == 0 or i + 1 == len(samples):
            progress(f"distill: target answered {i + 1}/{len(samples)} samples ({time.perf_counter() - t0:.0f}s)")
    return out


def train_draft_adapter(adapter: DraftAdapter, examples: list[PairExample], *, vocab: int, steps: int = 300,
                        lr: float = 3e-3, batch: int = 16, seed: int = 0, log_every: int = 100) -> DraftAdapter:
    """Soft cross-entropy of the adapted draft's distribution (first `vocab` ids) against the
    target's, over all answer positions of `examples`."""
    torch.manual_seed(seed)
    hidden = torch.cat([e.draft_hidden for e in examples]).to(adapter.w_in.weight.device)
    target = torch.cat([e.target_probs for e in examples]).to(hidden.device)
    if hidden.shape[0] == 0:
        raise ValueError("no answer positions to train the draft adapter on")
    adapter.train().requires_grad_(True)
    opt = torch.optim.AdamW(adapter.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    rows = batch * 32  # answer positions per step
    for step in range(steps):
        idx = torch.randint(hidden.shape[0], (min(rows, hidden.shape[0]),), generator=g)
        logp = torch.log_softmax(adapter.logits(hidden[idx])[:, :vocab], dim=-1)
        loss = -(target[idx] * logp).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            progress(f"distill: adapter step {step + 1}/{steps} loss {loss.item():.4f}")
    return adapter.eval().requires_grad_(False)


@torch.inference_mode()
def agreement(logits_fn, examples: list[PairExample], vocab: int) -> float:
    """Top-1 agreement of logits_fn(draft hidden) with the target's choice at every answer position."""
    hits = total = 0
    for e in examples:
        if e.draft_hidden.numel() == 0:
            continue
        hits += int((logits_fn(e.draft_hidden)[:, :vocab].argmax(-1) == e.target_probs.argmax(-1)).sum())
        total += e.target_probs.shape[0]
    return hits / max(total, 1)


def cross_entropy(logits_fn, examples: list[PairExample], vocab: int) -> float:
    with torch.inference_mode():
        h = torch.cat([e.draft_hidden for e in examples])
        p = torch.cat([e.target_probs for e in examples])
        return float(-(p * F.log_softmax(logits_fn(h)[:, :vocab], dim=-1)).sum(-1).mean())
