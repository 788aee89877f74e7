"""Drafting across tokenizers: lossless with any draft, and accepted when the draft's text is right."""

import json

import torch
from transformers import LlamaForCausalLM

from phide.cli import main
from phide.engine import Engine, Request, SpecConfig
from phide.models.frontends import TextFrontend
from phide.models.loading import load_llama, load_tokenizer
from phide.models.vocab import bridge_vocabularies
from phide.models.vocab import TextBridge
from phide.speculation.cross_vocab import CrossVocabDraft
from phide.speculation.tree import chain

PROMPTS = ["What is moving?", "Describe the scene.", "the red car turns left", "one two three",
           "Is it bright?", "slow bike behind a dog"]

MODES = ("target-only", "sequential", "hide")  # the schedules of a pair without a head


def _hf_greedy(hf, tok, prompt, n):
    ids = tok(prompt)["input_ids"]
    out = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, eos_token_id=2, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_bridge_is_chosen_only_when_vocabularies_differ(tiny_pair):
    t = load_tokenizer(tiny_pair["target"])
    shared, bridge = bridge_vocabularies(t, load_tokenizer(tiny_pair["near"]), 384)
    assert shared == len(t) and bridge is None
    shared, bridge = bridge_vocabularies(t, load_tokenizer(tiny_pair["other_vocab"]), 384)
    assert shared is None and isinstance(bridge, TextBridge)


def test_cross_vocab_draft_is_lossless(tiny_pair):
    t_tok, d_tok = load_tokenizer(tiny_pair["target"]), load_tokenizer(tiny_pair["other_vocab"])
    target, draft = load_llama(tiny_pair["target"]), load_llama(tiny_pair["other_vocab"])
    hf = LlamaForCausalLM.from_pretrained(tiny_pair["target"]).eval()
    engine = Engine(TextFrontend(target, t_tok), TextFrontend(draft, d_tok), eos_token_ids=[2],
                    vocab_bridge=TextBridge(t_tok, d_tok, target.cfg.vocab_size))
    for prompt in PROMPTS:
        ref = _hf_greedy(hf, t_tok, prompt, 24)
        for mode in MODES:
            res = engine.generate(Request(prompt=prompt, max_new_tokens=24), mode)
            assert res.token_ids == ref, (prompt, mode)
            assert res.stats["faults"] == 0, res.stats.get("fault_messages")


class _OracleRunner:
    """Stands in for a DraftRunner whose draft knows the target's future text exactly: it
    proposes the draft-tokenizer ids of that text after what the wrapper has committed."""

    def __init__(self, future_draft_ids, wrapper_ref):
        self.future, self.wrapper_ref = future_draft_ids, wrapper_ref
        self.forwards, self.length, self.pending = 0, 0, []

    def grow(self, *, budget, topk, max_depth, max_expansions, stop=None, on_step=None):
        self.forwards += 1
        w = self.wrapper_ref[0]
        self.length += len(self.pending)
        self.pending = []
        start = len(w.draft_gen)
        return chain(0, self.future[start:start + max_depth])


def test_cross_vocab_plumbing_accepts_a_right_draft(tiny_pair):
    """Mapping through text and the rollback after each verify keep a right draft right: with an
    oracle draft nearly every proposal is accepted."""
    t_tok, d_tok = load_tokenizer(tiny_pair["target"]), load_tokenizer(tiny_pair["other_vocab"])
    target = load_llama(tiny_pair["target"])
    prompt = "Describe the scene."
    only = Engine(TextFrontend(target, t_tok)).generate(Request(prompt=prompt, max_new_tokens=40), "target-only")
    bridge = TextBridge(t_tok, d_tok, target.cfg.vocab_size)
    future = bridge.draft_ids(bridge.target_text(only.token_ids))
    ref = [None]

    class OracleFrontend:
        lm = load_llama(tiny_pair["other_vocab"])
        tokenizer = d_tok

        def check(self, req):
            pass

        def prepare(self, req):
            from phide.models.frontends import Prepared

            return Prepared(d_tok(req.prompt)["input_ids"])

    engine = Engine(TextFrontend(target, t_tok), OracleFrontend(), eos_token_ids=list(target.cfg.eos_token_id),
                    vocab_bridge=bridge, spec=SpecConfig(depth=6, budget=7))
    orig = engine.prepare_draft

    def prepare_with_oracle(run):
        wrapper = orig(run)
        assert isinstance(wrapper, CrossVocabDraft)
        wrapper.runner = _OracleRunner(future, ref)
        ref[0] = wrapper
        return wrapper

    engine.prepare_draft = prepare_with_oracle
    res = engine.generate(Request(prompt=prompt, max_new_tokens=40), "sequential")
    assert res.token_ids == only.token_ids
    assert res.stats["accepted_per_verify"] >= 3.0, res.stats


def test_cli_runs_a_cross_vocab_pair(capsys, tiny_pair):
    args = ["generate", "--target", str(tiny_pair["target"]), "--draft", str(tiny_pair["other_vocab"]),
            "--prompt", "What is moving?", "--max-new-tokens", "16", "--json"]
    outs = {}
    for mode in MODES:
        assert main(args + ["--mode", mode]) == 0
        outs[mode] = json.loads(capsys.readouterr().out)["token_ids"]
    assert outs["hide"] == outs["sequential"] == outs["target-only"]
