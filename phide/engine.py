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
from typing import Any

import torch

from phide import ops
from phide.errors import DraftFault, PhideError
from phide.models.adapters import Prepared
from phide.models.eagle import EagleHead
from phide.models.llama import LlamaModel
from phide.runtime.cpu_lanes import CpuLane
from phide.runtime.timeline import Timeline
from phide.runtime.window_lanes import WindowLanes
from phide.spec.cross_vocab import ROOT_FROM_TARGET, CrossVocabDraft, TextBridge
from phide.spec.drafters import Drafters
from phide.spec.eagle_runner import EagleRunner
from phide.spec.remote_head import RemoteHeadRunner, start_head_lane
from phide.spec.runners import DraftRunner, TargetRunner
from phide.spec.tree import Tree


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
    # After the first tree: "head" drafts with the EAGLE continuation head when the engine has
    # one (a draft step costs ~one target layer), "draft" keeps using the draft model.
    continuation: str = "head"
    # hide mode: the draft's window ends with the target's "prefill", or already with its input
    # "prepare"-ation (the draft then stops at its next step and the prefill gets every core).
    window: str = "prefill"
    # CPU lane split while both lanes run (the window, overlapped rounds): intra-op threads the
    # draft lane reserves; the target lane keeps the rest (phide.runtime.cpu_lanes). 0 = no split.
    draft_threads: int = 0
    # GPU lane split in hide mode: SMs the draft lane's green context reserves during the window;
    # the target's stream gets the remainder (phide.runtime.window_lanes). 0 = no split.
    draft_sms: int = 0
    # Price round trees with the planner's costs (TreePrice: stop growing / drop nodes that will
    # not pay, judged by the drafter's own path probabilities). Off by default: on the toy pair
    # its head is underconfident on some answers and pricing measured a wash (README).
    price_trees: bool = False
    # Draft tree steps with static shapes (phide.spec.static_step), captured as a CUDA graph when
    # the draft is on a GPU (once per request, for now); on a CPU they run eagerly (the twin).
    draft_graph: bool = False
    # Post-verify overlap (phide.spec.overlap): the drafter (the head, or the draft model with
    # continuation="draft") grows the next tree from the optimistic outcome while the target verifies.
    overlap: bool = False
    # Where the head's overlapped growth runs on a CPU: "process" (a worker process with its own
    # GIL and `draft_threads` or 1 core: phide.spec.remote_head) or "thread" (shares the GIL with
    # the verify, so on a CPU it mostly takes turns with it). GPUs use streams either way.
    head_lane: str = "process"
    # Grow ahead only when the drafter's own probability that the target accepts the whole best
    # path (its leaf's cumulative score) is at least this: a speculation costs the verify its
    # lane's cores, and it only pays when it hits.
    overlap_min_prob: float = 0.5

    def __post_init__(self):
        for name in ("topk", "depth", "budget", "window_depth", "window_budget"):
            if getattr(self, name) < 1:
                raise PhideError(f"{name} must be >= 1")
        if self.continuation not in ("head", "draft"):
            raise PhideError(f"continuation must be 'head' or 'draft', not {self.continuation!r}")
        if self.window not in ("prefill", "prepare"):
            raise PhideError(f"window must be 'prefill' or 'prepare', not {self.window!r}")
        if self.draft_threads < 0:
            raise PhideError("draft_threads must be >= 0")
        if self.draft_sms < 0:
            raise PhideError("draft_sms must be >= 0")
        if self.head_lane not in ("process", "thread"):
            raise PhideError(f"head_lane must be 'process' or 'thread', not {self.head_lane!r}")
        if not self.overlap_min_prob >= 0:  # (also rejects NaN)
            raise PhideError("overlap_min_prob must be >= 0 (above 1: never grow ahead)")


@dataclass
class Request:
    """One generation. Text-only adapters read `prompt`; engines built on bare models read
    `prompt_ids` (and `draft_prompt_ids`, default the same ids); multimodal adapters also read
    `video` (file, frame folder, or frames) and `events` (file or event arrays)."""

    prompt_ids: list[int] | None = None
    draft_prompt_ids: list[int] | None = None
    prompt: str | None = None
    video: Any = None
    events: Any = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    mode: str = "hide"


