"""Attention supervision for training the toy target: teach chosen heads where to look.

Why: trained on answers alone (even with the patch and scene-fact probes of
`phide.toy.supervision`), the from-scratch target sat for hundreds of steps on a plateau with
perfect templates and guessed attributes: its text positions did not learn to find the few object
patches among 400 visual tokens. The renderer knows where every object is, so a few heads are told
directly: in layer 0, head k (k = shape slot, SHAPES order) looks from every text position after
the frames at shape k's patches in the LAST frame (colour, size, where it ends up); in layer 1,
head k looks at them in the FIRST frame (where it started: with the last frame, its motion). The
loss is -log(attention mass on those patches), for shapes present in the scene. Training-only;
the checkpoints keep their formats and the engine never sees this module.
"""

from __future__ import annotations

import contextlib

import torch

from phide.ops.reference.rope import rotate_half


@contextlib.contextmanager
def capture_attention_inputs(lm, layers: tuple[int, ...]):
    """While active, `store[layer]` holds (x, cos, sin) of the named layers' last attention call
    (x [B,T,hidden] after the input norm; cos/sin [B,T,D])."""
    store: dict[int, tuple] = {}
    handles = [lm.layers[i].self_attn.register_forward_hook(
        lambda mod, args, out, i=i: store.__setitem__(i, args[:3])) for i in layers]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def attention_rows(attn, x, cos, sin, rows: slice, n_keys: int) -> torch.Tensor:
    """Causal attention probabilities [Hq, len(rows), n_keys] of one sequence (x [T, hidden],
    cos/sin [T, D]) for query positions `rows`, recomputed from the layer's projections."""
    h, hkv, d = attn.h, attn.hkv, attn.d
    xs = x[:n_keys]
    q = attn.q_proj(x[rows]).view(-1, h, d).transpose(0, 1)             # [Hq, R, D]
    k = attn.k_proj(xs).view(-1, hkv, d).transpose(0, 1)                  # [Hkv, K, D]
    q = q * cos[rows] + rotate_half(q) * sin[rows]
    k = k * cos[:n_keys] + rotate_half(k) * sin[:n_keys]
    k = k.repeat_interleave(h // hkv, dim=0)                               # [Hq, K, D]
    scores = (q @ k.transpose(1, 2)).float() / d ** 0.5                   # [Hq, R, K]
    r = torch.arange(rows.start, rows.stop, device=x.device)[:, None]
    scores = scores.masked_fill(torch.arange(n_keys, device=x.device)[None, :] > r, float("-inf"))
    return scores.softmax(-1)


def look_loss(probs: torch.Tensor, heads_to_keys: dict[int, torch.Tensor]) -> torch.Tensor:
    """Mean over the given heads of -log(attention mass on their key positions), averaged over
    rows. probs [Hq, R, K]; heads_to_keys: head -> int64 key positions (non-empty)."""
    losses = [-(probs[h][:, keys].sum(-1).clamp_min(1e-6)).log().mean() for h, keys in heads_to_keys.items()]
    return torch.stack(losses).mean() if losses else probs.new_zeros(())
