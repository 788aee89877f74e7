"""The EAGLE continuation head: trained on the target's own features it drafts what the target
accepts; the engine stays lossless with it in every mode and under head faults."""

import pytest
import torch
from transformers import LlamaForCausalLM

from phide.distill import Sequence, head_top1_accuracy, train_eagle_head
from phide.engine import MODES, Engine, Request, SpecConfig
from phide.errors import PhideError
from phide.models.eagle import EagleHead, load_eagle_head
from phide.models.loading import load_llama, load_tokenizer

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
        out = only.generate(Request(prompt_ids=ids, max_new_tokens=40, mode="target-only"))
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
        for mode in MODES:
            res = engine.generate(Request(prompt_ids=ids, max_new_tokens=30, mode=mode))
            assert res.token_ids == ref, (prompt, mode)
            assert res.stats["faults"] == 0, res.stats.get("fault_messages")
            if mode != "target-only":
                head_forwards += res.stats["head_forwards"]
                taus.append(res.stats["accepted_per_verify"])
    assert head_forwards > 0
    assert sum(taus) / len(taus) > 1.2, taus  # the head's drafts are accepted


def test_head_without_draft_and_head_faults(trained):
    ids = trained["tok"](PROMPTS[0])["input_ids"]
    ref = Engine(trained["target"]).generate(Request(prompt_ids=ids, max_new_tokens=20, mode="target-only"))

    class Broken(EagleHead):
        def forward(self, *a, **k):
            raise RuntimeError("injected head failure")

    broken = Broken(trained["target"].cfg)
    for head, faults in ((trained["head"], 0), (broken, 1)):
        res = Engine(trained["target"], None, head=head).generate(
            Request(prompt_ids=ids, max_new_tokens=20, mode="sequential"))
        assert res.token_ids == ref.token_ids and res.stats["faults"] == faults
