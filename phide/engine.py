"""The speculative engine: runs one request under a Plan exactly as given (its schedule:
phide.schedules, one file each; phide.planner decides plans).

A schedule runs the prefill phase (where the draft works relative to the target's prefill);
then every schedule runs the same round: grow a tree (or none), verify it in ONE target forward, accept
the longest valid path plus a bonus token, commit the KV. target-only is that round with an
empty tree (a plain decode step), so all schedules share one code path for the target and differ
only in where draft work happens. The draft can only ever change how many target forwards are
needed, never the tokens: a draft that fails is dropped and the target goes on alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from phide import ops, schedules
from phide.errors import PhideError
from phide.models.frontends import IdsFrontend, Prepared
from phide.models.llama import LlamaModel
from phide.models.vocab import TextBridge
from phide.runtime.signals import DeviceClock
from phide.runtime.timeline import Timeline
from phide.runtime.transfers import Transfers
from phide.runtime.window_lanes import LaneSplits, WindowLanes
from phide.schedules.base import RequestRun
from phide.speculation.cross_vocab import CrossVocabDraft
from phide.speculation.drafter import Drafter
from phide.speculation.drafters import Drafters
from phide.speculation.eagle_runner import EagleRunner
from phide.speculation.runners import DraftRunner, TargetRunner
from phide.speculation.static_step import StaticStep
from phide.speculation.static_verify import StaticVerify
from phide.speculation.stats import RequestStats
from phide.speculation.tree import MAX_TREE_NODES, Tree


# Rows of the draft's cache behind the CUDA-graph step (SpecConfig.draft_graph; one cache per
# engine, so the graph's addresses stay fixed): an EventGPT prompt (~641 tokens) with a long answer
# and the trees' scratch rows fit. A request that needs more runs dynamic draft steps.
DRAFT_GRAPH_ROWS = 2048
# Rows of the target's cache behind the static-shape verify (SpecConfig.target_graph; one cache
# per engine, so the graphs' addresses stay fixed): Video-LLaVA's ~2,073-token prompt, a long
# answer and the largest tree fit. A request that needs more runs dynamic verifies over its own cache.
TARGET_GRAPH_ROWS = 2560
# A verify commits the accepted path (at most depth + 1 nodes) in one tile of the KV-commit kernel
# (phide.triton_kernels.kv_commit.MAX_PATH = 64 nodes).
MAX_TREE_DEPTH = 63


# KV cache rows a request allocates, per model; the memory planner (phide.memory_plan) prices
# the same numbers from the configs alone.
def target_cache_rows(prompt_len: int, max_new: int, spec: "SpecConfig") -> int:
    """The prompt, the answer and the largest tree verified on top of them."""
    return prompt_len + max_new + max(spec.budget, spec.window_budget) + 1


def target_graph_rows(cfg) -> int:
    """Rows of the engine's static-verify cache (SpecConfig.target_graph) for a target config."""
    return min(cfg.max_position_embeddings, TARGET_GRAPH_ROWS) + MAX_TREE_NODES


def draft_cache_rows(prompt_len: int, max_new: int, spec: "SpecConfig", cross_vocab: bool) -> int:
    """The draft's prompt, its answer (across tokenizers, up to 4 draft ids per target token),
    the trees' expansion scratch and the largest tree."""
    scratch = max(spec.window_depth, spec.depth) * spec.topk
    return prompt_len + (4 if cross_vocab else 1) * max_new + scratch + max(spec.budget, spec.window_budget) + 2


def head_cache_rows(target_prompt_len: int, max_new: int, spec: "SpecConfig") -> int:
    """The EAGLE head runs over the target's sequence plus one round's expansions."""
    return target_prompt_len + max_new + spec.depth * spec.topk + max(spec.budget, spec.window_budget) + 2


