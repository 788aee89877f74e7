"""What one training step of the toy pair sees, and how it is scored: phide's own decoder run
causally over whole sequences, the visual features with autograd, the per-sample examples (built as
`prepare()` builds prompts), the answer loss, the auxiliary probes' losses, and teacher-forced
exact match. `phide.toy.train` runs the loops over these."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from phide.models.llama import LlamaModel
from phide.toy.supervision import SCENE_CLASSES, event_patch_labels, scene_labels, target_patch_labels

EOS_ID = 2  # </s>


# ---------------------------------------------------------------------------------------- forward
def causal_hidden(lm: LlamaModel, embeds: torch.Tensor) -> torch.Tensor:
    """[B,T,H] input embeddings -> final-norm hidden states [B,T,H] through phide's decoder, causal,
    no padding mask (right padding: real tokens never attend to the pad after them)."""
    B, T, _ = embeds.shape
    cfg = lm.cfg
    # One separate tensor per layer: writing layer i+1's rows into a view of one shared [L,...]
    # tensor would bump the version of the layer-i keys autograd saved.
    cache = SimpleNamespace(
        k=[torch.zeros(B, cfg.num_key_value_heads, T, cfg.head_dim, dtype=lm.dtype) for _ in range(cfg.num_hidden_layers)],
        v=[torch.zeros(B, cfg.num_key_value_heads, T, cfg.head_dim, dtype=lm.dtype) for _ in range(cfg.num_hidden_layers)])
    pos = torch.arange(T, device=lm.device).expand(B, T)
    mask = torch.ones(T, T, dtype=torch.bool, device=lm.device).tril().expand(B, T, T)
    return lm(inputs_embeds=embeds, positions=pos, cache=cache, slots=pos, attn_mask=mask, kv_len=T)


def target_features(target, pixels: torch.Tensor, per_frame: bool = False) -> torch.Tensor:
    """VideoLlavaTarget.encode_video with autograd: [F,3,S,S] -> [F * tokens_per_frame, hidden]
    (per_frame: [F, tokens_per_frame, hidden])."""
    hs = target.tower(pixel_values=pixels, output_hidden_states=True).hidden_states
    layers = target.feature_layers
    feats = hs[layers[0]] if len(layers) == 1 else torch.cat([hs[i] for i in layers], dim=-1)
    proj = target.projector(feats)
    return proj if per_frame else proj.reshape(-1, proj.shape[-1])


def draft_features(draft, pixels: torch.Tensor) -> torch.Tensor:
    """EventGPTDraft.encode_events with autograd: [T,3,S,S] -> [T + tokens_per_frame, hidden]."""
    from phide.models.eventgpt import spatio_temporal

    feats = draft.tower(pixel_values=pixels).last_hidden_state
    return spatio_temporal(draft.adaptor(draft.projector(feats)))


# ---------------------------------------------------------------------------------------- examples
def _answer_ids(prompt_ids: list[int], full_ids: list[int]) -> list[int]:
    if full_ids[:len(prompt_ids)] != prompt_ids:
        raise ValueError("the prompt's tokens are not a prefix of the prompt + answer tokens")
    return full_ids[len(prompt_ids):] + [EOS_ID]


def target_example(target, sample, pixel_cache: dict | None = None) -> dict:
    """(ids with ONE <video>, where it is, answer ids + </s>, pixel values) for one Sample.
    pixel_cache: a dict shared across samples, so a scene's questions share one pixel tensor."""
    prompt = target.prompt_text(sample.question)
    ids = target.prompt_ids(sample.question)
    full = list(target.tokenizer(prompt + " " + sample.answer)["input_ids"])
    if pixel_cache is None:
        pixels = target.pixel_values(sample.frames)
    else:
        pixels = pixel_cache.get(sample.scene)
        if pixels is None:
            pixels = pixel_cache[sample.scene] = target.pixel_values(sample.frames)
    grid = pixels.shape[-1] // target.tower.config.patch_size
    labels = {k: torch.from_numpy(v) for k, v in target_patch_labels(sample.scene, pixels.shape[0], grid).items()}
    return {"ids": ids, "at": ids.index(target.video_token_id), "answer": _answer_ids(ids, full),
            "pixels": pixels, "labels": labels, "scene": _scene_tensors(sample.scene)}


