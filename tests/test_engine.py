"""The engine is lossless: greedy tokens identical to the target's own greedy decoding in every
mode, for good, bad and failing drafts; speculation saves target forwards when the draft is good;
sampling follows the target's distribution."""

import time

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers import LlamaForCausalLM

from phide.engine import Engine, Plan, Request, SpecConfig
from phide.errors import PhideError
from phide.models.loading import load_llama, load_tokenizer
from phide.models.tiny import tiny_llama_config
from phide.speculation import drafters
from sim_device import ModelStandIn

MODES = ("target-only", "sequential", "hide")  # the schedules a pair without a head runs

PROMPTS = [
    "What is moving?", "Describe the scene.", "the red car turns left", "Where is the ball",
    "How many people are there?", "A blue truck moves fast on the road.", "dark", "edge motion",
    "which", "The camera sees a small green circle near the big square", "stops", "Is it bright?",
    "one two three", "Describe what happened in the scene in detail.", "slow bike behind a dog",
    "up down left right", "What colour is the triangle?", "event frame light", "?", "a",
    "The person is still.", "tiny yellow box",
]


@pytest.fixture(scope="module")
def models(tiny_pair):
    tok = load_tokenizer(tiny_pair["target"])
    hf = LlamaForCausalLM.from_pretrained(tiny_pair["target"]).eval()
    return {
        "tok": tok,
        "hf": hf,
        "target": load_llama(tiny_pair["target"]),
        "near": load_llama(tiny_pair["near"]),
        "wrong": load_llama(tiny_pair["wrong"]),
    }


def _hf_greedy(hf, ids, n):
    out = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, eos_token_id=2,
                      pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("draft,static", [("near", False), ("wrong", False), ("near", True)],
                         ids=["near", "wrong", "near-static-verify"])
def test_greedy_identical_to_transformers_in_every_mode(models, draft, static):
    """static: the target's verifies at static shapes (SpecConfig.target_graph: the CUDA graphs'
    eager twin on a CPU)."""
    engine = Engine(models["target"], models[draft], eos_token_ids=[2],
                    spec=SpecConfig(topk=3, depth=5, budget=16, window_budget=40, target_graph=static))
    taus = []
    for i, prompt in enumerate(PROMPTS):
        ids = models["tok"](prompt)["input_ids"]
        n = 12 + (i % 4) * 7
        ref = _hf_greedy(models["hf"], ids, n)
        for mode in MODES:
            res = engine.generate(Request(prompt_ids=ids, max_new_tokens=n), mode)
            assert res.token_ids == ref, (prompt, mode)
            assert res.stats["faults"] == 0
            if static:
                assert "target_graph" not in res.stats
            if mode != "target-only":
                taus.append(res.stats["accepted_per_verify"])
    if static:  # every verify (trees of <= 40 nodes, prompts far from the cache's end) was static
        assert engine._target_step.eager > 0
    if draft == "near":
        assert np.mean(taus) >= 3.0, taus
    else:
        assert np.mean(taus) < 1.5, taus


def test_always_wrong_chain_draft_never_accepted(models):
    engine = Engine(models["target"], models["wrong"], eos_token_ids=[2],
                    spec=SpecConfig(topk=1, depth=4, budget=5, window_budget=8))
    ids = models["tok"](PROMPTS[0])["input_ids"]
    res = engine.generate(Request(prompt_ids=ids, max_new_tokens=20), "sequential")
    assert res.token_ids == _hf_greedy(models["hf"], ids, 20)
    assert res.stats["accepted_drafts_per_verify"] == 0.0
    assert res.stats["accepted_per_verify"] == 1.0


def test_good_draft_saves_target_forwards(models):
    engine = Engine(models["target"], models["near"], eos_token_ids=[])  # no EOS: full length
    ids = models["tok"](PROMPTS[1])["input_ids"]
    res = engine.generate(Request(prompt_ids=ids, max_new_tokens=48), "hide")
    assert len(res.token_ids) == 48
    assert res.stats["target_forwards"] < len(res.token_ids) / 2
    assert res.stats["accepted_per_verify"] >= 3.0
    assert res.stats["draft_forwards"] > 0
    only = engine.generate(Request(prompt_ids=ids, max_new_tokens=48), "target-only")
    assert only.stats["target_forwards"] == 49  # prefill + one forward per token
    assert only.token_ids == res.token_ids


class _Slow(ModelStandIn):
    """A model whose first forward (its prefill) takes `delay` seconds longer."""

    def __init__(self, inner, delay):
        super().__init__(inner)
        self.delay = delay

    def forward(self, *a, **kw):
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.delay)
        return self.inner(*a, **kw)


