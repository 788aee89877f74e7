"""Where stage 2's training tensors come from: the frozen target, per batch (online), or bf16
safetensors files written once and read back as they are needed (offline, `--features DIR`).
Either way nothing is kept per sample between batches, so memory does not grow with the data set.

A sample is a work item ({"sample", "question", "video", "events"} or "prompt_ids") with the
target's answer; its sequence is the target's prompt (as the engine prepares it: the visual
features spliced into the input embeddings) followed by the answer.

Offline layout (one file per sample, as SpecForge and vLLM speculators store theirs, so writing
is resumable file by file and a reader opens only what a batch needs):
    DIR/features.json                 what the files hold: the head kind's features, capture, widths
    DIR/{key // 1000:04d}/{key}.safetensors
        embeds        [T, H]  input embeddings
        features      [T, F]  the final features (EAGLE-2) or the captured layers (EAGLE-3)
        final         [A+1, H] the final features at positions P-1 .. T-1 (EAGLE-3; EAGLE-2 slices features)
        draft_hidden  [A, Hd] the draft's states that predict the answer (with --draft)
    metadata: {"prompt_len": P, "length": T}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from phide.distill.ttt import HeadBatch
from phide.errors import PhideError

FEATURES_JSON = "features.json"


def item_request(item: dict, max_new_tokens: int = 1):
    from phide.engine import Request

    return Request(prompt=item.get("question"), prompt_ids=item.get("prompt_ids"), video=item.get("video"),
                   events=item.get("events"), max_new_tokens=max_new_tokens)


@dataclass
class Entry:
    """One training sample: a stable integer key (its place in the data set), the item, the answer."""

    key: int
    item: dict
    answer: list[int]


@dataclass
class AdapterBatch:
    draft_hidden: torch.Tensor   # [N, Hd] draft states that predict answer tokens (all samples' rows)
    target_final: torch.Tensor   # [N, H] the target's final features at the same answer positions
    sample_of: torch.Tensor      # [N] the row's sample slot in the batch (per-sample means)


def pad_stack(xs: list[torch.Tensor], length: int | None = None) -> torch.Tensor:
    """[T_i, C] -> [B, max T, C], zero-padded on the right."""
    n = length or max(x.shape[0] for x in xs)
    out = xs[0].new_zeros((len(xs), n, xs[0].shape[-1]))
    for b, x in enumerate(xs):
        out[b, : x.shape[0]] = x
    return out


class OnlineSource:
    """The frozen target (and draft) computing each batch's tensors as it comes."""

    def __init__(self, engine, capture: tuple[int, ...] | None):
        self.engine, self.capture = engine, capture
        self.target = engine.target

    @property
    def device(self):
        return self.target.device

    @torch.inference_mode()
    def sequence(self, e: Entry) -> tuple[torch.Tensor, int]:
        """(input embeddings [T, H] of prompt + answer, prompt length P)."""
        prep = self.engine.target_side.prepare(item_request(e.item))
        lm = self.target
        dev = lm.device
        prompt = (prep.embeds[0].to(device=dev, dtype=lm.dtype) if prep.embeds is not None else
                  lm.embed_tokens(torch.tensor(prep.ids, dtype=torch.int64, device=dev)))
        ans = lm.embed_tokens(torch.tensor(e.answer, dtype=torch.int64, device=dev))
        return torch.cat([prompt, ans]), len(prep.ids)

    @torch.inference_mode()
    def target_forward(self, embeds: torch.Tensor):
        """embeds [B,T,H] (right-padded) -> (final [B,T,H], captured [B,T,F] or None). Causal:
        padding on the right never reaches a real position."""
        from phide.models.llama import CAUSAL

        lm = self.target
        B, T, _ = embeds.shape
        cache = lm.new_cache(B, T)
        pos = torch.arange(T, device=lm.device).expand(B, T)
        out = lm(inputs_embeds=embeds, positions=pos, cache=cache, slots=pos, attn_mask=CAUSAL, kv_len=T,
                 capture=self.capture)
        return out if self.capture else (out, None)

    def sample_tensors(self, entries: list[Entry]):
        """Per sample: (embeds [T,H], features [T,F], final answer span [A+1,H], P, T), from one
        target forward over the batch."""
        seqs = [self.sequence(e) for e in entries]
        embeds = pad_stack([s for s, _ in seqs])
        final, captured = self.target_forward(embeds)
        feats = captured if captured is not None else final
        out = []
        for b, (s, P) in enumerate(seqs):
            T = s.shape[0]
            out.append((s, feats[b, :T], final[b, P - 1: T], P, T))
        return out

    def head_batch(self, entries: list[Entry]) -> HeadBatch:
        return _head_batch(self.sample_tensors(entries), [e.key for e in entries])

    @torch.inference_mode()
    def draft_hidden(self, e: Entry) -> torch.Tensor:
        """The frozen draft over its own prompt + the target's answer: its final states at the A
        positions whose next token is an answer token [A, Hd]."""
        from phide.speculation.runners import cache_new_rows

        draft_side = self.engine.draft_side
        lm = draft_side.lm
        dev = lm.device
        prep = draft_side.prepare(item_request(e.item))
        prompt = (prep.embeds[0].to(device=dev, dtype=lm.dtype) if prep.embeds is not None else
                  lm.embed_tokens(torch.tensor(prep.ids, dtype=torch.int64, device=dev)))
        x = torch.cat([prompt, lm.embed_tokens(torch.tensor(e.answer, dtype=torch.int64, device=dev))]).unsqueeze(0)
        n, P = x.shape[1], prompt.shape[0]
        hidden = cache_new_rows(lm, lm.new_cache(1, n), 0, n, dev, inputs_embeds=x)
        return hidden[0, P - 1: n - 1]

    def adapter_batch(self, entries: list[Entry]) -> AdapterBatch:
        finals = [t[2][:-1] for t in self.sample_tensors(entries)]  # P-1 .. T-2: predict the answer
        hidden = [self.draft_hidden(e) for e in entries]
        return _adapter_batch(hidden, finals)


