"""The toy world's tokenizer: a SentencePiece-style BPE (Metaspace "▁" word marks, like LLaMA's)
trained with the tokenizers library on the world's questions and answers plus the real prompt
templates (Video-LLaVA's "USER: <video>\\n{q} ASSISTANT:" and EventGPT's eventgpt_v1 system prompt),
saved in HF format (AutoTokenizer.from_pretrained loads it).

Special ids as LLaMA's: 0 <unk>, 1 <s>, 2 </s>; the post-processor adds BOS (<s>) in front. Like
`phide.models.tiny.write_tokenizer`, it holds no <video> / <image> / <event> / <pad> tokens: the
tiny checkpoint writers add those the way the real conversions do. The world's vocabulary is small,
so every world word is one token and answers take 20-40 tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

from phide.toy.world import corpus as world_corpus
from phide.toy.world import questions_for, sample_scene

SPECIAL = ["<unk>", "<s>", "</s>"]

# The real pair's templates (phide.models.video_llava.PROMPT_TEMPLATE and
# phide.models.eventgpt.PROMPT_TEMPLATE; tests check they still agree). Copied, not imported, so the
# toy world needs no torch.
VIDEO_LLAVA_TEMPLATE = "USER: <video>\n{question} ASSISTANT:"
EVENTGPT_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's questions.")
EVENTGPT_TEMPLATE = EVENTGPT_SYSTEM + " USER: <ev_start><event><ev_end>\n{question} ASSISTANT:"


def training_text(n_scenes: int = 2000, seed: int = 0) -> list[str]:
    """The tokenizer's training text: the world corpus, then every question of a few scenes in both
    prompt templates followed by its answer."""
    from phide.toy.world import answer

    text = list(world_corpus(n_scenes, seed))
    for i in range(50):
        scene = sample_scene(10_000 + i)
        for q in questions_for(scene):
            a = answer(scene, q)
            text.append(VIDEO_LLAVA_TEMPLATE.format(question=q) + " " + a)
            text.append(EVENTGPT_TEMPLATE.format(question=q) + " " + a)
    return text


def train_toy_tokenizer(out_dir: str | os.PathLike | None = None, vocab_size: int = 512, seed: int = 0,
                        n_scenes: int = 2000):
    """Train the toy tokenizer and (when out_dir is given) save it there in HF format; returns the
    PreTrainedTokenizerFast. The BPE stops early when the corpus runs out of merges, so len() can be
    below vocab_size (about 400 at the defaults: every word of the world and templates is whole)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Markers (<video>, <ev_start>, ...) and newlines are pieces of their own, as in LLaMA's
    # SentencePiece (where "\n" is the byte piece <0x0A>), so "<ev_end>\nWhat" is three tokens.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"<[a-z_]+>|\n"), behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False)
    tok.train_from_iterator(training_text(n_scenes, seed), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(out_dir))
    return fast


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of `text` without special tokens (no BOS / EOS)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
