"""The EAGLE continuation head in its own worker process (a ProcessLane).

Post-verify overlap grows the next tree while the target verifies this one. On a CPU both are
bound by Python dispatch, so a head on a thread of the same process only takes turns with the
verify on the GIL. In a worker process the head's growth runs on its own core while the verify
runs here: the round costs about one verify instead of growth + verify.

`RemoteHeadRunner` has EagleRunner's interface (add_prompt / grow / commit, and for the overlap
speculate_async / settle); the worker's `HeadService` holds the real EagleRunner. Only token ids,
tree fields and numpy feature arrays cross the pipe; the weights are shared once at start-up.
Requests whose reply nobody needs (prompt, commit, settle) are posted: they do not wait, and a
worker error in one of them is raised at the next wait, so no fault goes unseen.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from phide.models.eagle import EagleHead
from phide.runtime.process_lane import ProcessLane
from phide.spec.eagle_runner import EagleRunner, accepted_pairs
from phide.spec.tree import Tree


class TargetVocab(nn.Module):
    """All of the target a head needs: its token embedding and its LM head."""

    def __init__(self, embed_tokens: nn.Embedding, lm_head: nn.Linear):
        super().__init__()
        self.embed_tokens, self.lm_head = embed_tokens, lm_head

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()


def _tree_reply(tree: Tree | None, runner: EagleRunner) -> tuple:
    return (None if tree is None else (tree.tokens, tree.parents, tree.scores)), runner.forwards


class HeadService:
    """Worker side: one EagleRunner per request (`begin`). Built from plain data (`head_data`)."""

    def __init__(self, cancel, cfg, dtype: str, head_state: dict, embed: np.ndarray, lm_head: np.ndarray):
        dt = getattr(torch, dtype)
        self.cancel = cancel
        self.head = EagleHead(cfg).to(dt).eval()
        self.head.load_state_dict({k: torch.from_numpy(v).to(dt) for k, v in head_state.items()})
        emb, out = nn.Embedding(*embed.shape), nn.Linear(lm_head.shape[1], lm_head.shape[0], bias=False)
        emb.weight.data, out.weight.data = torch.from_numpy(embed).to(dt), torch.from_numpy(lm_head).to(dt)
        self.vocab = TargetVocab(emb, out).eval()
        self.runner: EagleRunner | None = None

    def begin(self, max_len: int) -> None:
        self.runner = EagleRunner(self.head, self.vocab, None, max_len)

    def add_prompt(self, embeds: np.ndarray, feats: np.ndarray | None, last_token: int) -> None:
        self.runner.add_prompt(torch.from_numpy(embeds), None if feats is None else torch.from_numpy(feats),
                               last_token)

    def grow(self, grow_kwargs: dict) -> tuple:
        return _tree_reply(self.runner.grow(**grow_kwargs), self.runner)

    def speculate(self, path: list[int], tokens: list[int], grow_kwargs: dict) -> tuple:
        # The speculative tree stays here: `settle` hands over the part of it that hit.
        self.runner.speculate(path, tokens, self.cancel, **grow_kwargs)
        return _tree_reply(None, self.runner)

    def commit(self, tokens: list[int], feats: np.ndarray) -> None:
        self.runner.queue(tokens, torch.from_numpy(feats))

    def settle(self, tokens: list[int], feats: np.ndarray, budget: int) -> tuple:
        return _tree_reply(self.runner.settle_pairs(tokens, torch.from_numpy(feats), budget), self.runner)


def head_data(head: EagleHead, target_lm) -> tuple:
    """What a worker needs to rebuild `head` and the target's embedding / LM head (numpy, fp32)."""
    return (head.cfg, str(head.fc.weight.dtype).removeprefix("torch."),
            {k: _numpy(v) for k, v in head.state_dict().items()},
            _numpy(target_lm.embed_tokens.weight), _numpy(target_lm.lm_head.weight))


def start_head_lane(head: EagleHead, target_lm, threads: int = 1) -> ProcessLane:
    """A worker process holding a copy of `head` and of the target's embedding / LM head."""
    if head.device.type != "cpu":
        raise ValueError("a process lane runs the head on the CPU; on a GPU the lanes are streams")
    return ProcessLane("phide.spec.remote_head:HeadService", *head_data(head, target_lm), threads=threads,
                       name="head")


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


class _SpeculateSignal:
    """A pending speculate reply; waiting also takes the worker's forward count."""

    def __init__(self, signal, runner: "RemoteHeadRunner"):
        self.signal, self.runner = signal, runner

    def wait(self, timeout: float | None = None) -> None:
        self.runner._tree(self.signal.wait(timeout))

    @property
    def span(self):
        return self.signal.span


class RemoteHeadRunner:
    """EagleRunner's interface for one request, the head running in `lane`'s worker."""

    remote = True
    can_speculate = True  # through speculate_async / settle

    def __init__(self, lane: ProcessLane, target_runner, max_len: int):
        self.lane, self.target = lane, target_runner
        self.cancel = lane.cancel  # the worker's speculative growth polls it
        self.forwards = 0
        self.lane.post("begin", max_len)

    def add_prompt(self, input_embeds: torch.Tensor, prefill_hidden: torch.Tensor | None, last_token: int) -> None:
        feats = prefill_hidden if prefill_hidden is not None and prefill_hidden.shape[0] else None
        self.lane.post("add_prompt", _numpy(input_embeds), None if feats is None else _numpy(feats), int(last_token))

    def grow(self, **grow_kwargs) -> Tree:
        return self._tree(self.lane.call("grow", grow_kwargs))

    def speculate_async(self, path: list[int], tokens: list[int], grow_kwargs: dict) -> _SpeculateSignal:
        """EagleRunner.speculate in the worker; returns at once (the worker polls `cancel`)."""
        self.cancel.clear()
        return _SpeculateSignal(self.lane.submit("speculate", path, tokens, grow_kwargs), self)

    def commit(self, tree: Tree, accept_nodes: list[int], bonus: int) -> None:
        self.lane.post("commit", *self._outcome(tree, accept_nodes, bonus))

    def settle(self, tree: Tree, accept_nodes: list[int], bonus: int, budget: int) -> Tree | None:
        return self._tree(self.lane.call("settle", *self._outcome(tree, accept_nodes, bonus), budget))

    def _outcome(self, tree: Tree, accept_nodes: list[int], bonus: int) -> tuple[list[int], np.ndarray]:
        tokens, feats = accepted_pairs(self.target, tree, accept_nodes, bonus)
        return tokens, _numpy(feats)

    def _tree(self, reply: tuple) -> Tree | None:
        fields, self.forwards = reply
        return None if fields is None else Tree(*fields)