@dataclass
class SpecConfig:
    """Tree shape. Round trees: `topk` children per expanded node, `depth` levels, `budget` nodes
    (root included). The draft's first tree (hide: grown inside the target's prefill until the
    target finishes; sequential: after it) is bounded by `window_depth` levels and `window_budget`
    nodes. Three switches of the design's GPU path (the first two off by default):
    `draft_graph`: the draft's tree steps with static shapes (phide.speculation.static_step),
    captured as a CUDA graph on a GPU (once per engine, when it is built) and run eagerly on a CPU;
    `overlap`: post-verify overlap (phide.speculation.overlap), the drafter grows the next tree
    while the target verifies (a side stream on a GPU; on a CPU a thread lane, which measured no
    gain on 2 cores);
    `target_graph`: the target's verifies and decode steps at static shapes bucketed by tree size
    (phide.speculation.static_verify), CUDA graphs captured when the engine is built; None (the
    default) = on a GPU, off on a CPU, where the static forward runs eagerly as the graphs' twin."""

    topk: int = 4
    depth: int = 6
    budget: int = 24
    window_depth: int = 32
    window_budget: int = 64
    draft_graph: bool = False
    overlap: bool = False
    target_graph: bool | None = None

    def __post_init__(self):
        for name in ("topk", "depth", "budget", "window_depth", "window_budget"):
            if getattr(self, name) < 1:
                raise PhideError(f"{name} must be >= 1")
        for name in ("depth", "window_depth"):
            if getattr(self, name) > MAX_TREE_DEPTH:
                raise PhideError(f"{name} must be <= {MAX_TREE_DEPTH} (an accepted path is one tile of the KV-commit "
                                 "kernel)")


@dataclass(frozen=True)
class Plan:
    """What one request runs, exactly: the schedule and the lane split while both lanes work.

    schedule: a registered schedule's name (phide.schedules: target-only, head-only, sequential,
    hide). After the first tree, rounds are drafted by the head when there is one, else by the
    draft model.
    draft_threads: CPU, intra-op threads the draft lane reserves (the target keeps the rest);
    draft_sms: GPU, SMs of the draft lane's green context; 0 = no split (the lanes share).
    predicted_s / reason: the planner's prediction and why it chose this (None / "" when forced
    without a calibration)."""

    schedule: str
    draft_threads: int = 0
    draft_sms: int = 0
    predicted_s: float | None = None
    reason: str = ""

    def __post_init__(self):
        schedules.get(self.schedule)  # an unknown name is the caller's error
        if self.draft_threads < 0 or self.draft_sms < 0:
            raise PhideError("a lane split must be >= 0 threads / SMs")

    def as_stats(self) -> dict:
        return {"schedule": self.schedule, "draft_threads": self.draft_threads, "draft_sms": self.draft_sms,
                "predicted_s": None if self.predicted_s is None else round(self.predicted_s, 6),
                "reason": self.reason}


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


@dataclass
class Result:
    token_ids: list[int]
    stats: dict = field(default_factory=dict)
    timeline: Timeline | None = None


def acceptance_by_depth(stats_list) -> dict[str, float]:
    """Per draft depth d, over the results' verifies (`stats["accepted_by_verify"]`): of the trees
    that reached depth d, the share whose accepted path did too."""
    reached, accepted = {}, {}
    for st in stats_list:
        for n_acc, depth in st.get("accepted_by_verify", []):
            for d in range(1, depth + 1):
                reached[d] = reached.get(d, 0) + 1
                accepted[d] = accepted.get(d, 0) + (n_acc >= d)
    return {str(d): round(accepted[d] / reached[d], 4) for d in sorted(reached)}


def _decoder_shape(cfg) -> tuple[int, int, int, int]:
    """(hidden, heads, kv heads, head dim): what the norm and RoPE kernels are compiled for."""
    return cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim


def _as_frontend(side, draft_side: bool):
    if side is None or hasattr(side, "prepare"):
        return side
    return IdsFrontend(side, draft_side)  # a bare model


