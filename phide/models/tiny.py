"""Tiny LLaMA checkpoints in the real HF format, for tests and users' smoke checks.

`write_tokenizer` trains a small byte-level BPE tokenizer (LLaMA-style special ids 0/1/2) and
saves it with save_pretrained; `write_tiny_llama` saves a random LlamaForCausalLM with it, and
`write_draft_of` derives a draft from a target: a nearly identical one (weights + noise) or an
adversarial one (LM-head rows rolled by one, so its argmax is never the target's).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

SPECIAL = ["<unk>", "<s>", "</s>"]
_WORDS = (
    "the a red blue green yellow car truck bike person dog ball box circle square triangle moves "
    "left right up down fast slow still stops turns road street camera scene event frame light dark "
    "is are was and with near behind in on of to from what where which how many there one two three "
    "small large big tiny quickly slowly bright shadow edge motion colour color answer question"
).split()


# Prompt templates of the real pair, so their punctuation and newlines are in the vocabulary.
_TEMPLATES = [
    "USER: <video>\nWhat is moving? ASSISTANT:",
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions. USER: <ev_start><event><ev_end>\n"
    "Describe in detail what happened in the scene. ASSISTANT:",
]


def corpus(n_sentences: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = list(_TEMPLATES) * 5
    for _ in range(n_sentences):
        n = rng.randint(4, 14)
        out.append(" ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + rng.choice([".", "?", "!"]))
    return out


def write_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 384, seed: int = 0):
    """Train a SentencePiece-style BPE tokenizer (Metaspace "▁" word marks, like LLaMA's) and
    save it (HF format) to out_dir; returns it. Every id decodes to whole characters, so any id
    sequence decodes to readable text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False)
    tok.train_from_iterator(corpus(seed=seed), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def tiny_llama_config(vocab_size: int, *, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128,
                      init_std=0.08, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads,
                       intermediate_size=intermediate, initializer_range=init_std,
                       bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=1024,
                       **extra)


def write_tiny_llama(out_dir: str | os.PathLike, *, seed: int = 0, tokenizer_dir=None, vocab_size=384, **cfg):
    """Save a random tiny LlamaForCausalLM (+ tokenizer) to out_dir; returns the HF model."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    out_dir = Path(out_dir)
    tok = (AutoTokenizer.from_pretrained(str(tokenizer_dir)) if tokenizer_dir
           else write_tokenizer(out_dir, vocab_size=vocab_size))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(len(tok), **cfg)).eval()
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return model


def write_draft_of(target_dir: str | os.PathLike, out_dir: str | os.PathLike, *, noise: float = 0.0,
                   roll_lm_head: bool = False, seed: int = 1):
    """Derive a draft checkpoint from a target: weights + relative Gaussian noise, and/or the
    LM head rolled by one row (draft argmax = target argmax + 1: never right)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(target_dir)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if noise > 0:
                p.add_(torch.randn(p.shape, generator=g) * noise * p.float().std().clamp_min(1e-6))
        if roll_lm_head:
            model.lm_head.weight.copy_(torch.roll(model.lm_head.weight, shifts=1, dims=0))
    model.save_pretrained(str(out_dir))
    AutoTokenizer.from_pretrained(str(target_dir)).save_pretrained(str(out_dir))
    return model


def main(argv: list[str] | None = None) -> int:
    """python -m phide.models.tiny OUT_DIR: write target/, near/ (nearly identical draft) and
    wrong/ (always-wrong draft) tiny checkpoints for smoke tests."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m phide.models.tiny", description=main.__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    write_tiny_llama(out / "target", seed=args.seed, init_std=0.1)
    write_draft_of(out / "target", out / "near", noise=0.03, seed=args.seed + 1)
    write_draft_of(out / "target", out / "wrong", roll_lm_head=True)
    print(f"wrote {out}/target, {out}/near, {out}/wrong")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
