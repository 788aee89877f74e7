"""The speculative engine: target-only, sequential, and hide (draft runs inside the target prefill).

Every mode runs the same round: grow a tree (or none), verify it in ONE target forward, accept
the longest valid path plus a bonus token, commit the KV. target-only is that round with an
empty tree (a plain decode step), so all modes share one code path for the target and differ
only in where draft work happens. The draft can only ever change how many target forwards are
needed, never the tokens: a draft that fails is dropped and the target goes on alone.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch

from phide import ops
from phide.errors import DraftFault, PhideError
from phide.models.llama import LlamaModel
from phide.runtime.timeline import Timeline
from phide.spec.runners import DraftRunner, TargetRunner
from phide.spec.tree import Tree, chain
from phide.spec.verify import target_probs

MODES = ("hide", "sequential", "target-only")


@dataclass
class SpecConfig:
    """Tree shape. Round trees: `topk` children per expanded node, `depth` levels, `budget` nodes
    (root included). The first tree in hide mode grows inside the target prefill until the target
    finishes, bounded by `window_depth` levels and `window_budget` nodes."""

    topk: int = 4
    depth: int = 6
    budget: int = 24
    window_depth: int = 32
    window_budget: int = 64

    def __post_init__(self):
        for name in ("topk", "depth", "budget", "window_depth", "window_budget"):
            if getattr(self, name) < 1:
                raise PhideError(f"{name} must be >= 1")


@dataclass
class Request:
    prompt_ids: list[int]
    draft_prompt_ids: list[int] | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    mode: str = "hide"


@dataclass
class Result:
    token_ids: list[int]
    stats: dict = field(default_factory=dict)
    timeline: Timeline | None = None


class Engine:
    def __init__(self, target: LlamaModel, draft: LlamaModel | None = None, *,
                 eos_token_ids: list[int] | None = None, shared_vocab: int | None = None,
                 spec: SpecConfig | None = None):
        self.target = target
        self.draft = draft
        self.eos = set(eos_token_ids if eos_token_ids is not None else target.cfg.eos_token_id)
        limit = min(target.cfg.vocab_size, draft.cfg.vocab_size) if draft is not None else 0
        self.shared_vocab = min(limit, shared_vocab) if shared_vocab is not None else limit
        self.spec = spec or SpecConfig()

    def validate(self, req: Request) -> None:
        if req.mode not in MODES:
            raise PhideError(f"unknown mode {req.mode!r} (choose from {', '.join(MODES)})")
        if not req.prompt_ids:
            raise PhideError("the prompt is empty")
        if req.max_new_tokens < 1:
            raise PhideError("--max-new-tokens must be a positive integer")
        if req.temperature < 0 or req.temperature != req.temperature:
            raise PhideError("--temperature must be >= 0")
        bad = [t for t in req.prompt_ids if not 0 <= t < self.target.cfg.vocab_size]
        if bad:
            raise PhideError(f"prompt token id {bad[0]} is outside the target vocabulary")

    # ------------------------------------------------------------------ one request
    def generate(self, req: Request) -> Result:
        self.validate(req)
        tl = Timeline()
        t_start = time.perf_counter()
        spec = self.spec
        drafting = req.mode != "target-only" and self.draft is not None
        draft_ids = req.draft_prompt_ids if req.draft_prompt_ids is not None else req.prompt_ids
        if drafting and (not draft_ids or any(not 0 <= t < self.draft.cfg.vocab_size for t in draft_ids)):
            raise PhideError("the draft prompt is empty or has ids outside the draft vocabulary")
        max_tree = max(spec.budget, spec.window_budget)
        target = TargetRunner(self.target, len(req.prompt_ids) + req.max_new_tokens + max_tree + 1)
        draft = None
        if drafting:
            scratch = max(spec.window_depth, spec.depth) * spec.topk
            draft = DraftRunner(self.draft, len(draft_ids) + req.max_new_tokens + scratch + max_tree + 2,
                                self.shared_vocab)
        stats = {"mode": req.mode, "faults": 0, "draft_tokens_in_window": 0}
        first_tree, drafting = self._prefill(req, target, draft, drafting, draft_ids, tl, stats)

        gen = torch.Generator().manual_seed(int(req.seed))
        out: list[int] = []
        root = req.prompt_ids[-1]
        verifies = accepted_drafts = 0
        while len(out) < req.max_new_tokens:
            tree = first_tree
            first_tree = None
            if tree is None:
                tree = chain(root, [])
                if drafting:
                    try:
                        with tl.phase("draft_grow", "draft"):
                            tree = draft.grow(budget=spec.budget, topk=spec.topk, max_depth=spec.depth,
                                              max_expansions=spec.topk * spec.depth)
                        self._check_tree(tree, root)
                    except Exception as exc:  # any draft failure: drop the draft, keep going
                        drafting, tree = self._fault(stats, exc), chain(root, [])
            with tl.phase("verify", "target"):
                logits = target.verify(tree)
                nodes, tokens, n_acc = self._accept(tree, logits, req.temperature, gen)
            with tl.phase("commit", "target"):
                target.commit(nodes, n_acc)
            verifies += 1
            accepted_drafts += n_acc
            new = tokens[: n_acc + 1]
            bonus = new[-1]
            done = False
            for i, t in enumerate(new):
                if t in self.eos or len(out) + i + 1 >= req.max_new_tokens:
                    new, done = new[: i + 1], True
                    break
            out.extend(new)
            if done:
                break
            root = bonus
            if drafting:
                if bonus >= self.shared_vocab:  # the draft cannot follow: quietly go target-only
                    drafting = False
                    stats["draft_stopped"] = "bonus token outside the shared vocabulary"
                else:
                    draft.commit(tree, nodes.tolist()[: n_acc + 1], bonus)

        wall = time.perf_counter() - t_start
        stats.update(
            target_forwards=target.forwards,
            draft_forwards=draft.forwards if draft is not None else 0,
            verifies=verifies,
            accepted_per_verify=round((accepted_drafts + verifies) / max(verifies, 1), 4),
            accepted_drafts_per_verify=round(accepted_drafts / max(verifies, 1), 4),
            new_tokens=len(out),
            wall_s=round(wall, 6),
            tokens_per_s=round(len(out) / wall, 3) if wall > 0 else 0.0,
            phases=tl.totals(),
        )
        return Result(out, stats, tl)

    # ------------------------------------------------------------------ pieces
    def _prefill(self, req, target, draft, drafting, draft_ids, tl, stats):
        """Run the prefills for the mode; returns (first tree or None, drafting still on)."""
        t_ids = torch.tensor([req.prompt_ids[:-1]], dtype=torch.int64, device=self.target.device)
        if not drafting:
            with tl.phase("target_prefill", "target"):
                target.prefill(t_ids)
            return None, False
        d_ids = torch.tensor([draft_ids[:-1]], dtype=torch.int64, device=self.draft.device)
        if req.mode == "sequential":
            with tl.phase("target_prefill", "target"):
                target.prefill(t_ids)
            try:
                with tl.phase("draft_prefill", "draft"):
                    draft.prefill(d_ids, last_token=req.prompt_ids[-1])
                return None, True
            except Exception as exc:
                return None, self._fault(stats, exc)

        # hide: the draft lane prefills and grows the first tree while the target prefills.
        stop = threading.Event()
        lane: dict = {}
        progress: list = []
        spec = self.spec

        def draft_lane():
            try:
                with tl.phase("draft_prefill", "draft"):
                    draft.prefill(d_ids, last_token=req.prompt_ids[-1])
                with tl.phase("draft_grow", "draft"):
                    lane["tree"] = draft.grow(budget=spec.window_budget, topk=spec.topk,
                                              max_depth=spec.window_depth,
                                              max_expansions=spec.window_depth * spec.topk, stop=stop,
                                              log=progress)
            except BaseException as exc:  # reported on the main thread
                lane["error"] = exc

        worker = threading.Thread(target=draft_lane, name="phide-draft-lane", daemon=True)
        worker.start()
        with tl.phase("target_prefill", "target"):
            target.prefill(t_ids)
        window_end = time.perf_counter()
        stop.set()
        worker.join()
        if "error" in lane:
            return None, self._fault(stats, lane["error"])
        tree = lane["tree"]
        try:
            self._check_tree(tree, req.prompt_ids[-1])
        except DraftFault as exc:
            return None, self._fault(stats, exc)
        # Draft tokens that existed when the target finished its prefill (kept in the tree).
        made = max((n for t, n in progress if t <= window_end), default=0)
        stats["draft_tokens_in_window"] = min(made, len(tree) - 1)
        return tree, True

    def _check_tree(self, tree: Tree, root: int) -> None:
        if tree.tokens[0] != root:
            raise DraftFault("draft tree root is not the last committed token")
        if any(not 0 <= t < self.shared_vocab for t in tree.tokens[1:]):
            raise DraftFault("draft proposed a token outside the shared vocabulary")

    @staticmethod
    def _fault(stats: dict, exc: BaseException) -> bool:
        stats["faults"] += 1
        stats.setdefault("fault_messages", []).append(f"{type(exc).__name__}: {exc}")
        return False

    @staticmethod
    def _accept(tree: Tree, logits: torch.Tensor, temperature: float, gen: torch.Generator):
        """Run the acceptance walk; returns (accept_nodes [N], out_tokens list, n_accepted)."""
        tokens = torch.tensor([tree.tokens], dtype=torch.int64)
        parents = torch.tensor([tree.parents], dtype=torch.int64)
        if temperature == 0:
            choice = torch.argmax(logits, dim=-1).cpu().view(1, -1)
            nodes, out, n = ops.tree_accept_greedy(tokens, parents, choice)
        else:
            probs = target_probs(logits, temperature).cpu().unsqueeze(0)
            coins = torch.rand(1, len(tree), generator=gen)
            final = torch.rand(1, generator=gen)
            nodes, out, n = ops.tree_accept_stochastic(tokens, parents, probs, coins, final)
        n_acc = int(n[0])
        return nodes[0], out[0, : n_acc + 1].tolist(), n_acc
