"""The EAGLE continuation head: trained on the target's own features it drafts what the target
accepts; the engine stays lossless with it in every mode and under head faults."""

import pytest
import torch
from transformers import LlamaForCausalLM

from phide.distill.head import Sequence, head_top1_accuracy, train_eagle_head
from phide.engine import Engine, Request, SpecConfig
from phide.modes import SCHEDULES
from phide.errors import PhideError
from phide.models.eagle import EagleHead, load_eagle_head
from phide.models.loading import load_llama, load_tokenizer
from phide.speculation import drafters

PROMPTS = ["What is moving?", "Describe the scene.", "the red car turns left", "Where is the ball",
           "How many people are there?", "A blue truck moves fast on the road.", "dark", "edge motion",
           "which", "one two three", "Is it bright?", "slow bike behind a dog"]


@pytest.fixture(scope="module")
def trained(tiny_pair, tmp_path_factory):
    tok = load_tokenizer(tiny_pair["target"])
    target = load_llama(tiny_pair["target"])
    only = Engine(target)
    seqs = []
    for p in PROMPTS:
        ids = tok(p)["input_ids"]
        out = only.generate(Request(prompt_ids=ids, max_new_tokens=40), "target-only")
        seqs.append(Sequence(ids + out.token_ids))
    head = train_eagle_head(target, seqs[:9], steps=300, lr=3e-3, seed=0, log_every=0)
    d = tmp_path_factory.mktemp("head")
    head.save(d)
    return {"tok": tok, "target": target, "head": head, "dir": d, "seqs": seqs,
            "hf": LlamaForCausalLM.from_pretrained(tiny_pair["target"]).eval()}


def test_head_learns_the_targets_next_token(trained):
    """On its training sequences the head agrees with the target far more often than an untrained
    head. (A random tiny target has no structure to generalise from; the trained toy pair does.)"""
    untrained = EagleHead(trained["target"].cfg)
    seen = trained["seqs"][:9]
    acc = head_top1_accuracy(trained["target"], trained["head"], seen)
    base = head_top1_accuracy(trained["target"], untrained, seen)
    assert acc > 0.25 and acc > 3 * base, (acc, base)


def test_save_load_roundtrip(trained):
    loaded = load_eagle_head(trained["dir"], target_cfg=trained["target"].cfg)
    e = torch.randn(1, 5, trained["target"].cfg.hidden_size)
    f = torch.randn(1, 5, trained["target"].cfg.hidden_size)
    torch.testing.assert_close(loaded.forward_train(e, f), trained["head"].forward_train(e, f))
    with pytest.raises(PhideError):
        load_eagle_head(trained["dir"].parent)


def test_engine_with_head_is_lossless_and_accepts(trained, tiny_pair):
    near = load_llama(tiny_pair["near"])
    engine = Engine(trained["target"], near, eos_token_ids=[2], head=trained["head"],
                    spec=SpecConfig(topk=3, depth=5, budget=16, window_budget=24))
    taus, head_forwards = [], 0
    for prompt in PROMPTS[:9]:
        ids = trained["tok"](prompt)["input_ids"]
        ref = trained["hf"].generate(torch.tensor([ids]), do_sample=False, max_new_tokens=30, eos_token_id=2,
                                     pad_token_id=0)[0, len(ids):].tolist()
        for mode in SCHEDULES:
            res = engine.generate(Request(prompt_ids=ids, max_new_tokens=30), mode)
            assert res.token_ids == ref, (prompt, mode)
            assert res.stats["faults"] == 0, res.stats.get("fault_messages")
            if mode != "target-only":
                head_forwards += res.stats["head_forwards"]
                taus.append(res.stats["accepted_per_verify"])
    assert head_forwards > 0
    assert sum(taus) / len(taus) > 1.2, taus  # the head's drafts are accepted


def test_head_without_draft_and_head_faults(trained):
    ids = trained["tok"](PROMPTS[0])["input_ids"]
    ref = Engine(trained["target"]).generate(Request(prompt_ids=ids, max_new_tokens=20), "target-only")

    class Broken(EagleHead):
        def forward(self, *a, **k):
            raise RuntimeError("injected head failure")

    broken = Broken(trained["target"].cfg)
    for head, faults in ((trained["head"], 0), (broken, 1)):
        res = Engine(trained["target"], None, head=head).generate(
            Request(prompt_ids=ids, max_new_tokens=20), "head-only")
        assert res.token_ids == ref.token_ids and res.stats["faults"] == faults