class Engine:
    """target / draft: a Frontend (phide.models.frontends) or a bare LlamaModel (the request then
    carries token ids)."""

    def __init__(self, target, draft=None, *, eos_token_ids: list[int] | None = None,
                 shared_vocab: int | None = None, spec: SpecConfig | None = None,
                 vocab_bridge: TextBridge | None = None, head=None,
                 draft_adapter=None):
        self.target_side = _as_frontend(target, False)
        self.draft_side = _as_frontend(draft, True)
        self.target = self.target_side.lm
        self.draft = self.draft_side.lm if self.draft_side is not None else None
        # q/k/v and gate/up as one GEMM each (weights concatenated in place; names unchanged)
        for lm in (self.target, self.draft):
            if lm is not None:
                lm.fuse_projections()
        self.eos = set(eos_token_ids if eos_token_ids is not None else self.target.cfg.eos_token_id)
        limit = min(self.target.cfg.vocab_size, self.draft.cfg.vocab_size) if self.draft is not None else 0
        self.shared_vocab = min(limit, shared_vocab) if shared_vocab is not None else limit
        self.bridge = vocab_bridge  # set: the draft proposes through text, in the target's vocabulary
        if vocab_bridge is not None:
            self.shared_vocab = self.target.cfg.vocab_size
        self.spec = spec or SpecConfig()
        self.head = head  # EAGLE-2 or EAGLE-3 continuation head trained on this target (optional)
        self.draft_adapter = draft_adapter  # distilled output adapter of the draft (optional)
        # draft_sms -> (target, draft) CudaLanes, made once; a green split gets its own graph step
        self.lane_splits = LaneSplits(self.target.device, on_new=self._split_made, on_evict=self._split_evicted)
        # The ops' backend (PHIDE_OPS), chosen once here: no op reads the environment per call.
        self.ops_backend = ops.choose_backend()
        # Every Triton kernel variant the requests will launch, compiled now, not inside one
        # (a GPU; nothing to do on a CPU with the torch references).
        cfg = self.target.cfg
        self.kernels = ops.prepare_kernels(self.target.device, self.target.dtype, cfg.head_dim,
                                           cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size,
                                           topk=(self.spec.topk, 1),  # 1: a cross-vocabulary draft's chains
                                           draft_vocab=self.draft.cfg.vocab_size if self.draft is not None else None,
                                           shared_vocab=(self.draft.cfg.vocab_size if vocab_bridge is not None
                                                         else self.shared_vocab) or None,
                                           head=head is not None,
                                           decoders=tuple(_decoder_shape(m.cfg) for m in (self.target, self.draft, head)
                                                          if m is not None))
        # SpecConfig.draft_graph: the draft's static-shape tree step over a cache of this engine,
        # made (and on a GPU captured as a CUDA graph) here, outside any request's window.
        self._draft_step = None
        if self.spec.draft_graph and self.draft is not None:
            rows = min(self.draft.cfg.max_position_embeddings, DRAFT_GRAPH_ROWS)
            self._draft_step = StaticStep(self.draft, self.draft.new_cache(1, rows + 1), self.spec.topk,
                                          graph=self.draft.device.type == "cuda")
        # SpecConfig.target_graph: the target's static-shape verifies over a cache of this engine,
        # one CUDA graph per tree-size bucket (and feature capture) captured here on a GPU.
        self._target_step = None
        on_gpu = self.target.device.type == "cuda"
        if self.spec.target_graph or (self.spec.target_graph is None and on_gpu):
            rows = target_graph_rows(cfg)
            captures = (None, head.capture) if head is not None and getattr(head, "capture", None) else (None,)
            self._target_step = StaticVerify(self.target, rows, captures=captures, graph=on_gpu)

    def _split_made(self, draft_sms: int, lanes) -> None:
        # A graph's kernels keep the context they were captured in: the draft's graph step gets
        # one captured on this split's draft stream (before any request's window uses it); the
        # target's verify graphs are the primary context's, so its lanes' streams run them eagerly.
        if self._draft_step is not None and lanes[1].green_split is not None:
            self._draft_step.capture_on(draft_sms, lanes[1].stream)
        if self._target_step is not None and lanes[1].green_split is not None:
            for lane in lanes:
                self._target_step.run_eagerly_on(lane.stream)

    def _split_evicted(self, draft_sms: int, lanes) -> None:
        if self._draft_step is not None:
            self._draft_step.drop(draft_sms)
        if self._target_step is not None:
            for lane in lanes:
                self._target_step.forget_stream(lane.stream)

    def validate(self, req: Request, plan: Plan) -> None:
        if req.prompt is not None and not req.prompt.strip():
            raise PhideError("the prompt is empty")
        if req.max_new_tokens < 1:
            raise PhideError("max_new_tokens must be a positive integer")
        if req.temperature < 0 or req.temperature != req.temperature:
            raise PhideError("temperature must be >= 0")
        schedules.get(plan.schedule).validate(self, req)
        for side in (self.target_side, self.draft_side):  # every loaded side, whatever the plan
            if side is not None:
                side.check(req)

    # ------------------------------------------------------------------ one request
    def generate(self, req: Request, plan: Plan | str) -> Result:
        """Run `req` under `plan` (a Plan, or a schedule name: that schedule with no lane split),
        exactly: the engine never changes the schedule it is given. A draft that fails is
        dropped (`stats["faults"]`) and the target goes on alone."""
        plan = Plan(plan) if isinstance(plan, str) else plan
        self.validate(req, plan)
        schedule = schedules.get(plan.schedule)
        clock = DeviceClock(self.target.device)  # the request's origin; device time on a GPU
        tl = Timeline(clock)
        t_start = clock.origin_host
        if self.target.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.target.device)
        stats = RequestStats(mode=plan.schedule, plan=plan.as_stats())
        transfers = Transfers(self.target.device)  # every host<->device copy of the request, counted
        run = RequestRun(self, req, plan, schedule, tl, clock, transfers, stats)
        try:
            pre = schedule.prefill(run)
            target, prepared = pre.target, pre.prepared
            head = self._head_runner(run, target, prepared) if schedule.drafts_rounds and self.head else None
            drafters = Drafters(self.spec, stats, tl, lane_splits=self.lane_splits, draft_threads=plan.draft_threads,
                                draft_sms=plan.draft_sms, draft=pre.draft, head=head, first_tree=pre.first_tree)
            out: list[int] = []
            root = prepared.ids[-1]
            drafts_emitted = 0
            ahead = None
            try:
                while len(out) < req.max_new_tokens:
                    tree = drafters.next_tree(root)
                    ahead = drafters.grow_ahead(tree)  # post-verify overlap: the next tree, beside the verify
                    with tl.phase("verify", "target"):  # forward, acceptance walk and KV commit
                        n_acc, path, tokens = target.verify(tree, req.temperature, int(req.seed), len(out))
                    depth = tree.max_depth() if len(tree) > 1 else 0
                    if stats.verifies == 0:  # how good the first tree was (the planner learns from it)
                        stats.first_verify_accepted, stats.first_tree_depth = n_acc, depth
                        # the first tokens reached the host: time to first token
                        stats.first_token_s = round(time.perf_counter() - t_start, 6)
                    stats.accepted_by_verify.append((n_acc, depth))
                    stats.verifies += 1
                    new = tokens[: n_acc + 1]
                    done = False
                    for i, t in enumerate(new):
                        if t in self.eos or len(out) + i + 1 >= req.max_new_tokens:
                            new, done = new[: i + 1], True
                            break
                    out.extend(new)
                    drafts_emitted += min(len(new), n_acc)  # accepted drafts past the cut were never emitted
                    if done:
                        break
                    root = tokens[n_acc]  # the bonus token
                    drafters.advance(tree, path, root, ahead)
                    ahead = None
            finally:
                drafters.abandon(ahead)
        finally:
            # The request's caches were allocated on the lanes' streams: however it ended (a
            # raise included), work queued there must drain before their memory is reused.
            if schedule.uses_lanes or self.spec.overlap:
                WindowLanes.for_engine(self.lane_splits, plan.draft_threads, plan.draft_sms).finish_request()
        wall = time.perf_counter() - t_start  # the tokens were read on the host: their work is done
        tl.resolve()
        verifies = max(stats.verifies, 1)
        stats.target_forwards = target.forwards
        stats.draft_forwards = pre.draft.forwards if pre.draft is not None else 0
        stats.head_forwards = head.forwards if head is not None else 0
        stats.head_kind = self.head.kind if head is not None else None
        # tau: tokens emitted per verify forward (accepted drafts + the bonus, after the cut at EOS /
        # max_new_tokens)
        stats.accepted_per_verify = round(len(out) / verifies, 4)
        stats.accepted_drafts_per_verify = round(drafts_emitted / verifies, 4)
        stats.new_tokens = len(out)
        stats.wall_s = round(wall, 6)
        stats.tokens_per_s = round(len(out) / wall, 3) if wall > 0 else 0.0
        stats.h2d_copies, stats.d2h_reads = transfers.h2d, transfers.d2h
        stats.phases = tl.totals()
        if tl.clock is not None:
            stats.phases_host = tl.host_totals()
        stats.peak_memory_mb, stats.peak_memory_kind = self._peak_memory()
        return Result(out, stats.as_dict(), tl)

    def _peak_memory(self) -> tuple[float, str]:
        if self.target.device.type == "cuda":
            return round(torch.cuda.max_memory_allocated(self.target.device) / 2**20, 1), "gpu_max_allocated"
        import resource

        # ru_maxrss is in KiB on Linux: the process's peak resident set so far (not per request).
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "cpu_peak_rss"

    # ------------------------------------------------------------------ the schedules' prefill steps
    def _check_positions(self, lm: LlamaModel, prepared: Prepared, req: Request, side: str) -> None:
        """A prompt (plus the answer) must fit the model's positions: past them RoPE extrapolates
        and the model was never trained there."""
        limit, n = lm.cfg.max_position_embeddings, len(prepared.ids)
        if n > limit:
            raise PhideError(f"the {side} prompt is {n} tokens, longer than the {side}'s "
                             f"max_position_embeddings ({limit})")
        if side == "target" and n + req.max_new_tokens > limit:
            raise PhideError(f"the prompt ({n} tokens) plus max_new_tokens ({req.max_new_tokens}) exceed the "
                             f"target's max_position_embeddings ({limit}); ask for at most {limit - n} new tokens")

    def prepare_target(self, run: RequestRun) -> tuple[TargetRunner, Prepared]:
        """Target lane: input preparation, then the prefill of the prompt minus its last token."""
        req, tl = run.req, run.tl
        with tl.phase("target_prepare", "target"):
            prepared = self.target_side.prepare(req)
        self._check_positions(self.target, prepared, req, "target")
        # An EAGLE-3 head reads the target's low/middle/high layers: the target's forwards capture
        # them (in the same forward, on the device) when the rounds draft with the head.
        capture = self.head.capture if self.head is not None and run.schedule.drafts_rounds else None
        need = target_cache_rows(len(prepared.ids), req.max_new_tokens, self.spec)
        static = self._target_step
        if static is not None and need > static.rows:
            run.stats.target_graph = (f"off: the request needs {need} target cache rows, the graphs' cache holds "
                                      f"{static.rows}")
            static = None
        runner = TargetRunner(self.target, need, run.transfers, capture=capture, static=static)
        with tl.phase("target_prefill", "target"):
            embeds = prepared.embeds[:, :-1].to(self.target.device) if prepared.embeds is not None else None
            runner.prefill_features = runner.prefill(None if embeds is not None else prepared.ids[:-1], embeds)
        run.stats.input_info.update({f"target_{k}": v for k, v in prepared.info.items()})
        return runner, prepared

    def prepare_draft(self, run: RequestRun) -> Drafter:
        """Draft lane: input preparation and prefill; the draft's last prompt token is its root."""
        req, tl = run.req, run.tl
        with tl.phase("draft_prepare", "draft"):
            prepared = self.draft_side.prepare(req)
        self._check_positions(self.draft, prepared, req, "draft")
        cross = self.bridge is not None
        need = draft_cache_rows(len(prepared.ids), req.max_new_tokens, self.spec, cross)
        static = self._draft_step
        if static is not None and need > static.capacity:
            run.stats.draft_graph = (f"off: the request needs {need} draft cache rows, the graph's cache holds "
                                     f"{static.capacity}")
            static = None
        runner = DraftRunner(self.draft, need, self.draft.cfg.vocab_size if cross else self.shared_vocab,
                             adapter=self.draft_adapter, static=static, transfers=run.transfers)
        with tl.phase("draft_prefill", "draft"):
            embeds = prepared.embeds[:, :-1].to(self.draft.device) if prepared.embeds is not None else None
            runner.prefill(None if embeds is not None else prepared.ids[:-1], embeds, last_token=prepared.ids[-1])
        run.stats.input_info.update({f"draft_{k}": v for k, v in prepared.info.items()})
        if not cross:
            return runner
        return CrossVocabDraft(runner, self.bridge, prepared.ids, target_vocab=self.shared_vocab)

    def grow_first_tree(self, draft: Drafter, stop=None, on_step=None) -> Tree:
        """The draft's first tree: the window's shape (grown inside the target's prefill in hide,
        after it in sequential)."""
        spec = self.spec
        return draft.grow(budget=spec.window_budget, topk=spec.topk, max_depth=spec.window_depth,
                          max_expansions=spec.window_depth * spec.topk, stop=stop, on_step=on_step)

    def _head_runner(self, run: RequestRun, target: TargetRunner, prepared: Prepared) -> EagleRunner:
        """The continuation head's runner, primed with the prompt's (embedding, feature) pairs."""
        with torch.inference_mode():
            embeds = (prepared.embeds[0].to(self.target.device) if prepared.embeds is not None else
                      self.target.embed_tokens(run.transfers.upload(torch.tensor(prepared.ids, dtype=torch.int64))[0]))
        runner = EagleRunner(self.head, self.target, target,
                             head_cache_rows(len(prepared.ids), run.req.max_new_tokens, self.spec))
        hidden = target.prefill_features
        runner.add_prompt(embeds, hidden[0] if hidden is not None else None, prepared.ids[-1])
        return runner