@dataclass
class Result:
    token_ids: list[int]
    stats: dict = field(default_factory=dict)
    timeline: Timeline | None = None


class IdsAdapter:
    """Adapter for a bare model: the request carries token ids (tests, benchmarks)."""

    def __init__(self, lm: LlamaModel, draft_side: bool = False):
        self.lm, self.draft_side = lm, draft_side

    def prepare(self, req: Request) -> Prepared:
        ids = req.draft_prompt_ids if self.draft_side and req.draft_prompt_ids is not None else req.prompt_ids
        if not ids:
            raise PhideError("the prompt is empty")
        bad = [t for t in ids if not 0 <= t < self.lm.cfg.vocab_size]
        if bad:
            raise PhideError(f"prompt token id {bad[0]} is outside the {'draft' if self.draft_side else 'target'} "
                             "vocabulary")
        return Prepared(list(ids))


def _as_adapter(side, draft_side: bool):
    if side is None or hasattr(side, "prepare"):
        return side
    return IdsAdapter(side, draft_side)  # a bare model


class Engine:
    """target / draft: an Adapter (phide.models.adapters) or a bare LlamaModel (the request then
    carries token ids)."""

    def __init__(self, target, draft=None, *, eos_token_ids: list[int] | None = None,
                 shared_vocab: int | None = None, spec: SpecConfig | None = None,
                 vocab_bridge: TextBridge | None = None, head: EagleHead | None = None,
                 draft_adapter=None, planner=None):
        self.target_side = _as_adapter(target, False)
        self.draft_side = _as_adapter(draft, True)
        self.target = self.target_side.lm
        self.draft = self.draft_side.lm if self.draft_side is not None else None
        self.eos = set(eos_token_ids if eos_token_ids is not None else self.target.cfg.eos_token_id)
        limit = min(self.target.cfg.vocab_size, self.draft.cfg.vocab_size) if self.draft is not None else 0
        self.shared_vocab = min(limit, shared_vocab) if shared_vocab is not None else limit
        self.bridge = vocab_bridge  # set: the draft proposes through text, in the target's vocabulary
        if vocab_bridge is not None:
            self.shared_vocab = self.target.cfg.vocab_size
        self.spec = spec or SpecConfig()
        self.head = head  # EAGLE continuation head trained on this target (optional)
        self.draft_adapter = draft_adapter  # distilled output adapter of the draft (optional)
        self.planner = planner  # phide.planner.Planner: decides what `hide` really runs (optional)
        # phide.planner.Costs, set by the planner; with SpecConfig.price_trees round trees are
        # priced (TreePrice), so an unsure drafter's tree shrinks, down to a plain decode step.
        self.costs = None
        self._green_lanes: dict = {}  # draft_sms -> (target, draft) CudaLanes, made once
        self._process_lanes: dict = {}  # "head" -> ProcessLane, made at the first request needing it

    def close(self) -> None:
        """Stop this engine's worker processes (a process lane also stops at interpreter exit)."""
        for lane in self._process_lanes.values():
            lane.close()
        self._process_lanes.clear()

    def validate(self, req: Request) -> None:
        if req.mode not in MODES:
            raise PhideError(f"unknown mode {req.mode!r} (choose from {', '.join(MODES)})")
        if req.prompt is not None and not req.prompt.strip():
            raise PhideError("the prompt is empty")
        if req.max_new_tokens < 1:
            raise PhideError("--max-new-tokens must be a positive integer")
        if req.temperature < 0 or req.temperature != req.temperature:
            raise PhideError("--temperature must be >= 0")

    # ------------------------------------------------------------------ one request
    def generate(self, req: Request) -> Result:
        self.validate(req)
        if self.planner is not None and req.mode == "hide":
            from phide.planner import run_planned

            return run_planned(self, req)
        tl = Timeline()
        t_start = time.perf_counter()
        if self.target.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.target.device)
        drafting = req.mode != "target-only" and self.draft_side is not None
        stats = {"mode": req.mode, "faults": 0, "draft_tokens_in_window": 0}
        target, prepared, first_tree, draft = self._prefill(req, drafting, tl, stats)
        head = None
        if req.mode != "target-only":
            try:
                head = self._head_runner(req, target, prepared)
            except DraftFault as exc:  # the head's worker process could not start: no head
                self._fault(stats, exc)
        drafters = Drafters(self, stats, tl, draft=draft, head=head, first_tree=first_tree)
        out: list[int] = []
        root = prepared.ids[-1]
        verifies = accepted_drafts = 0
        try:
            while len(out) < req.max_new_tokens:
                tree = drafters.next_tree(root)
                ahead = drafters.grow_ahead(tree)  # post-verify overlap: the next tree, beside the verify
                with tl.phase("verify", "target"):
                    logits = target.verify(tree)
                    nodes, tokens, n_acc = self._accept(tree, logits, req.temperature, int(req.seed), len(out))
                with tl.phase("commit", "target"):
                    target.commit(nodes, n_acc)
                if verifies == 0:  # how good the first tree was (the planner learns from it)
                    stats["first_verify_accepted"] = n_acc
                    stats["first_tree_depth"] = tree.max_depth() if len(tree) > 1 else 0
                verifies += 1
                accepted_drafts += n_acc
                new = tokens[: n_acc + 1]
                done = False
                for i, t in enumerate(new):
                    if t in self.eos or len(out) + i + 1 >= req.max_new_tokens:
                        new, done = new[: i + 1], True
                        break
                out.extend(new)
                if done:
                    drafters.abandon(ahead)
                    break
                root = tokens[n_acc]  # the bonus token
                drafters.advance(tree, nodes.tolist()[: n_acc + 1], root, ahead)
        finally:
            drafters.finish()
        if req.mode == "hide":
            WindowLanes.finish_request(self.target.device, self.spec.draft_sms)
        wall = time.perf_counter() - t_start
        stats.update(
            target_forwards=target.forwards,
            draft_forwards=draft.forwards if draft is not None else 0,
            head_forwards=drafters.head.forwards if drafters.head is not None else 0,
            verifies=verifies,
            accepted_per_verify=round((accepted_drafts + verifies) / max(verifies, 1), 4),
            accepted_drafts_per_verify=round(accepted_drafts / max(verifies, 1), 4),
            new_tokens=len(out),
            wall_s=round(wall, 6),
            tokens_per_s=round(len(out) / wall, 3) if wall > 0 else 0.0,
            phases=tl.totals(),
            **self._memory_stats(),
        )
        return Result(out, stats, tl)

    def _memory_stats(self) -> dict:
        if self.target.device.type == "cuda":
            return {"peak_memory_mb": round(torch.cuda.max_memory_allocated(self.target.device) / 2**20, 1),
                    "peak_memory_kind": "gpu_max_allocated"}
        import resource

        # ru_maxrss is in KiB on Linux: the process's peak resident set so far (not per request).
        return {"peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "peak_memory_kind": "cpu_peak_rss"}

    # ------------------------------------------------------------------ pieces
    def _prepare_target(self, req, tl, stats) -> tuple[TargetRunner, Prepared]:
        """Target lane: input preparation, then the prefill of the prompt minus its last token."""
        with tl.phase("target_prepare", "target"):
            prepared = self.target_side.prepare(req)
        return self._prefill_target(req, prepared, tl, stats), prepared

    def _prefill_target(self, req, prepared: Prepared, tl, stats) -> TargetRunner:
        runner = TargetRunner(self.target, len(prepared.ids) + req.max_new_tokens
                              + max(self.spec.budget, self.spec.window_budget) + 1)
        with tl.phase("target_prefill", "target"):
            if prepared.embeds is not None:
                runner.prefill_hidden = runner.prefill(embeds=prepared.embeds[:, :-1].to(self.target.device))
            else:
                runner.prefill_hidden = runner.prefill(
                    torch.tensor([prepared.ids[:-1]], dtype=torch.int64, device=self.target.device))
        stats.update({f"target_{k}": v for k, v in prepared.info.items()})
        return runner

    def _prepare_draft(self, req, tl, stats) -> DraftRunner:
        """Draft lane: input preparation and prefill; the draft's last prompt token is its root."""
        spec = self.spec
        with tl.phase("draft_prepare", "draft"):
            prepared = self.draft_side.prepare(req)
        scratch = max(spec.window_depth, spec.depth) * spec.topk
        cross = self.bridge is not None
        # Across tokenizers the draft may need several ids per target token: room for that.
        room = (4 if cross else 1) * req.max_new_tokens + scratch + max(spec.budget, spec.window_budget) + 2
        runner = DraftRunner(self.draft, len(prepared.ids) + room,
                             self.draft.cfg.vocab_size if cross else self.shared_vocab, adapter=self.draft_adapter,
                             static_rows=spec.topk if spec.draft_graph else 0,
                             graph=spec.draft_graph and self.draft.device.type == "cuda")
        with tl.phase("draft_prefill", "draft"):
            device = self.draft.device
            if prepared.embeds is not None:
                runner.prefill(embeds=prepared.embeds[:, :-1].to(device), last_token=prepared.ids[-1])
            else:
                runner.prefill(torch.tensor([prepared.ids[:-1]], dtype=torch.int64, device=device),
                               last_token=prepared.ids[-1])
        stats.update({f"draft_{k}": v for k, v in prepared.info.items()})
        return CrossVocabDraft(runner, self.bridge, prepared.ids) if cross else runner

    def _head_runner(self, req, target: TargetRunner, prepared: Prepared) -> EagleRunner | None:
        """The continuation head's runner, primed with the prompt's (embedding, feature) pairs."""
        if self.head is None or self.spec.continuation != "head":
            return None
        with torch.inference_mode():
            embeds = (prepared.embeds[0].to(self.target.device) if prepared.embeds is not None else
                      self.target.embed_tokens(torch.tensor(prepared.ids, device=self.target.device)))
        spec = self.spec
        max_len = len(prepared.ids) + req.max_new_tokens + spec.depth * spec.topk + max(spec.budget, spec.window_budget) + 2
        if spec.overlap and spec.head_lane == "process" and self.head.device.type == "cpu":
            runner = RemoteHeadRunner(self._head_lane(), target, max_len)
        else:
            runner = EagleRunner(self.head, self.target, target, max_len)
        hidden = target.prefill_hidden
        runner.add_prompt(embeds, hidden[0] if hidden is not None else None, prepared.ids[-1])
        return runner

    def _head_lane(self):
        """The head's worker process, started at the first request that needs it (~1 s)."""
        lane = self._process_lanes.get("head")
        if lane is None or not lane.alive():
            lane = self._process_lanes["head"] = start_head_lane(self.head, self.target, self.spec.draft_threads or 1)
        return lane

    def _prefill(self, req, drafting, tl, stats):
        """Input preparation and prefills for the mode.

        Returns (target runner, target Prepared, first tree or None, draft runner or None when
        drafting is off or the draft failed).
        """
        if not drafting:
            target, prepared = self._prepare_target(req, tl, stats)
            return target, prepared, None, None
        if req.mode == "sequential":
            target, prepared = self._prepare_target(req, tl, stats)
            try:
                draft = self._prepare_draft(req, tl, stats)
                if self.head is None or self.spec.continuation != "head":
                    return target, prepared, None, draft
                # With a continuation head the draft only grows the first tree: the same work
                # as in hide mode, but after the target's prefill instead of inside it.
                spec = self.spec
                with tl.phase("draft_grow", "draft"):
                    tree = draft.grow(budget=spec.window_budget, topk=spec.topk, max_depth=spec.window_depth,
                                      max_expansions=spec.window_depth * spec.topk)
                self._check_tree(tree, prepared.ids[-1])
                return target, prepared, tree, draft
            except PhideError:
                raise  # bad input for the draft side is the user's error, not a draft fault
            except Exception as exc:
                self._fault(stats, exc)
                return target, prepared, None, None

        # hide: the draft lane prepares, prefills and grows the first tree while the target
        # lane prepares its input (and, with window="prefill", prefills).
        stop = threading.Event()
        lane: dict = {}
        progress: list = []
        spec = self.spec

        lanes = WindowLanes.for_engine(self.target.device, spec.draft_threads, spec.draft_sms, self._green_lanes)
        stats["window_lanes"] = lanes.describe()

        def draft_lane():
            try:
                with lanes.draft():
                    lane["runner"] = runner = self._prepare_draft(req, tl, stats)
                    with tl.phase("draft_grow", "draft"):
                        lane["tree"] = runner.grow(budget=spec.window_budget, topk=spec.topk,
                                                   max_depth=spec.window_depth,
                                                   max_expansions=spec.window_depth * spec.topk, stop=stop,
                                                   log=progress)
            except BaseException as exc:  # reported on the main thread
                lane["error"] = exc

        window_end = None

        def end_window():
            nonlocal window_end
            window_end = time.perf_counter()
            stop.set()

        done = CpuLane("draft", lanes.draft_threads).submit(draft_lane)
        try:
            with lanes.target():
                with tl.phase("target_prepare", "target"):
                    prepared = self.target_side.prepare(req)
            if spec.window == "prepare":
                end_window()  # the prefill gets every core (SM); the draft stops at its next step
                target = self._prefill_target(req, prepared, tl, stats)
            else:
                with lanes.target():
                    target = self._prefill_target(req, prepared, tl, stats)
        finally:
            if window_end is None:
                end_window()
            done.wait()  # draft_lane keeps its own errors in lane["error"]
            lanes.join()
        if isinstance(lane.get("error"), PhideError):
            raise lane["error"]
        if "error" in lane:
            self._fault(stats, lane["error"])
            return target, prepared, None, None
        tree = lane["tree"]
        try:
            self._check_tree(tree, prepared.ids[-1])
        except DraftFault as exc:
            self._fault(stats, exc)
            return target, prepared, None, None
        # Draft tokens that existed when the window closed (kept in the tree).
        made = max((n for t, n in progress if t <= window_end), default=0)
        stats["draft_tokens_in_window"] = min(made, len(tree) - 1)
        # progress holds one entry for the root, then one per tree step
        stats["draft_steps_in_window"] = max(0, sum(1 for t, _ in progress if t <= window_end) - 1)
        return target, prepared, tree, lane["runner"]

    def _check_tree(self, tree: Tree, root: int, vocab: int | None = None) -> None:
        """A draft's tree must hang off the committed root and propose only ids the verifier may
        take (`vocab`: the shared vocabulary for the draft, the target's for the head)."""
        vocab = self.shared_vocab if vocab is None else vocab
        if tree.tokens[0] == ROOT_FROM_TARGET and self.bridge is not None:
            tree.tokens[0] = root
        if tree.tokens[0] != root:
            raise DraftFault("draft tree root is not the last committed token")
        if any(not 0 <= t < vocab for t in tree.tokens[1:]):
            raise DraftFault("draft proposed a token outside the shared vocabulary")

    @staticmethod
    def _fault(stats: dict, exc: BaseException) -> bool:
        stats["faults"] += 1
        stats.setdefault("fault_messages", []).append(f"{type(exc).__name__}: {exc}")
        return False

    @staticmethod
    def _accept(tree: Tree, logits: torch.Tensor, temperature: float, seed: int, produced: int):
        """Run the acceptance walk; returns (accept_nodes [N], out_tokens list, n_accepted).
        Each node's choice is the target's argmax (greedy) or its Gumbel-max sample with noise
        keyed by (seed, the output position the node predicts; `produced` tokens are out
        already), so sampled tokens are exactly target-only sampling's with the same seed,
        whatever the draft proposed. A child is accepted iff it equals its parent's choice."""
        tokens = torch.tensor([tree.tokens], dtype=torch.int64)
        parents = torch.tensor([tree.parents], dtype=torch.int64)
        positions = torch.tensor([produced + d for d in tree.depths()], dtype=torch.int64, device=logits.device)
        choice = ops.gumbel_choices(logits, temperature, seed, positions).cpu().view(1, -1)
        nodes, out, n = ops.tree_accept_greedy(tokens, parents, choice)
        n_acc = int(n[0])
        return nodes[0], out[0, : n_acc + 1].tolist(), n_acc