def test_hide_window_counts_what_the_draft_made_before_the_prefill_ended(models):
    """hide: the draft's first tree grows until the target's prefill ends. A slow target prefill
    leaves the draft time for its whole first tree (every node counted in the window); a slow
    draft prefill leaves none (the tree is the root's children at most, grown after the window,
    and nothing counts). sequential never counts window tokens. Tokens are the same throughout."""
    spec = SpecConfig(topk=2, depth=4, budget=12, window_depth=3, window_budget=8)
    ids = models["tok"](PROMPTS[1])["input_ids"]
    ref = Engine(models["target"], eos_token_ids=[]).generate(Request(prompt_ids=ids, max_new_tokens=8),
                                                              "target-only")
    slow_target = Engine(_Slow(models["target"], 0.5), models["near"], eos_token_ids=[], spec=spec)
    res = slow_target.generate(Request(prompt_ids=ids, max_new_tokens=8), "hide")
    s = res.stats
    assert res.token_ids == ref.token_ids and s["faults"] == 0
    assert s["draft_steps_in_window"] == spec.window_depth - 1  # the last level is never expanded
    assert s["draft_tokens_in_window"] == spec.window_budget - 1  # the whole first tree (10 grown, 7 kept)
    assert {"target_prefill", "draft_prefill", "draft_grow", "verify"} <= set(s["phases"])
    slow_draft = Engine(models["target"], _Slow(models["near"], 0.5), eos_token_ids=[], spec=spec)
    res = slow_draft.generate(Request(prompt_ids=ids, max_new_tokens=8), "hide")
    assert res.token_ids == ref.token_ids
    assert (res.stats["draft_steps_in_window"], res.stats["draft_tokens_in_window"]) == (0, 0)
    seq = Engine(models["target"], models["near"], eos_token_ids=[], spec=spec).generate(
        Request(prompt_ids=ids, max_new_tokens=8), "sequential")
    assert seq.stats["draft_tokens_in_window"] == 0 and seq.token_ids == ref.token_ids


class _Exploding(ModelStandIn):
    """A draft whose forward raises or returns NaN after a few calls."""

    def __init__(self, inner, kind, after):
        super().__init__(inner)
        self.kind, self.after = kind, after

    def forward(self, *a, **kw):
        self.calls += 1
        out = self.inner(*a, **kw)
        if self.calls > self.after:
            if self.kind == "raise":
                raise RuntimeError("injected draft failure")
            return out * float("nan")
        return out


@pytest.mark.parametrize("kind", ["raise", "nan"])
@pytest.mark.parametrize("after", [0, 3])
@pytest.mark.parametrize("mode", ["hide", "sequential"])
def test_draft_faults_never_change_output(models, kind, after, mode):
    ids = models["tok"](PROMPTS[2])["input_ids"]
    ref = _hf_greedy(models["hf"], ids, 24)
    engine = Engine(models["target"], _Exploding(models["near"], kind, after), eos_token_ids=[2])
    res = engine.generate(Request(prompt_ids=ids, max_new_tokens=24), mode)
    assert res.token_ids == ref
    assert res.stats["faults"] == 1


def test_bad_requests(models):
    engine = Engine(models["target"], models["near"])
    alone = Engine(models["target"])
    long_prompt = [1] + [5] * models["target"].cfg.max_position_embeddings
    for eng, req, plan, msg in [
        (engine, Request(prompt_ids=[]), "hide", "empty"),
        (engine, Request(prompt_ids=[1, 5], max_new_tokens=0), "hide", "max_new_tokens"),
        (engine, Request(prompt_ids=[1, 5]), "fast", "schedule"),
        (engine, Request(prompt_ids=[1, 10**6]), "hide", "vocabulary"),
        (engine, Request(prompt_ids=[1, 5], temperature=-1.0), "hide", "temperature"),
        (engine, Request(prompt_ids=long_prompt), "target-only", "max_position_embeddings"),
        (engine, Request(prompt_ids=[1, 5], max_new_tokens=10**6), "target-only", "ask for at most"),
        (engine, Request(prompt_ids=[1, 5]), "head-only", "EAGLE head"),
        (alone, Request(prompt_ids=[1, 5]), "sequential", "needs a draft"),
    ]:
        with pytest.raises(PhideError, match=msg):
            eng.generate(req, plan)
    for bad, msg in [(dict(topk=0), "topk"), (dict(window_budget=0), "window_budget"),
                     (dict(window_depth=64), "window_depth must be <= 63")]:
        with pytest.raises(PhideError, match=msg):
            SpecConfig(**bad)
    with pytest.raises(PhideError, match=">= 0"):
        Plan("hide", draft_threads=-1)


def _exact_two_token_law(hf, ids, temperature):
    """p(a) p(b|a) of the target for the first two sampled tokens, exactly."""
    with torch.no_grad():
        p1 = torch.softmax(hf(torch.tensor([ids])).logits[0, -1].double() / temperature, -1)
        V = p1.numel()
        seqs = torch.tensor([ids + [a] for a in range(V)])
        p2 = torch.softmax(hf(seqs).logits[:, -1].double() / temperature, -1)
    return (p1[:, None] * p2).flatten().numpy()


@pytest.mark.parametrize("mode,static", [("hide", False), ("target-only", False), ("hide", True)],
                         ids=["hide", "target-only", "hide-static-verify"])