def _head_batch(tensors, keys: list[int]) -> HeadBatch:
    return HeadBatch(embeds=pad_stack([t[0] for t in tensors]), features=pad_stack([t[1] for t in tensors]),
                     final=pad_stack([t[2] for t in tensors]),
                     prompt_lens=torch.tensor([t[3] for t in tensors], dtype=torch.int64),
                     lengths=torch.tensor([t[4] for t in tensors], dtype=torch.int64), keys=keys)


def _adapter_batch(hidden: list[torch.Tensor], finals: list[torch.Tensor]) -> AdapterBatch:
    n = [min(h.shape[0], f.shape[0]) for h, f in zip(hidden, finals)]
    return AdapterBatch(torch.cat([h[:k] for h, k in zip(hidden, n)]), torch.cat([f[:k] for f, k in zip(finals, n)]),
                        torch.cat([torch.full((k,), b, dtype=torch.int64) for b, k in enumerate(n)]))


# ----------------------------------------------------------------------------------- offline
def sample_path(root: Path, key: int) -> Path:
    return root / f"{key // 1000:04d}" / f"{key}.safetensors"


def features_identity(engine, capture, with_draft: bool) -> dict:
    t = engine.target.cfg
    return {"capture": list(capture) if capture else None, "hidden": t.hidden_size, "vocab": t.vocab_size,
            "layers": t.num_hidden_layers, "draft_hidden": engine.draft.cfg.hidden_size if with_draft else None,
            "dtype": "bfloat16"}


def open_features_dir(root: Path, identity: dict, *, create: bool) -> None:
    """Check (or, with `create`, start) a features directory for these features."""
    meta = root / FEATURES_JSON
    if meta.is_file():
        try:
            have = json.loads(meta.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise PhideError(f"{meta} is not valid JSON ({exc})") from None
        diff = sorted(k for k in identity if have.get(k) != identity[k])
        if diff:
            raise PhideError(f"--features {root} holds other features ({diff[0]}: {have.get(diff[0])!r}, this run "
                             f"needs {identity[diff[0]]!r}); give another directory")
        return
    if not create:
        raise PhideError(f"--features {root} has no {FEATURES_JSON}")
    root.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(identity, indent=2))


def write_features(source: OnlineSource, entries: list[Entry], root: Path, *, with_draft: bool,
                   batch: int = 4, quiet: bool = False) -> int:
    """Write the files of the entries that have none yet (this rank's share), `batch` samples per
    target forward. Each file is written aside, synced and renamed: a kill leaves whole files.
    Returns how many were written."""
    import sys

    from safetensors.torch import save_file
    from tqdm import tqdm

    todo = [e for e in entries if not sample_path(root, e.key).is_file()]
    bar = tqdm(total=len(todo), unit="sample", desc="phide distill: offline features", disable=quiet or not todo,
               file=sys.stderr, dynamic_ncols=True)
    with bar:
        for i in range(0, len(todo), batch):
            group = todo[i: i + batch]
            for e, (emb, feats, final, P, T) in zip(group, source.sample_tensors(group)):
                tensors = {"embeds": emb, "features": feats}
                if source.capture:  # EAGLE-2 reads the answer span out of `features`
                    tensors["final"] = final
                if with_draft:
                    tensors["draft_hidden"] = source.draft_hidden(e)
                tensors = {k: v.to(torch.bfloat16).contiguous().cpu() for k, v in tensors.items()}
                path = sample_path(root, e.key)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                save_file(tensors, str(tmp), metadata={"prompt_len": str(P), "length": str(T)})
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                bar.update()
    return len(todo)


class OfflineSource:
    """Batches read from a features directory (only the batch's files, opened as needed), in the
    target's device and dtype (the target itself is kept for its LM head)."""

    def __init__(self, root: Path, capture, target):
        self.root, self.capture, self.target = Path(root), capture, target
        self.device, self.dtype = target.device, target.dtype

    def _read(self, key: int, names) -> tuple[dict, int, int]:
        from safetensors import safe_open

        path = sample_path(self.root, key)
        if not path.is_file():
            raise PhideError(f"--features {self.root}: sample {key} has no file ({path.name}); run with --resume "
                             "to write the missing ones")
        with safe_open(str(path), "pt", device="cpu") as f:
            meta = f.metadata()
            out = {n: f.get_tensor(n).to(device=self.device, dtype=self.dtype) for n in names}
        return out, int(meta["prompt_len"]), int(meta["length"])

    def sample_tensors(self, entries: list[Entry]):
        out = []
        for e in entries:
            names = ("embeds", "features", "final") if self.capture else ("embeds", "features")
            t, P, T = self._read(e.key, names)
            final = t["final"] if self.capture else t["features"][P - 1: T]
            out.append((t["embeds"], t["features"], final, P, T))
        return out

    def head_batch(self, entries: list[Entry]) -> HeadBatch:
        return _head_batch(self.sample_tensors(entries), [e.key for e in entries])

    def adapter_batch(self, entries: list[Entry]) -> AdapterBatch:
        hidden, finals = [], []
        for e in entries:
            names = ("draft_hidden", "final") if self.capture else ("draft_hidden", "features")
            t, P, T = self._read(e.key, names)
            hidden.append(t["draft_hidden"])
            finals.append((t["final"] if self.capture else t["features"][P - 1: T])[:-1])
        return _adapter_batch(hidden, finals)