@pytest.mark.parametrize("tail", [None, 3])
def test_rollout_matches_chain_drafting(trained, tail):
    """head_rollout's step-k prediction at index i is what drafting a chain computes: the committed
    pairs 0..i in the cache, then k-1 expansions each reading the previous one's output (the
    positions, cache rows and mask EagleRunner/TreeGrower use)."""
    from phide.distill.head import head_rollout, target_features
    from phide.models.llama import KVCache

    torch.manual_seed(1)
    head = EagleHead(trained["target"].cfg)
    for p in head.parameters():  # a random head: every path through the layer matters
        torch.nn.init.normal_(p, std=0.3)
    e, f = target_features(trained["target"], trained["seqs"][0])
    depth = 3
    steps = head_rollout(head, e, f, depth, tail)
    assert len(steps) == depth
    for k, (pred, first) in enumerate(steps, 1):
        for row in (0, pred.shape[0] // 2, pred.shape[0] - 1):
            i = first + row
            cache = KVCache(head.cfg, 1, i + depth + 1, torch.float32, "cpu")
            pos = torch.arange(i + 1).unsqueeze(0)
            mask = torch.ones(i + 1, i + 1, dtype=torch.bool).tril().unsqueeze(0)
            h = head(e[1: i + 2].unsqueeze(0), f[: i + 1].unsqueeze(0), positions=pos, cache=cache, slots=pos,
                     attn_mask=mask, kv_len=i + 1)[0, -1]
            for d in range(1, k):  # expansion d: token i+1+d at position i+d, row i+d of the cache
                slot = i + d
                m = torch.zeros(1, 1, slot + 1, dtype=torch.bool)
                m[0, 0, :] = True  # committed rows and the chain so far
                h = head(e[i + 1 + d].view(1, 1, -1), h.view(1, 1, -1), positions=torch.tensor([[i + d]]),
                         cache=cache, slots=torch.tensor([[slot]]), attn_mask=m, kv_len=slot + 1)[0, -1]
            torch.testing.assert_close(pred[row], h, rtol=1e-4, atol=1e-5)


def test_head_post_verify_overlap_is_lossless(trained, tiny_pair, monkeypatch):
    """The head grows the next tree during each verify (on a thread lane, the CPU twin of the
    GPU's side stream): the tokens are the target's, greedy and sampled, and guesses that hit
    are used."""
    monkeypatch.setattr(drafters, "MIN_PATH_PROB", 0.0)  # grow ahead in every round
    near = load_llama(tiny_pair["near"])
    engine = Engine(trained["target"], near, eos_token_ids=[2], head=trained["head"],
                    spec=SpecConfig(topk=3, depth=5, budget=16, window_budget=24, overlap=True))
    plain = Engine(trained["target"], eos_token_ids=[2])
    rounds = hits = 0
    for i, prompt in enumerate(PROMPTS[:6]):
        ids = trained["tok"](prompt)["input_ids"]
        temperature = 0.0 if i % 2 == 0 else 0.8
        ref = plain.generate(Request(prompt_ids=ids, max_new_tokens=30, temperature=temperature, seed=i),
                             "target-only")
        for mode in ("head-only", "hide"):
            res = engine.generate(Request(prompt_ids=ids, max_new_tokens=30, temperature=temperature, seed=i), mode)
            assert res.token_ids == ref.token_ids, (prompt, mode)
            assert res.stats["faults"] == 0, res.stats.get("fault_messages")
            assert ("grow_ahead" in res.stats["phases"]) == (res.stats["overlap_rounds"] > 0)
            rounds += res.stats["overlap_rounds"]
            hits += res.stats["overlap_hits"]
    assert rounds > 0 and hits > 0, (rounds, hits)


def test_a_head_failing_while_it_grows_ahead_is_a_fault(trained, monkeypatch):
    """An exception in the growth beside the verify drops the head for the rest of the request
    (one fault, the target's tokens); the next request has its head again."""
    from phide.speculation.eagle_runner import EagleRunner

    monkeypatch.setattr(drafters, "MIN_PATH_PROB", 0.0)
    ids = trained["tok"](PROMPTS[1])["input_ids"]
    ref = Engine(trained["target"]).generate(Request(prompt_ids=ids, max_new_tokens=30), "target-only")
    engine = Engine(trained["target"], None, head=trained["head"],
                    spec=SpecConfig(topk=3, depth=5, budget=16, overlap=True))
    grow, fails = EagleRunner.grow_assuming, [1]

    def fails_once(self, *args, **kwargs):
        if fails and fails.pop():
            raise RuntimeError("injected failure beside the verify")
        return grow(self, *args, **kwargs)

    monkeypatch.setattr(EagleRunner, "grow_assuming", fails_once)
    res = engine.generate(Request(prompt_ids=ids, max_new_tokens=30), "head-only")
    assert res.token_ids == ref.token_ids
    assert res.stats["faults"] == 1 and "injected failure" in res.stats["fault_messages"][0]
    again = engine.generate(Request(prompt_ids=ids, max_new_tokens=30), "head-only")
    assert again.token_ids == ref.token_ids and again.stats["faults"] == 0
    assert again.stats["overlap_rounds"] > 0