def test_sampling_follows_target_distribution(tmp_path, mode, static):
    """End-to-end chi-square: first two sampled tokens of the engine vs the target's exact law,
    on a 6-token vocabulary where a tree of top-2 drafts often misses (the target's own sample is
    emitted)."""
    torch.manual_seed(0)
    V = 6
    hf = LlamaForCausalLM(tiny_llama_config(V, hidden=32, layers=1, heads=2, kv_heads=1,
                                            intermediate=64, init_std=0.3)).eval()
    hf.save_pretrained(tmp_path / "t")
    torch.manual_seed(1)
    dh = LlamaForCausalLM(tiny_llama_config(V, hidden=32, layers=1, heads=2, kv_heads=1,
                                            intermediate=64, init_std=0.3)).eval()
    dh.save_pretrained(tmp_path / "d")
    target, draft = load_llama(tmp_path / "t"), load_llama(tmp_path / "d")
    engine = Engine(target, draft, eos_token_ids=[],
                    spec=SpecConfig(topk=2, depth=3, budget=6, window_budget=6, target_graph=static))
    ids = [1, 4, 3]
    law = _exact_two_token_law(hf, ids, 1.0)
    n = 3000
    counts = np.zeros(V * V)
    accepted = 0.0
    for seed in range(n):
        out = engine.generate(Request(prompt_ids=ids, max_new_tokens=2, temperature=1.0, seed=seed), mode)
        counts[out.token_ids[0] * V + out.token_ids[1]] += 1
        accepted += out.stats["accepted_drafts_per_verify"] > 0
    if mode == "hide":  # drafts were both accepted and rejected: both paths of the walk ran
        assert 0.1 * n < accepted < 0.95 * n, accepted
    keep = law * n >= 5  # chi-square needs expected counts >= 5; pool the rest
    f_obs = np.append(counts[keep], counts[~keep].sum())
    f_exp = np.append(law[keep] * n, law[~keep].sum() * n)
    if f_exp[-1] == 0:
        f_obs, f_exp = f_obs[:-1], f_exp[:-1]
    p = chisquare(f_obs, f_exp).pvalue
    assert p > 1e-3, (p, counts, law * n)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static-verify"])
def test_sampling_is_the_target_only_sample_in_every_mode(tiny_pair, static):
    """Position-keyed Gumbel sampling: with the same seed, every mode emits exactly the tokens
    target-only sampling draws, whatever the draft proposed (so hide's timing-dependent window
    tree cannot change a seeded sample); with static verifies too."""
    target, draft = load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"])
    engine = Engine(target, draft, eos_token_ids=[], spec=SpecConfig(target_graph=static))
    ids = [1, 17, 42, 99, 5]
    accepted = 0.0
    for seed in range(6):
        outs = {m: engine.generate(Request(prompt_ids=ids, max_new_tokens=16, temperature=0.9, seed=seed), m)
                for m in ("target-only", "sequential", "hide")}
        assert outs["sequential"].token_ids == outs["target-only"].token_ids
        assert outs["hide"].token_ids == outs["target-only"].token_ids
        accepted += outs["hide"].stats["accepted_drafts_per_verify"]
    assert accepted > 0  # drafts were really verified and accepted
    a = engine.generate(Request(prompt_ids=ids, max_new_tokens=16, temperature=0.9, seed=0), "target-only")
    b = engine.generate(Request(prompt_ids=ids, max_new_tokens=16, temperature=0.9, seed=1), "target-only")
    assert a.token_ids != b.token_ids  # the seed matters


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_post_verify_overlap_is_lossless_and_hits(tiny_pair, temperature, monkeypatch):
    """The draft grows the next tree during the verify: same tokens as target-only (greedy and
    seeded sampling), and with a nearly identical draft most guesses hit."""
    target, draft = load_llama(tiny_pair["target"]), load_llama(tiny_pair["near"])
    ids = [1, 17, 42, 99, 5]
    ref = Engine(target, eos_token_ids=[]).generate(
        Request(prompt_ids=ids, max_new_tokens=24, temperature=temperature, seed=3), "target-only")
    monkeypatch.setattr(drafters, "MIN_PATH_PROB", 0.0)  # grow ahead in every round
    for mode in ("sequential", "hide"):
        eng = Engine(target, draft, eos_token_ids=[], spec=SpecConfig(overlap=True, depth=4, budget=12))
        out = eng.generate(Request(prompt_ids=ids, max_new_tokens=24, temperature=temperature, seed=3), mode)
        assert out.token_ids == ref.token_ids, mode
        assert out.stats["faults"] == 0 and out.stats["overlap_rounds"] > 0
        if temperature == 0:
            assert out.stats["overlap_hits"] > 0
    wrong = Engine(target, load_llama(tiny_pair["wrong"]), eos_token_ids=[], spec=SpecConfig(overlap=True))
    out = wrong.generate(Request(prompt_ids=ids, max_new_tokens=24), "hide")
    assert out.token_ids == Engine(target, eos_token_ids=[]).generate(
        Request(prompt_ids=ids, max_new_tokens=24), "target-only").token_ids
    assert out.stats["overlap_hits"] == 0  # an always-wrong draft never guesses the outcome
