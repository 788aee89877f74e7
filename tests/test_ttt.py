"""Training-time test (phide.distill.ttt) computes what drafting computes, for both heads; its loss
counts what it should; keyed noise does not depend on where a sample lands."""

import pytest
import torch

from phide.distill.ttt import HeadBatch, keyed_noise, ttt_forward
from phide.models.eagle import EagleHead
from phide.models.eagle3 import Eagle3Head
from phide.models.llama import KVCache, LlamaConfig

CFG = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8)


def _head(kind: str):
    torch.manual_seed(3)
    head = EagleHead(CFG) if kind == "eagle2" else Eagle3Head(CFG, capture=(0, 1, 2))
    for p in head.parameters():  # a random head: every path through the layer matters
        torch.nn.init.normal_(p, std=0.3)
    return head


def _batch(head, lens=(13, 10), prompts=(7, 5)):
    torch.manual_seed(4)
    B, T, H = len(lens), max(lens), CFG.hidden_size
    F = H if head.kind == "eagle2" else 3 * H
    embeds, feats = torch.randn(B, T, H), torch.randn(B, T, F)
    final = torch.zeros(B, max(L - P + 1 for L, P in zip(lens, prompts)), H)
    for b, (L, P) in enumerate(zip(lens, prompts)):
        embeds[b, L:] = 0
        feats[b, L:] = 0
        final[b, : L - P + 1] = torch.randn(L - P + 1, H)
    return HeadBatch(embeds, feats, final, torch.tensor(prompts), torch.tensor(lens), [0, 1])


def _chain(head, embeds, feats, i: int, k: int) -> torch.Tensor:
    """Chain drafting from row i as EagleRunner runs it: the pairs 0..i in the cache, then k
    expansions, each reading the previous output, at the cache rows and positions the tree uses."""
    cache = KVCache(head.cfg, 1, i + k + 2, torch.float32, "cpu")
    pos = torch.arange(i + 1).unsqueeze(0)
    mask = torch.ones(i + 1, i + 1, dtype=torch.bool).tril().unsqueeze(0)
    h = head(embeds[1: i + 2].unsqueeze(0), feats[: i + 1].unsqueeze(0), positions=pos, cache=cache, slots=pos,
             attn_mask=mask, kv_len=i + 1)[0, -1]
    for step in range(1, k + 1):
        slot = i + step
        m = torch.ones(1, 1, slot + 1, dtype=torch.bool)
        h = head(embeds[i + 1 + step].view(1, 1, -1), h.view(1, 1, -1), positions=torch.tensor([[i + step]]),
                 cache=cache, slots=torch.tensor([[slot]]), attn_mask=m, kv_len=slot + 1)[0, -1]
    return h


@pytest.mark.parametrize("kind", ["eagle2", "eagle3"])
def test_training_time_test_is_chain_drafting(kind):
    head = _head(kind).eval()
    batch = _batch(head)
    lm_head = torch.randn(CFG.vocab_size, CFG.hidden_size)
    kept = []
    with torch.no_grad():
        ttt_forward(head, batch, lm_head, steps=3, keep=kept)
    assert len(kept) == 3
    checked = 0
    for k, (idx, y) in enumerate(kept):
        for b, L in enumerate(batch.lengths.tolist()):
            for w in range(idx.shape[1]):
                i = int(idx[b, w])
                if i + 1 + k > L - 1:  # past the sample's end: a padding row
                    continue
                want = _chain(head, batch.embeds[b, :L], batch.features[b, :L], i, k)
                torch.testing.assert_close(y[b, w], want, rtol=1e-4, atol=1e-5)
                checked += 1
    assert checked > 20


@pytest.mark.parametrize("kind", ["eagle2", "eagle3"])
def test_loss_scores_every_answer_position_and_top1_compares_choices(kind):
    """Step k scores the positions whose distributions predict the answer (P-1 .. T-1), every one
    at every step (the window starts early enough); padding scores nothing. A head whose every
    output chooses what the target chooses hits all of them; a random one does not."""
    head = _head(kind).eval()
    batch = _batch(head, lens=(13, 10), prompts=(7, 5))
    lm_head = torch.randn(CFG.vocab_size, CFG.hidden_size)
    with torch.no_grad():
        out = ttt_forward(head, batch, lm_head, steps=3)
    expected = (13 - 7 + 1) + (10 - 5 + 1)
    assert out.counts.tolist() == [expected] * 3
    assert out.loss.shape == (2,) and torch.isfinite(out.loss).all()
    assert (out.hits < out.counts).all()
    # every logit 0 on both sides: both choose id 0 everywhere
    zero = torch.zeros_like(lm_head)
    if kind == "eagle3":  # its own LM head
        with torch.no_grad():
            head.lm_head.weight.zero_()
    with torch.no_grad():
        out = ttt_forward(head, batch, zero, steps=3)
    assert out.hits.tolist() == out.counts.tolist() == [expected] * 3


def test_keyed_noise_depends_on_the_sample_not_its_slot():
    a = keyed_noise((2, 5, 3), [11, 12], seed=0, step=4, device="cpu", dtype=torch.float32)
    b = keyed_noise((2, 5, 3), [12, 11], seed=0, step=4, device="cpu", dtype=torch.float32)
    torch.testing.assert_close(a[0], b[1])
    torch.testing.assert_close(a[1], b[0])
    c = keyed_noise((1, 5, 3), [11], seed=0, step=5, device="cpu", dtype=torch.float32)
    assert not torch.equal(a[0], c[0])
    assert float(a.abs().max()) <= 0.5
