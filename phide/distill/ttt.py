"""Training-time test: the head trained on its own k steps, as a tree drafts with it.

A batch holds, per sample (right-padded to the batch's longest):
  embeds    [B,T,H]  the target's input embeddings of prompt + answer (visual features spliced)
  features  [B,T,F]  what the head reads at each position: the target's final features
                     (EAGLE-2) or its captured layers' states (EAGLE-3)
  final     [B,A,H]  the target's final features at positions P-1 .. T-1, whose LM-head outputs
                     are the distributions the head learns (they predict the answer's tokens)
  prompt_lens [B], lengths [B]  P and T

Pair i of a sequence is (embedding of token i+1, feature i), as the engine feeds the head
(phide.speculation.eagle_runner). Step 0 reads the target's features; step k reads the head's own
step k-1 output at the same row, with the token k positions further on, at RoPE position i+k.
Attention at step k: row i sees the step-0 rows 0..i (the committed context) and its own chain
(steps 1..k at row i): exactly what chain drafting from row i computes (tested against it).

Only the rows that reach the answer carry a loss, so only they are run past the K/V projections:
step 0 projects K/V for every row (the visual prompt is context), queries run on a window of
rows from P-1-K on; steps >= 1 run on that window only. On the real pair that is ~110 of ~2,100
rows (the attention of one window query over the whole prefix stays).

Loss per step k: soft cross-entropy against the target's distribution at the predicted position
(EAGLE-3: restricted to the head's draft vocabulary and renormalised; positions whose target
argmax lies outside it do not count), plus, for EAGLE-2, smooth-L1 regression of the target's
feature (EAGLE-2's loss, cross-entropy weighted 0.1). Per sample: the mean over its answer
positions, steps weighted decay**k (0.8: EAGLE-3's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from phide.models.llama import apply_rope, lm_head_fp32, rope_cos_sin

CE_WEIGHT_EAGLE2 = 0.1  # EAGLE-2: feature regression + 0.1 x token cross-entropy


@dataclass
class HeadBatch:
    embeds: torch.Tensor
    features: torch.Tensor
    final: torch.Tensor
    prompt_lens: torch.Tensor
    lengths: torch.Tensor
    keys: list[int]          # a stable number per sample (noise is keyed by it, not by its rank or batch slot)

    def to(self, device) -> "HeadBatch":
        return HeadBatch(self.embeds.to(device), self.features.to(device), self.final.to(device),
                         self.prompt_lens.to(device), self.lengths.to(device), self.keys)


@dataclass
class StepOutput:
    loss: torch.Tensor        # [B] per-sample loss (steps weighted)
    step_loss: torch.Tensor   # [K] mean over samples, detached
    hits: torch.Tensor        # [K] top-1 agreements with the target, summed over the batch
    counts: torch.Tensor      # [K] positions scored


def keyed_noise(shape, keys: list[int], seed: int, step: int, device, dtype) -> torch.Tensor:
    """Uniform noise in [-0.5, 0.5) per sample, from a generator keyed by (seed, step, sample key):
    the same sample gets the same noise whichever rank or batch slot it lands in, and a resumed
    run draws what the uninterrupted one did."""
    out = torch.empty(shape, device=device, dtype=torch.float32)
    for b, key in enumerate(keys):
        g = torch.Generator(device=device).manual_seed(hash((int(seed), int(step), int(key))) & (2**63 - 1))
        out[b] = torch.rand(shape[1:], generator=g, device=device) - 0.5
    return out.to(dtype)


def _gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B,T,C], idx [B,W] -> [B,W,C]."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def ttt_forward(head, batch: HeadBatch, lm_head: torch.Tensor, *, steps: int, decay: float = 0.8,
                noise: float = 0.0, seed: int = 0, step_index: int = 0, keep: list | None = None) -> StepOutput:
    """The head over `steps` of its own predictions on a batch; lm_head [V, H]: the target's (frozen).
    keep: a list to append each step's (window rows [B,W], head outputs [B,W,H]) to (tests)."""
    embeds, feats = batch.embeds, batch.features
    B, T, _ = embeds.shape
    dev = embeds.device
    P, L = batch.prompt_lens.to(dev), batch.lengths.to(dev)
    attn = head.self_attn
    h, hkv, d = attn.h, attn.hkv, attn.d
    K = int(steps)

    start = (P - 1 - K).clamp(min=0)
    W = int((L - 1 - start).max())
    idx = start[:, None] + torch.arange(W, device=dev)[None]       # [B,W] window rows
    real = idx <= (L - 2)[:, None]
    idx = idx.clamp(max=T - 2)

    x = feats[:, :-1]
    if noise:
        x = x + noise * keyed_noise(x.shape, batch.keys, seed, step_index, dev, x.dtype)
    u0, r0 = head.layer_inputs(embeds[:, 1:], x)                   # every row: the context
    pos0 = torch.arange(T - 1, device=dev).expand(B, -1)
    cos0, sin0 = rope_cos_sin(head.inv_freq, pos0, r0.dtype)
    k0 = apply_rope(attn.k_proj(u0).view(B, T - 1, hkv, d).transpose(1, 2), cos0, sin0)
    v0 = attn.v_proj(u0).view(B, T - 1, hkv, d).transpose(1, 2)
    keys, values = [k0], [v0]
    masks = [torch.arange(T - 1, device=dev)[None, None, :] <= idx[:, :, None]]  # [B,W,T-1] causal
    diag = torch.eye(W, dtype=torch.bool, device=dev).expand(B, W, W)

    want_rows = None
    losses, step_losses, hits, counts = [], [], [], []
    prev = None
    A = batch.final.shape[1]
    for k in range(K):
        pos = idx + k
        cos, sin = rope_cos_sin(head.inv_freq, pos, r0.dtype)
        if k == 0:
            u, r = _gather_rows(u0, idx), _gather_rows(r0, idx)
        else:
            tok = (idx + 1 + k).clamp(max=T - 1)
            u, r = head.layer_inputs(_gather_rows(embeds, tok), prev)
            keys.append(apply_rope(attn.k_proj(u).view(B, W, hkv, d).transpose(1, 2), cos, sin))
            values.append(attn.v_proj(u).view(B, W, hkv, d).transpose(1, 2))
            masks.append(diag)
        q = apply_rope(attn.q_proj(u).view(B, W, h, d).transpose(1, 2), cos, sin)
        out = F.scaled_dot_product_attention(q, torch.cat(keys, 2), torch.cat(values, 2),
                                             attn_mask=torch.cat(masks, -1).unsqueeze(1), enable_gqa=h != hkv)
        y = head.finish(r + attn.o_proj(out.transpose(1, 2).reshape(B, W, h * d)))
        prev = y
        if keep is not None:
            keep.append((idx, y))

        target_pos = idx + 1 + k                                       # the position whose distribution y predicts
        ok = real & (target_pos >= (P - 1)[:, None]) & (target_pos <= (L - 1)[:, None])
        want_rows = (target_pos - (P - 1)[:, None]).clamp(0, A - 1)
        want = _gather_rows(batch.final, want_rows)                   # [B,W,H]
        tgt_logits = lm_head_fp32(want, lm_head)                       # [B,W,V]
        tgt_choice = tgt_logits.argmax(-1)
        if head.kind == "eagle3":
            ids = head.draft_ids
            q_t = torch.softmax(tgt_logits.index_select(-1, ids), dim=-1)
            logp = torch.log_softmax(head.draft_logits(y), dim=-1)
            ok = ok & head.t2d[tgt_choice]
            per = -(q_t * logp).sum(-1)
            choice = ids[logp.argmax(-1)]
        else:
            q_t = torch.softmax(tgt_logits, dim=-1)
            logits = lm_head_fp32(y, lm_head)
            logp = torch.log_softmax(logits, dim=-1)
            per = F.smooth_l1_loss(y.float(), want.float(), reduction="none").mean(-1) \
                + CE_WEIGHT_EAGLE2 * -(q_t * logp).sum(-1)
            choice = logp.argmax(-1)
        okf = ok.float()
        n = okf.sum(1)
        per_sample = (per * okf).sum(1) / n.clamp(min=1)
        losses.append(decay ** k * per_sample)
        step_losses.append(per_sample.detach().mean())
        hits.append(((choice == tgt_choice) & ok).sum().detach())
        counts.append(ok.sum().detach())
    return StepOutput(torch.stack(losses).sum(0), torch.stack(step_losses), torch.stack(hits), torch.stack(counts))
