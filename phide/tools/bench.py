"""Run the bundled toy pair in every configuration on held-out scenes: shared by `phide demo` (a
handful of scenes, a table) and `phide bench` (many scenes, medians and spread, predicted beside
measured, a CSV row per configuration).

Every configuration is a session loaded by `phide.session.load_session` (the CLI's loader, with
this machine's saved calibration) and a mode passed to `Session.generate` (the CLI's call):
exactly what `phide generate --mode MODE [FLAGS]` runs. The scenes are exported as a paired
directory and each request is built from its files by `phide eval`'s `item_request`, so the bench
measures what `phide eval` over the same directory runs (frames and events read from disk). Rows are named by what ran:
  target-only                     the target alone
  sequential                      the draft's prepare + prefill + first tree AFTER the target's
                                  prefill, then the EAGLE head drafts the rounds
  head-only                       the head drafts every round; the draft model never runs
  hide                            the draft's prepare + prefill + first tree inside the target's
                                  input preparation and prefill (the calibrated lane split), then
                                  the head
  auto                            the planner's pick per request, named by the picks:
                                  `auto (head-only)`, `auto (hide 3, head-only 13)`
  hide --no-head                  hide with no head: the EventGPT draft drafts every round, at a
                                  target step's cost (the reason for the head)
  hide --no-head --no-adapter     the same without the draft's distilled adapter
  hide --overlap                  hide with post-verify overlap (not run by default)
  hide [--no-head] --draft-quant int8|nf4
                                  the draft's decoder in int8 (torchao) or NF4 (bitsandbytes):
                                  acceptance and speed of a quantized draft (not run by default)
Greedy outputs must be identical in every configuration; the bench counts the scenes where they
are and fails when one is not.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

from phide.schedules import HEAD_ONLY, HIDE, SEQUENTIAL, TARGET_ONLY
from phide.errors import PhideError
from phide.tools.benchlog import CONTEXT_COLUMNS


@dataclass(frozen=True)
class Config:
    mode: str                    # what Session.generate is asked for
    variant: str = "main"        # which session: see VARIANTS
    default: bool = True         # run by `phide bench` without --configs


CONFIGS: dict[str, Config] = {
    TARGET_ONLY: Config(TARGET_ONLY),
    SEQUENTIAL: Config(SEQUENTIAL),
    HEAD_ONLY: Config(HEAD_ONLY),
    HIDE: Config(HIDE),
    "auto": Config("auto"),
    "hide --no-head": Config(HIDE, "no-head"),
    "hide --no-head --no-adapter": Config(HIDE, "no-head-no-adapter"),
    "hide --overlap": Config(HIDE, "overlap", default=False),
    "hide --draft-quant int8": Config(HIDE, "draft-int8", default=False),
    "hide --draft-quant nf4": Config(HIDE, "draft-nf4", default=False),
    "hide --no-head --draft-quant int8": Config(HIDE, "no-head-draft-int8", default=False),
    "hide --no-head --draft-quant nf4": Config(HIDE, "no-head-draft-nf4", default=False),
}
# Session variants: load_session arguments (the CLI flags they stand for).
VARIANTS = {
    "main": {},
    "no-head": {"use_head": False},                                   # --no-head
    "no-head-no-adapter": {"use_head": False, "use_adapter": False},  # --no-head --no-adapter
    "overlap": {"overlap": True},                                     # --overlap
    "draft-int8": {"draft_quant": "int8"},                            # --draft-quant int8
    "draft-nf4": {"draft_quant": "nf4"},                              # --draft-quant nf4
    "no-head-draft-int8": {"use_head": False, "draft_quant": "int8"},  # --no-head --draft-quant int8
    "no-head-draft-nf4": {"use_head": False, "draft_quant": "nf4"},   # --no-head --draft-quant nf4
}
DEMO_CONFIGS = (TARGET_ONLY, SEQUENTIAL, HIDE, "auto")


def config_of(name: str) -> tuple[Config, dict]:
    """A configuration by name: one of CONFIGS, or MODE [--head DIR] [--no-head] [--no-adapter]
    (e.g. `head-only --head runs/eagle2`: another head on the bundled pair) -> (Config, the
    session's load_session arguments)."""
    if name in CONFIGS:
        return CONFIGS[name], VARIANTS[CONFIGS[name].variant]
    from phide import schedules

    words = name.split()
    if not words or words[0] not in schedules.modes():
        raise PhideError(f"unknown configuration {name!r} (choose from {', '.join(CONFIGS)}, or MODE --head DIR)")
    kw, rest = {}, words[1:]
    while rest:
        flag = rest.pop(0)
        if flag == "--head" and rest:
            kw["head_dir"] = rest.pop(0)
        elif flag == "--no-head":
            kw["use_head"] = False
        elif flag == "--no-adapter":
            kw["use_adapter"] = False
        else:
            raise PhideError(f"configuration {name!r}: {flag!r} is not a flag the bench takes (--head DIR, "
                             "--no-head, --no-adapter)")
    return Config(words[0], variant=" ".join(words[1:]), default=False), kw

BENCH_COLUMNS = CONTEXT_COLUMNS + [
    "bench", "config", "ran", "scenes", "repeats", "max_new_tokens", "median_wall_s", "p25_wall_s", "p75_wall_s",
    "median_predicted_s", "median_prediction_error", "tau", "mean_draft_tokens_in_window", "target_forwards", "faults",
    "identical_scenes", "speedup_vs_target-only", "speedup_vs_target-only_worst", "speedup_vs_sequential",
    "speedup_vs_sequential_worst"]


# ----------------------------------------------------------------------------- the bundled pair
def bundled_session(variant: str | dict = "main", calibration="auto", **load_kw):
    """The bundled toy pair as a session (head, adapter and tree shape from its directories);
    variant: a VARIANTS name or its load_session arguments; `load_kw`: more (device, dtype)."""
    from phide.session import load_session
    from phide.toy.bundle import bundled_dir

    d = bundled_dir()
    kw = VARIANTS[variant] if isinstance(variant, str) else variant
    return load_session(d / "target", d / "draft", calibration=calibration, **kw, **load_kw)


def toy_samples(n: int, seed: int):
    """n toy scenes, one question each (seeds: phide.toy.bundle)."""
    from phide.toy.world import make_dataset

    return make_dataset(n, seed=seed, questions_per_scene=1)


def eval_samples(n: int):
    """n held-out toy scenes (never trained, distilled or calibrated on)."""
    from phide.toy.bundle import EVAL_SEED

    return toy_samples(n, EVAL_SEED)


def toy_request(sample, max_new_tokens: int):
    from phide.engine import Request

    return Request(prompt=sample.question, video=sample.frames, events=sample.events, max_new_tokens=max_new_tokens)


def ensure_calibrated(session, *, scenes: int = 4, max_new_tokens: int = 48, log=None) -> bool:
    """Calibrate `session` (a bundled-pair session) on `scenes` calibration scenes and save it,
    unless this machine already has its calibration. True when it calibrated now."""
    if session.planner.calibration is not None:
        return False
    from phide.session import save_session_calibration
    from phide.toy.bundle import CALIBRATION_SEED
    from phide.tools.calibrate import calibrate

    say = log or (lambda msg: None)
    say(f"no calibration of the toy pair on this machine yet: calibrating on {scenes} scenes (once)")
    requests = [toy_request(s, max_new_tokens) for s in toy_samples(scenes, CALIBRATION_SEED)]
    path = save_session_calibration(session, calibrate(session, requests, log=lambda m: say(f"calibrate: {m}")))
    say(f"saved the calibration to {path}")
    return True


# ----------------------------------------------------------------------------- running scenes
def load_configs(names, *, log=None) -> dict:
    """{config name: (session, mode)}, one session per variant; the main one calibrated."""
    sessions, chosen = {}, {name: config_of(name) for name in names}
    for cfg, kw in chosen.values():
        if cfg.variant not in sessions:
            sessions[cfg.variant] = bundled_session(kw)
    if "main" in sessions and ensure_calibrated(sessions["main"], log=log):
        sessions["main"] = bundled_session("main")  # reload: what a later `phide generate` loads
    return {name: (sessions[cfg.variant], cfg.mode) for name, (cfg, _) in chosen.items()}


def run_scenes(configs: dict, samples, *, max_new_tokens: int, draft_alone: bool = True, log=None,
               repeats: int = 1) -> list[dict]:
    """Per sample: {"sample", "results": {config: Result}, "identical": {config: bool}, "text",
    "score", "draft_text", "draft_score"}. Every configuration runs each scene `repeats` times
    (interleaved, in an order that rotates, so slow spells of the machine and a cold cache hit
    all alike) and keeps its median-wall run.
    "identical" compares every run's tokens with the first configuration's first run."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="phide-scenes-") as data_dir:
        return _run_scenes(configs, samples, export_scenes(samples, data_dir), max_new_tokens=max_new_tokens,
                           draft_alone=draft_alone, log=log, repeats=repeats)


def export_scenes(samples, data_dir) -> list[dict]:
    """The toy samples written as a paired directory and read back as `phide eval` work items, so
    the bench's requests are built and loaded from files exactly as eval's are (one path)."""
    from phide.io.paired import write_paired_dir
    from phide.tools.eval_runs import paired_items

    write_paired_dir(data_dir, ((s.frames, s.events, [s.question], {"answer": s.answer}) for s in samples))
    return paired_items(data_dir)


def _run_scenes(configs: dict, samples, items: list[dict], *, max_new_tokens: int, draft_alone: bool, log,
                repeats: int) -> list[dict]:
    from phide.engine import Engine
    from phide.session import eos_ids
    from phide.tools.eval_runs import item_request
    from phide.toy.world import score_answer

    names = list(configs)
    main = configs[names[0]][0]
    draft_engine = None
    if draft_alone and main.draft_side is not None:  # the draft answering on its own, no adapter
        draft_engine = Engine(main.draft_side, eos_token_ids=eos_ids(main.draft_side.tokenizer, main.draft_side.lm))
    for session, mode in configs.values():  # warm-up: first calls allocate and pick kernels
        session.generate(item_request(items[0], {"max_new_tokens": 4}), mode)
    rows = []
    for i, (s, item) in enumerate(zip(samples, items)):
        runs: dict[str, list] = {name: [] for name in names}
        for rep in range(repeats):
            k = (i * repeats + rep) % len(names)  # rotate the order: no configuration always runs first
            for name in names[k:] + names[:k]:
                session, mode = configs[name]
                runs[name].append(session.generate(item_request(item, {"max_new_tokens": max_new_tokens}), mode))
        base = runs[names[0]][0].token_ids
        identical = {name: all(r.token_ids == base for r in rs) for name, rs in runs.items()}
        results = {name: sorted(rs, key=lambda r: r.stats["wall_s"])[(len(rs) - 1) // 2] for name, rs in runs.items()}
        text = main.decode(base)
        rows.append({"sample": s, "results": results, "identical": identical, "text": text,
                     "score": score_answer(s.scene, s.question, text)})
        if log:
            log(i, rows[-1])
    # The draft alone answers last: between timed runs its weights would evict the target's from
    # the CPU caches and slow the next scene's first configuration.
    for row, item in zip(rows, items) if draft_engine is not None else ():
        ids = draft_engine.generate(item_request(item, {"max_new_tokens": max_new_tokens}), TARGET_ONLY).token_ids
        row["draft_text"] = main.draft_side.tokenizer.decode(ids, skip_special_tokens=True)
        row["draft_score"] = score_answer(row["sample"].scene, row["sample"].question, row["draft_text"])
    return rows


# ----------------------------------------------------------------------------- summaries
def _quantiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def ran_label(name: str, plans: list[str]) -> str:
    """A configuration's name with what ran when that is not what the name says: `auto` always
    names its picks (`auto (head-only 14, hide 2)`); a forced mode names a fallback."""
    counts = {p: plans.count(p) for p in dict.fromkeys(plans)}
    try:
        mode = config_of(name)[0].mode
    except PhideError:  # a plain label
        mode = name
    if mode != "auto" and list(counts) == [mode]:
        return name
    if len(counts) == 1:
        return f"{name} ({plans[0]})"
    return f"{name} (" + ", ".join(f"{p} {c}" for p, c in sorted(counts.items(), key=lambda kv: -kv[1])) + ")"


def summarize(rows: list[dict], names) -> dict:
    """Per configuration: what ran, median / quartiles of wall time, the planner's predicted wall
    time (median) and its median relative error against the measured one, τ (tokens emitted /
    verify forwards, pooled over scenes), speedups (per scene ratios) vs target-only and vs
    sequential, draft tokens in the window, identical scenes."""
    out = {}
    for name in names:
        stats = [r["results"][name].stats for r in rows]
        walls = [st["wall_s"] for st in stats]
        lo, med, hi = _quantiles(walls)
        plans = [st["plan"]["schedule"] for st in stats]
        predicted = [(st["plan"]["predicted_s"], st["wall_s"]) for st in stats if st["plan"]["predicted_s"] is not None]
        entry = {
            "ran": ran_label(name, plans),
            "median_wall_s": round(med, 5), "p25_wall_s": round(lo, 5), "p75_wall_s": round(hi, 5),
            "median_predicted_s": round(statistics.median(p for p, _ in predicted), 5) if predicted else None,
            "median_prediction_error": (round(statistics.median(abs(p - m) / m for p, m in predicted), 4)
                                        if predicted else None),
            "tau": round(sum(st["new_tokens"] for st in stats) / max(1, sum(st["verifies"] for st in stats)), 3),
            "mean_draft_tokens_in_window": round(statistics.fmean(st["draft_tokens_in_window"] for st in stats), 1),
            "target_forwards": sum(st["target_forwards"] for st in stats),
            "faults": sum(st["faults"] for st in stats),
            "identical_scenes": sum(r["identical"][name] for r in rows),
            "plans": {p: plans.count(p) for p in dict.fromkeys(plans)},
        }
        if any(st.get("overlap_rounds") for st in stats):
            entry["overlap_rounds"] = sum(st["overlap_rounds"] for st in stats)
            entry["overlap_hits"] = sum(st["overlap_hits"] for st in stats)
        for ref in (TARGET_ONLY, SEQUENTIAL):
            if ref in names and ref != name:
                ratios = [r["results"][ref].stats["wall_s"] / r["results"][name].stats["wall_s"] for r in rows]
                entry[f"speedup_vs_{ref}"] = round(statistics.median(ratios), 3)
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


def format_summary(summary: dict, acc: dict, n: int) -> str:
    same = all(e["identical_scenes"] == n for e in summary.values())
    lines = [f"{n} held-out scenes, greedy; tokens identical to target-only in every configuration: "
             + ("yes" if same else "NO"),
             f"{'config (what ran)':34} {'median ms':>9} {'p25-p75 ms':>11} {'predicted':>9} {'error':>6} "
             f"{'τ':>5} {'window':>6} {'vs target':>9} {'vs seq':>7} {'worst vs target/seq':>19}"]
    for name, e in summary.items():
        vs_t = f"{e['speedup_vs_target-only']:.2f}x" if "speedup_vs_target-only" in e else "-"
        vs_s = f"{e['speedup_vs_sequential']:.2f}x" if "speedup_vs_sequential" in e else "-"
        worst = "/".join(f"{e[k]:.2f}x" for k in ("speedup_vs_target-only_worst", "speedup_vs_sequential_worst")
                         if k in e) or "-"
        pred = f"{e['median_predicted_s'] * 1e3:.1f}" if e["median_predicted_s"] is not None else "-"
        err = f"{e['median_prediction_error']:.0%}" if e["median_prediction_error"] is not None else "-"
        lines.append(f"{e['ran']:34} {e['median_wall_s'] * 1e3:>9.1f} "
                     f"{e['p25_wall_s'] * 1e3:>5.0f}-{e['p75_wall_s'] * 1e3:<5.0f} {pred:>9} {err:>6} "
                     f"{e['tau']:>5.2f} {e['mean_draft_tokens_in_window']:>6.1f} {vs_t:>9} {vs_s:>7} {worst:>19}")
        if "overlap_rounds" in e:
            lines.append(f"  {name}: grew ahead in {e['overlap_rounds']} rounds, {e['overlap_hits']} hits")
    errs = [e["median_prediction_error"] for e in summary.values() if e["median_prediction_error"] is not None]
    if errs:
        lines.append(f"predicted vs measured wall time: median error {statistics.median(errs):.0%} over the "
                     "configurations the calibration covers (per configuration: the median over scenes)")
    lines.append(f"target answers correct (motion and colour): {acc['target_correct']:.0%}; "
                 f"draft alone: motion {acc.get('draft_motion', 0):.0%}, colour {acc.get('draft_colour', 0):.0%}")
    return "\n".join(lines)


def default_csv():
    import os
    from pathlib import Path

    from phide.tools.benchlog import ROOT

    if (ROOT / "profiling" / "results").is_dir():
        return ROOT / "profiling" / "results" / "bench_e2e.csv"
    return Path(os.environ.get("PHIDE_HOME", Path.home() / ".cache" / "phide")) / "bench_e2e.csv"


def run_bench(args) -> int:
    import json

    from phide.tools.benchlog import append_csv, check_schema, run_context

    names = [n.strip() for n in args.configs.split(",")] if args.configs else [n for n, c in CONFIGS.items() if c.default]
    for n in names:
        config_of(n)  # an unknown configuration fails before anything loads
    if TARGET_ONLY in names:  # the reference every other configuration is compared with
        names.remove(TARGET_ONLY)
    names.insert(0, TARGET_ONLY)
    ctx = run_context()
    csv_path = args.csv or default_csv()
    if ctx["dirty"] and not args.allow_dirty:  # refuse before the run, not after it
        raise PhideError("the tree has uncommitted changes, so the bench rows could not be traced to a commit "
                         "(commit first, or pass --allow-dirty: the rows are marked dirty)")
    check_schema(csv_path, BENCH_COLUMNS)

    def say(msg):
        print(f"phide: bench: {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    configs = load_configs(names, log=say)
    samples = eval_samples(args.scenes)

    def log(i, row):
        s = row["results"]
        say(f"scene {i + 1}/{len(samples)}: " + ", ".join(f"{n} {s[n].stats['wall_s'] * 1e3:.0f} ms" for n in names))

    rows = run_scenes(configs, samples, max_new_tokens=args.max_new_tokens, log=log, repeats=args.repeats)
    summary, acc = summarize(rows, names), accuracy(rows)
    csv_rows = [{**ctx, "bench": "toy_e2e", "config": n, "scenes": len(rows), "repeats": args.repeats,
                 "max_new_tokens": args.max_new_tokens,
                 **{k: v for k, v in summary[n].items() if k in BENCH_COLUMNS}} for n in names]
    append_csv(csv_path, csv_rows, BENCH_COLUMNS, allow_dirty=args.allow_dirty)
    report = {"context": ctx, "configs": summary, "accuracy": acc, "csv": str(csv_path),
              "wall_s": round(time.perf_counter() - t0, 1)}
    diverged = [n for n, e in summary.items() if e["identical_scenes"] != len(rows)]
    if args.json:
        print(json.dumps(report))
    else:
        print(format_summary(summary, acc, len(rows)))
        say(f"appended {len(csv_rows)} rows to {csv_path}")
    if diverged:
        raise PhideError(f"tokens differ from target-only in {', '.join(diverged)}: this is a bug")
    return 0