def draft_example(draft, sample) -> dict:
    from phide.models.eventgpt import EVENT_TOKEN_INDEX, as_event_frames

    prompt = draft.prompt_text(sample.question)
    ids = draft.tokenize_prompt(prompt)
    full = draft.tokenize_prompt(prompt + " " + sample.answer)
    labels = {k: torch.from_numpy(v) for k, v in
              event_patch_labels(sample.scene, draft.image_size // draft.patch_size).items()}
    return {"ids": ids, "at": ids.index(EVENT_TOKEN_INDEX), "answer": _answer_ids(ids, full),
            "pixels": draft.pixel_values(as_event_frames(sample.events, draft.n_frames)), "labels": labels,
            "scene": _scene_tensors(sample.scene)}


def _scene_tensors(scene) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in scene_labels(scene).items()}


def _sequence(lm: LlamaModel, ex: dict, feats: torch.Tensor, placeholder: int) -> tuple[torch.Tensor, list[int]]:
    """(With feats of 0 rows, the text alone: the curriculum's first stage.)"""
    """Spliced input embeddings [T,H] of prompt + answer (as prepare() builds the prompt) and the
    full id list (placeholders where the features are)."""
    ids, at = ex["ids"], ex["at"]
    n = feats.shape[0]
    seq = ids[:at] + [placeholder] * n + ids[at + 1:] + ex["answer"]
    emb = lm.embed_tokens(torch.tensor(seq, dtype=torch.int64, device=lm.device))
    emb = torch.cat([emb[:at], feats.to(emb.dtype), emb[at + n:]], dim=0)
    return emb, seq


def batch_loss(lm: LlamaModel, seqs: list[tuple[torch.Tensor, list[int], int]], return_hidden: bool = False):
    """Mean next-token CE over answer tokens. seqs: (embeds [T,H], ids [T], answer length).
    return_hidden: also the final hidden states [B, T, H]."""
    T = max(e.shape[0] for e, _, _ in seqs)
    H = seqs[0][0].shape[1]
    embeds = torch.stack([F.pad(e, (0, 0, 0, T - e.shape[0])) for e, _, _ in seqs])
    labels = torch.full((len(seqs), T), -100, dtype=torch.int64)
    for b, (e, ids, n_ans) in enumerate(seqs):
        L = e.shape[0]
        labels[b, L - n_ans:L] = torch.tensor(ids[L - n_ans:])
    hidden = causal_hidden(lm, embeds)
    logits = lm.lm_head(hidden[:, :-1].reshape(-1, H)).float()
    loss = F.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    return (loss, hidden) if return_hidden else loss


@torch.no_grad()
def teacher_forced_exact(lm: LlamaModel, seqs: list[tuple[torch.Tensor, list[int], int]], batch: int = 8) -> tuple[float, float]:
    """(fraction of sequences whose every answer token is the argmax given the reference prefix,
    i.e. greedy decoding would reproduce the reference exactly; answer-token accuracy)."""
    was_training = lm.training
    lm.eval()
    exact = right = total = 0
    for i in range(0, len(seqs), batch):
        chunk = seqs[i:i + batch]
        T = max(e.shape[0] for e, _, _ in chunk)
        hidden = causal_hidden(lm, torch.stack([F.pad(e, (0, 0, 0, T - e.shape[0])) for e, _, _ in chunk]))
        for b, (e, ids, n) in enumerate(chunk):
            L = e.shape[0]
            ok = lm.lm_head(hidden[b, L - n - 1:L - 1]).argmax(-1) == torch.tensor(ids[L - n:])
            exact += bool(ok.all())
            right += int(ok.sum())
            total += n
    lm.train(was_training)
    return exact / max(len(seqs), 1), right / max(total, 1)


def _aux_heads(hidden: int, names: dict[str, int]) -> torch.nn.ModuleDict:
    """Linear probes for the auxiliary losses (training only; never saved)."""
    return torch.nn.ModuleDict({k: torch.nn.Linear(hidden, n) for k, n in names.items()})


def _aux_ce(head: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(x).reshape(-1, head.out_features).float(), labels.reshape(-1))


def _scene_heads(hidden: int, facts) -> torch.nn.ModuleDict:
    """Linear probes for the scene-level facts (`phide.toy.supervision.scene_labels`): one
    output block per shape slot."""
    return torch.nn.ModuleDict({k: torch.nn.Linear(hidden, 3 * SCENE_CLASSES[k]) for k in facts})


def scene_loss(heads: torch.nn.ModuleDict, text_hidden: torch.Tensor, scene: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean CE of every fact in `heads`, predicted at each text position after the visual tokens
    (text_hidden [N, H]: the question and answer positions, which see all of them)."""
    loss = 0.0
    for k, head in heads.items():
        c = SCENE_CLASSES[k]
        logits = head(text_hidden).reshape(-1, c).float()      # [N * slots, c]
        loss = loss + F.cross_entropy(logits, scene[k].repeat(text_hidden.shape[0]))
    return loss / len(heads)
