"""Run the bundled toy pair in every configuration on held-out scenes: shared by `phide demo` (a
handful of scenes, a table) and `phide bench` (many scenes, medians and spread, a CSV row per
configuration).

Configurations (`CONFIGS`), all on the same loaded models (tree shape: `TOY_SPEC`):
  target-only      the target alone
  sequential       draft prepare+prefill and its first tree AFTER the target's prefill, then the
                   EAGLE continuation head
  hide             `--mode hide` under the planner (calibrated on this machine at the start of
                   the run, acceptance learnt online): it runs the hide schedule when hiding pays,
                   else what does (head-only: the head from the first round, no draft; or target-only)
  hide-split       hide forced: the draft's prepare+prefill+first tree on 1 reserved core inside
                   the target's input preparation and prefill (on the other cores), then the head
  hide-draft       hide-split, and the EventGPT draft (with its distilled adapter) drafts every round
  hide-draft-raw   hide-draft without the adapter: acceptance before distillation
  hide-overlap     hide, and the head grows the next tree during each verify (post-verify overlap,
                   in a worker process; compared with hide)
Greedy outputs must be identical in every configuration; a difference is a bug and stops the run.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import sys
import time

from phide.errors import PhideError

CONFIGS: dict[str, dict] = {
    "target-only": dict(mode="target-only"),
    "sequential": dict(mode="sequential"),
    "hide": dict(mode="hide", planner=True),
    "hide-split": dict(mode="hide", draft_threads=1),
    "hide-draft": dict(mode="hide", draft_threads=1, continuation="draft"),
    "hide-draft-raw": dict(mode="hide", draft_threads=1, continuation="draft", adapter=False),
    "hide-overlap": dict(mode="hide", planner=True, overlap=True, compare="hide"),
}


def toy_spec():
    """Tree shape for the toy pair: its answers are templated, so deeper round trees pay; the
    first tree gets 8 levels (the same work in sequential and hide)."""
    from phide.engine import SpecConfig

    return SpecConfig(topk=4, depth=10, budget=32, window_depth=8, window_budget=48)


def engine_variants(engine, names, planner=None) -> dict:
    """One Engine per configuration, sharing the loaded models."""
    out = {}
    for name in names:
        cfg = CONFIGS[name]
        e = copy.copy(engine)
        e.spec = dataclasses.replace(engine.spec, continuation=cfg.get("continuation", "head"),
                                     draft_threads=cfg.get("draft_threads", engine.spec.draft_threads),
                                     overlap=cfg.get("overlap", False))
        if not cfg.get("adapter", True):
            e.draft_adapter = None
        e.planner = planner if cfg.get("planner") else None
        out[name] = (e, cfg["mode"])
    return out


def load_bundled(spec=None):
    """The bundled toy pair (phide.pipeline.LoadedPair), head and adapter included."""
    from phide.pipeline import load_pair
    from phide.toy.bundle import bundled_dir

    d = bundled_dir()
    return load_pair(d / "target", d / "draft", spec=spec or toy_spec())


def quick_planner(pair, scenes: int = 2):
    """A Planner calibrated on `scenes` toy scenes never used for measurement (seed EVAL_SEED + 1)."""
    from phide.calibration import calibrate
    from phide.planner import Planner
    from phide.toy.bundle import EVAL_SEED
    from phide.toy.world import make_dataset

    costs = calibrate(pair, make_dataset(scenes, seed=EVAL_SEED + 1, questions_per_scene=1), [1])
    return Planner(costs, window_steps=pair.engine.spec.window_depth)


def eval_samples(n: int):
    """n held-out toy scenes (never trained or distilled on), one question each."""
    from phide.toy.bundle import EVAL_SEED
    from phide.toy.world import make_dataset

    return make_dataset(n, seed=EVAL_SEED, questions_per_scene=1)


def _request(sample, max_new_tokens: int, mode: str):
    from phide.engine import Request

    return Request(prompt=sample.question, video=sample.frames, events=sample.events,
                   max_new_tokens=max_new_tokens, mode=mode)


def run_scenes(pair, samples, names, *, max_new_tokens: int, draft_alone: bool = True, log=None,
               repeats: int = 1) -> list[dict]:
    """Per sample: {"sample", "results": {config: Result}, "text", "score", "draft_text", "draft_score"}.
    With repeats > 1 every configuration runs the scene that many times (interleaved, so slow
    spells of the machine hit all alike) and keeps its median-wall run: per-scene comparisons
    then measure the schedules, not the noise. Raises PhideError when a configuration's tokens
    differ from target-only's."""
    from phide.engine import Engine
    from phide.pipeline import eos_ids
    from phide.toy.world import score_answer

    planner = quick_planner(pair) if any(CONFIGS[n].get("planner") for n in names) else None
    variants = engine_variants(pair.engine, names, planner)
    tok = pair.target.tokenizer
    draft_engine = None
    if draft_alone and pair.draft is not None:  # the draft answering on its own, no adapter
        draft_engine = Engine(pair.draft, eos_token_ids=eos_ids(pair.draft.tokenizer, pair.draft.lm))
    for e, mode in variants.values():  # warm-up: first calls allocate and pick kernels
        e.generate(_request(samples[0], 4, mode))
    rows = []
    for i, s in enumerate(samples):
        runs: dict[str, list] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, (e, mode) in variants.items():
                runs[name].append(e.generate(_request(s, max_new_tokens, mode)))
        base = runs[names[0]][0].token_ids
        for name, rs in runs.items():
            if any(r.token_ids != base for r in rs):
                raise PhideError(f"{name} diverged from {names[0]} on scene {i} ({s.question!r}): this is a bug")
        results = {name: sorted(rs, key=lambda r: r.stats["wall_s"])[(len(rs) - 1) // 2] for name, rs in runs.items()}
        text = tok.decode(base, skip_special_tokens=True)
        row = {"sample": s, "results": results, "text": text, "score": score_answer(s.scene, s.question, text)}
        if draft_engine is not None:
            ids = draft_engine.generate(_request(s, max_new_tokens, "target-only")).token_ids
            row["draft_text"] = pair.draft.tokenizer.decode(ids, skip_special_tokens=True)
            row["draft_score"] = score_answer(s.scene, s.question, row["draft_text"])
        rows.append(row)
        if log:
            log(i, row)
    return rows


def _quantiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def summarize(rows: list[dict], names) -> dict:
    """Per configuration: median / quartiles of wall time, speedups (per scene ratios) vs
    target-only and vs sequential, mean accepted tokens per verify, draft tokens in the window."""
    out = {}
    for name in names:
        walls = [r["results"][name].stats["wall_s"] for r in rows]
        lo, med, hi = _quantiles(walls)
        entry = {
            "median_wall_s": round(med, 5), "p25_wall_s": round(lo, 5), "p75_wall_s": round(hi, 5),
            "mean_accepted_per_verify": round(statistics.fmean(r["results"][name].stats["accepted_per_verify"]
                                                               for r in rows), 3),
            "mean_draft_tokens_in_window": round(statistics.fmean(r["results"][name].stats["draft_tokens_in_window"]
                                                                  for r in rows), 1),
            "target_forwards": sum(r["results"][name].stats["target_forwards"] for r in rows),
            "faults": sum(r["results"][name].stats["faults"] for r in rows),
            "identical_to_target_only": True,  # run_scenes raises otherwise
        }
        plans = [r["results"][name].stats.get("plan") for r in rows]
        if any(plans):
            entry["plans"] = {p: plans.count(p) for p in sorted(set(plans))}
        if any(r["results"][name].stats.get("overlap_rounds") for r in rows):
            entry["overlap_rounds"] = sum(r["results"][name].stats["overlap_rounds"] for r in rows)
            entry["overlap_hits"] = sum(r["results"][name].stats["overlap_hits"] for r in rows)
            entry["verifies"] = sum(r["results"][name].stats["verifies"] for r in rows)
        for ref in ("target-only", "sequential", CONFIGS.get(name, {}).get("compare")):
            if ref in names and ref != name:
                ratios = [r["results"][ref].stats["wall_s"] / r["results"][name].stats["wall_s"] for r in rows]
                lo, med, hi = _quantiles(ratios)
                entry[f"speedup_vs_{ref}"] = round(med, 3)
                entry[f"speedup_vs_{ref}_p25_p75"] = [round(lo, 3), round(hi, 3)]
                entry[f"speedup_vs_{ref}_worst"] = round(min(ratios), 3)  # the slowest scene
        out[name] = entry
    return out


def accuracy(rows: list[dict]) -> dict:
    n = len(rows)
    acc = {"scenes": n,
           "target_correct": sum(r["score"]["motion"] and r["score"]["colour"] for r in rows) / n,
           "target_motion": sum(r["score"]["motion"] for r in rows) / n,
           "target_colour": sum(r["score"]["colour"] for r in rows) / n}
    if rows and "draft_score" in rows[0]:
        acc.update(draft_motion=sum(r["draft_score"]["motion"] for r in rows) / n,
                   draft_colour=sum(r["draft_score"]["colour"] for r in rows) / n)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in acc.items()}


def run_bench(args) -> int:
    import json

    from phide.runtime.benchlog import append_csv, run_context

    names = list(CONFIGS)
    pair = load_bundled()
    samples = eval_samples(args.scenes)
    t0 = time.perf_counter()

    def log(i, row):
        s = row["results"]
        print(f"phide: bench scene {i + 1}/{len(samples)}: " + ", ".join(
            f"{n} {s[n].stats['wall_s'] * 1e3:.0f} ms" for n in names), file=sys.stderr, flush=True)

    rows = run_scenes(pair, samples, names, max_new_tokens=args.max_new_tokens, log=log, repeats=args.repeats)
    csv_path = args.csv or default_csv()
    summary, acc = summarize(rows, names), accuracy(rows)
    ctx = run_context()
    csv_rows = [{**ctx, "bench": "toy_e2e", "config": n, "scenes": len(rows), "repeats": args.repeats,
                 "max_new_tokens": args.max_new_tokens,
                 **{k: v for k, v in summary[n].items() if not isinstance(v, (list, dict))},
                 "plans": " ".join(f"{p}:{c}" for p, c in summary[n].get("plans", {}).items())} for n in names]
    append_csv(csv_path, csv_rows)
    report = {"context": ctx, "configs": summary, "accuracy": acc, "csv": str(csv_path),
              "wall_s": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(report))
        return 0
    print(format_summary(summary, acc, len(rows)))
    print(f"appended {len(csv_rows)} rows to {csv_path}", file=sys.stderr)
    return 0


def default_csv():
    import os
    from pathlib import Path

    from phide.runtime.benchlog import ROOT

    if (ROOT / "profiling" / "results").is_dir():
        return ROOT / "profiling" / "results" / "bench_e2e.csv"
    return Path(os.environ.get("PHIDE_HOME", Path.home() / ".cache" / "phide")) / "bench_e2e.csv"


def format_summary(summary: dict, acc: dict, n: int) -> str:
    lines = [f"{n} held-out scenes, greedy, identical tokens in every configuration",
             f"{'config':15} {'median ms':>9} {'p25-p75 ms':>13} {'τ':>5} {'window':>6} {'vs target':>9} "
             f"{'vs seq':>7} {'worst scene vs target/seq':>25}"]
    for name, e in summary.items():
        vs_t = f"{e['speedup_vs_target-only']:.2f}x" if "speedup_vs_target-only" in e else "-"
        vs_s = f"{e['speedup_vs_sequential']:.2f}x" if "speedup_vs_sequential" in e else "-"
        worst = "/".join(f"{e[k]:.2f}x" for k in ("speedup_vs_target-only_worst", "speedup_vs_sequential_worst")
                         if k in e) or "-"
        lines.append(f"{name:15} {e['median_wall_s'] * 1e3:>9.1f} "
                     f"{e['p25_wall_s'] * 1e3:>6.0f}-{e['p75_wall_s'] * 1e3:<6.0f} "
                     f"{e['mean_accepted_per_verify']:>5.2f} {e['mean_draft_tokens_in_window']:>6.1f} "
                     f"{vs_t:>9} {vs_s:>7} {worst:>25}")
    for name, e in summary.items():
        ref = CONFIGS.get(name, {}).get("compare")
        if ref and f"speedup_vs_{ref}" in e:
            lines.append(f"{name} vs {ref}: {e[f'speedup_vs_{ref}']:.3f}x median per scene (worst "
                         f"{e[f'speedup_vs_{ref}_worst']:.2f}x); grew ahead in {e.get('overlap_rounds', 0)} "
                         f"of {e.get('verifies', 0)} rounds, {e.get('overlap_hits', 0)} hits")
    lines.append(f"target answers correct (motion and colour): {acc['target_correct']:.0%}; "
                 f"draft alone: motion {acc.get('draft_motion', 0):.0%}, colour {acc.get('draft_colour', 0):.0%}")
    return "\n".join(lines)
