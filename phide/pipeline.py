"""Build an Engine from checkpoint directories: the one loader behind generate, trace, distill,
demo and bench.

Directories are checked (config.json readable) before anything heavy loads. The EAGLE head and the
draft adapter are optional: by default each is taken from the directory that owns it (the head
from the target directory, the adapter from the draft directory) when its files are there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class LoadedPair:
    engine: Any          # phide.engine.Engine
    target: Any          # the target adapter (tokenizer, prompt building)
    draft: Any = None    # the draft adapter, or None
    head: Any = None     # EagleHead or None
    adapter: Any = None  # DraftAdapter or None


def load_pair(target_dir, draft_dir=None, *, head_dir=None, adapter_dir=None, use_head: bool = True,
              use_adapter: bool = True, device: str = "cpu", dtype=None, spec=None, clip_dir=None) -> LoadedPair:
    """head_dir / adapter_dir: explicit locations (must hold the files); None = the default places
    when present. use_head / use_adapter=False leave them out (to measure without them)."""
    import torch

    from phide.engine import Engine
    from phide.models.draft_adapter import has_draft_adapter, load_draft_adapter
    from phide.models.eagle import has_eagle_head, load_eagle_head
    from phide.models.loading import read_config
    from phide.models.registry import load_adapter
    from phide.models.vocab import bridge_vocabularies

    dtype = dtype or torch.float32
    read_config(target_dir)  # fail fast on a bad directory, before any loading
    if draft_dir is not None:
        read_config(draft_dir)
    target = load_adapter(target_dir, role="target", device=device, dtype=dtype)
    draft = shared = bridge = head = adapter = None
    if draft_dir is not None:
        draft = load_adapter(draft_dir, role="draft", device=device, dtype=dtype, clip_dir=clip_dir)
        shared, bridge = bridge_vocabularies(target.tokenizer, draft.tokenizer, target.lm.cfg.vocab_size)
        if use_adapter:
            adapter_dir = adapter_dir or (draft_dir if has_draft_adapter(draft_dir) else None)
            if adapter_dir is not None:
                adapter = load_draft_adapter(adapter_dir, draft.lm.lm_head)
    if use_head:
        head_dir = head_dir or (target_dir if has_eagle_head(target_dir) else None)
        if head_dir is not None:
            head = load_eagle_head(head_dir, target_cfg=target.lm.cfg, device=device, dtype=dtype)
    engine = Engine(target, draft, eos_token_ids=eos_ids(target.tokenizer, target.lm), shared_vocab=shared,
                    spec=spec, vocab_bridge=bridge, head=head, draft_adapter=adapter)
    return LoadedPair(engine, target, draft, head, adapter)


def eos_ids(tokenizer, model) -> list[int]:
    ids = set(model.cfg.eos_token_id)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)
