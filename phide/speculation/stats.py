"""One request's stats, typed: every key of `Result.stats` is a field here, documented once.

The engine, the schedules and `Drafters` write the fields; `as_dict()` is the JSON the CLI prints
(the contract's keys: mode, target_forwards, draft_forwards, accepted_per_verify,
draft_tokens_in_window, wall_s, phases). Optional fields (None, or an empty list) are left out of
the dict, so a key is there only when it says something. Keys added above the engine:
`memory_plan` / `target_exact` (the session's placement) and `prediction` (the planner's view
after the request), and `mode` is set to the mode the user asked for ("auto" included).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

_OPTIONAL = {"optional": True}


@dataclass
class RequestStats:
    mode: str                                  # the schedule that ran (the session writes the mode asked for)
    plan: dict                                 # Plan.as_stats(): schedule, lane split, prediction, reason
    faults: int = 0                            # drafter failures dropped (the target went on)
    fault_messages: list = field(default_factory=list, metadata=_OPTIONAL)  # "Type: message" per fault
    draft_tokens_in_window: int = 0            # hide: draft tokens done (device time) when the target's prefill was
    draft_steps_in_window: int | None = field(default=None, metadata=_OPTIONAL)  # hide: tree steps of those
    window_lanes: str | None = field(default=None, metadata=_OPTIONAL)  # hide: the lanes the window ran on
    target_graph: str | None = field(default=None, metadata=_OPTIONAL)  # why the static verify was off
    draft_graph: str | None = field(default=None, metadata=_OPTIONAL)   # why the draft's graph step was off
    draft_stopped: str | None = field(default=None, metadata=_OPTIONAL)  # why the draft stopped drafting
    overlap_rounds: int = 0                    # rounds whose next tree grew beside the verify
    overlap_hits: int = 0                      # ... and were kept
    first_verify_accepted: int | None = field(default=None, metadata=_OPTIONAL)  # drafts the first verify took
    first_tree_depth: int | None = field(default=None, metadata=_OPTIONAL)       # levels of the first tree
    first_token_s: float | None = field(default=None, metadata=_OPTIONAL)        # time to the first tokens
    input_info: dict = field(default_factory=dict)  # "target_<k>" / "draft_<k>": what the front ends prepared
    target_forwards: int = 0
    draft_forwards: int = 0
    head_forwards: int = 0
    head_kind: str | None = None               # "eagle2" / "eagle3" when the head drafted, else None
    verifies: int = 0                          # target forwards after the prefill
    accepted_per_verify: float = 0.0           # tau: emitted tokens (accepted drafts + bonus) per verify
    accepted_drafts_per_verify: float = 0.0    # accepted drafts emitted per verify
    accepted_by_verify: list = field(default_factory=list)  # per verify: (drafts accepted, tree depth)
    new_tokens: int = 0
    wall_s: float = 0.0                        # until the last tokens reached the host
    tokens_per_s: float = 0.0
    h2d_copies: int = 0                        # host->device copies (phide.runtime.transfers)
    d2h_reads: int = 0                         # device->host reads
    phases: dict = field(default_factory=dict)  # phase -> seconds (device time on a GPU)
    phases_host: dict | None = field(default=None, metadata=_OPTIONAL)  # on a GPU: the host's view
    peak_memory_mb: float = 0.0
    peak_memory_kind: str = ""                 # "gpu_max_allocated" or "cpu_peak_rss"

    def fault(self, exc: BaseException) -> None:
        """A drafter failed: counted and described; the request goes on without it."""
        self.faults += 1
        self.fault_messages.append(f"{type(exc).__name__}: {exc}")

    def as_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "input_info":
                out.update(value)
            elif not (f.metadata.get("optional") and value in (None, [])):
                out[f.name] = value
        return out
