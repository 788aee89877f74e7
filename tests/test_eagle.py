"""The EAGLE continuation heads (EAGLE-2 and EAGLE-3): trained on the target's own answers they
draft what the target accepts; the engine stays lossless with them in every mode and under head
faults."""

import pytest
import torch
from transformers import LlamaForCausalLM

from phide.distill.features import Entry, OnlineSource
from phide.distill.head import fit_head, new_head
from phide.distill.validate import top1_by_step
from phide.engine import Engine, Request, SpecConfig
from phide import schedules
from phide.errors import PhideError
from phide.models.heads import load_head
from phide.models.loading import load_llama, load_tokenizer
from phide.speculation import drafters

PROMPTS = ["What is moving?", "Describe the scene.", "the red car turns left", "Where is the ball",
           "How many people are there?", "A blue truck moves fast on the road.", "dark", "edge motion",
           "which", "one two three", "Is it bright?", "slow bike behind a dog"]


@pytest.fixture(scope="module")
def answered(tiny_pair):
    """The tiny target's own greedy answers to the prompts, as training entries."""
    tok = load_tokenizer(tiny_pair["target"])
    target = load_llama(tiny_pair["target"])
    only = Engine(target)
    entries = []
    for i, p in enumerate(PROMPTS):
        ids = tok(p)["input_ids"]
        out = only.generate(Request(prompt_ids=ids, max_new_tokens=40), "target-only")
        entries.append(Entry(i, {"sample": str(i), "prompt_ids": ids}, out.token_ids))
    return {"tok": tok, "target": target, "engine": only, "entries": entries,
            "hf": LlamaForCausalLM.from_pretrained(tiny_pair["target"]).eval()}


@pytest.fixture(scope="module", params=["eagle2", "eagle3"])
def trained(request, answered, tmp_path_factory):
    head = fit_head(answered["engine"], answered["entries"][:9], kind=request.param, steps=300, lr=3e-3,
                    ttt_steps=3, seed=0)
    d = tmp_path_factory.mktemp(f"head-{request.param}")
    head.save(d)
    return {**answered, "kind": request.param, "head": head, "dir": d}


def test_head_learns_the_targets_next_token(trained):
    """On its training answers the head agrees with the target far more often than it did
    untrained, at its first step and at its own later steps. (A random tiny target has no
    structure to generalise from; the trained toy pair does.)"""
    target, seen = trained["target"], trained["entries"][:9]
    source = OnlineSource(trained["engine"], trained["head"].capture)
    untrained = new_head(trained["kind"], target).eval()
    acc = top1_by_step(trained["head"], source, seen, target.lm_head.weight, 3)
    base = top1_by_step(untrained, source, seen, target.lm_head.weight, 3)
    assert acc[0] > 0.25 and acc[0] > 2 * base[0], (acc, base)
    assert acc[2] > base[2] + 0.1, (acc, base)


def test_save_load_roundtrip(trained):
    loaded = load_head(trained["dir"], target_cfg=trained["target"].cfg)
    assert loaded.kind == trained["kind"]
    H = trained["target"].cfg.hidden_size
    e = torch.randn(1, 5, H)
    f = torch.randn(1, 5, H if trained["kind"] == "eagle2" else 3 * H)
    cache_a, cache_b = loaded.new_cache(5), trained["head"].new_cache(5)
    pos = torch.arange(5).unsqueeze(0)
    mask = torch.ones(5, 5, dtype=torch.bool).tril().unsqueeze(0)
    a = loaded(e, f, positions=pos, cache=cache_a, slots=pos, attn_mask=mask, kv_len=5)
    b = trained["head"](e, f, positions=pos, cache=cache_b, slots=pos, attn_mask=mask, kv_len=5)
    tol = {} if trained["kind"] == "eagle2" else {"rtol": 2e-2, "atol": 2e-2}  # EAGLE-3 is saved in bf16
    torch.testing.assert_close(a, b, **tol)
    with pytest.raises(PhideError, match="holds no EAGLE head"):
        load_head(trained["dir"].parent, target_cfg=trained["target"].cfg)


def test_engine_with_head_is_lossless_and_accepts(trained, tiny_pair):
    near = load_llama(tiny_pair["near"])
    engine = Engine(trained["target"], near, eos_token_ids=[2], head=trained["head"],
                    spec=SpecConfig(topk=3, depth=5, budget=16, window_budget=24))
    taus, head_forwards = [], 0
    for prompt in PROMPTS[:9]:
        ids = trained["tok"](prompt)["input_ids"]
        ref = trained["hf"].generate(torch.tensor([ids]), do_sample=False, max_new_tokens=30, eos_token_id=2,
                                     pad_token_id=0)[0, len(ids):].tolist()
        for mode in schedules.names():
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

    broken = new_head(trained["kind"], trained["target"])

    def fail(*a, **k):
        raise RuntimeError("injected head failure")

    broken.forward = fail
    for head, faults in ((trained["head"], 0), (broken, 1)):
        res = Engine(trained["target"], None, head=head).generate(
            Request(prompt_ids=ids, max_new_tokens=20), "head-only")
        assert res.token_ids == ref.token_ids and res.stats["faults"] == faults


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
