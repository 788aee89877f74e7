"""Model frontends: turn a request's raw inputs (prompt text, video, events, or token ids) into
what phide's owned decoder consumes, for one side of the pair.

A frontend owns a language model (`lm`, a phide LlamaModel), its tokenizer and, for multimodal
models, a vision tower. `prepare(request)` returns a `Prepared` input; the engine calls it on the
side's own lane (the draft's input preparation runs on the draft lane, hidden like its prefill).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from phide.errors import PhideError
from phide.models.llama import LlamaModel


@dataclass
class Prepared:
    """A ready prompt.

    ids: prompt token ids [P] (at spliced positions, the placeholder id; never sent to an
         embedding when `embeds` is given). ids[-1] must be a real text token: it becomes the
         first root of the speculation rounds.
    embeds: [1, P, hidden] input embeddings with visual features spliced in, or None (text only).
    info: stats to report (e.g. visual_tokens, frames).
    """

    ids: list[int]
    embeds: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.ids:
            raise PhideError("the prompt is empty")
        if self.embeds is not None and self.embeds.shape[1] != len(self.ids):
            raise ValueError(f"embeds cover {self.embeds.shape[1]} positions, ids {len(self.ids)}")


class Frontend(Protocol):
    lm: LlamaModel
    tokenizer: Any

    def check(self, request) -> None:
        """Cheap: raise PhideError when the request lacks what this side reads (an input, a file
        that does not exist). The engine checks every loaded side before any work, whatever the
        plan, so a request's validity never depends on what the planner picks."""

    def prepare(self, request) -> Prepared: ...


def check_path(value, what: str) -> None:
    """A path-like input must exist (arrays and tensors are checked when read)."""
    if isinstance(value, (str, os.PathLike)) and not Path(value).exists():
        raise PhideError(f"{what} not found: {value}")


class TextFrontend:
    """A plain LLaMA checkpoint: the prompt is tokenized as is (BOS per the tokenizer)."""

    def __init__(self, lm: LlamaModel, tokenizer):
        self.lm, self.tokenizer = lm, tokenizer

    def check(self, request) -> None:
        if request.video is not None or request.events is not None:
            raise PhideError("this checkpoint is a text-only LLaMA: --video/--events need the "
                             "Video-LLaVA target / EventGPT draft checkpoints")
        if request.prompt is None:
            raise PhideError("a text-only LLaMA needs --prompt")

    def prepare(self, request) -> Prepared:
        self.check(request)
        return Prepared(list(self.tokenizer(request.prompt)["input_ids"]))


class IdsFrontend:
    """Frontend for a bare model: the request carries token ids (tests, benchmarks)."""

    def __init__(self, lm: LlamaModel, draft_side: bool = False):
        self.lm, self.draft_side = lm, draft_side

    def _ids(self, req) -> list[int]:
        return req.draft_prompt_ids if self.draft_side and req.draft_prompt_ids is not None else req.prompt_ids

    def check(self, req) -> None:
        ids = self._ids(req)
        if not ids:
            raise PhideError("the prompt is empty")
        bad = [t for t in ids if not 0 <= t < self.lm.cfg.vocab_size]
        if bad:
            raise PhideError(f"prompt token id {bad[0]} is outside the {'draft' if self.draft_side else 'target'} "
                             "vocabulary")

    def prepare(self, req) -> Prepared:
        self.check(req)
        return Prepared(list(self._ids(req)))
