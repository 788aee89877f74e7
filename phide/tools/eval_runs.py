"""`phide eval DATA --target DIR --draft DIR --out RUN_DIR`: a pair over a whole paired data set.

Every (sample, mode) runs through `Session.generate` (the CLI's path) and becomes one row of
RUN_DIR/results.jsonl, appended and flushed as it completes:
    {"sample", "mode", "question", "text", "token_ids", "stats"}  or  {"sample", "mode", "error"}
so a crash loses at most the row in flight. `--resume` keeps the rows already there (a torn last
line, from a kill mid-write, is cut off) and runs only the missing ones (an error row is a row:
delete its line to have it run again); RUN_DIR/run.json records what the run is (data, pair,
modes, every loading and running argument) and a resume must match it. RUN_DIR/summary.json and
summary.png are computed from results.jsonl alone, so a resumed run ends with the summary an
uninterrupted one writes (`without_timings`: timings aside, and the acceptance of hide rows, which
the window's length decides).

Exit codes: 0 every row ran, 1 some rows are errors (counted in the summary), 2 bad arguments.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from phide.schedules import HIDE, TARGET_ONLY
from phide.errors import PhideError
from phide.io import rows as rows_file
from phide.io.rows import open_run_dir

RESULTS, SUMMARY, RUN, PNG = "results.jsonl", "summary.json", "run.json", "summary.png"
# Summary keys that are timings (they differ between two runs of the same rows).
TIMING_KEYS = ("latency_s", "ttft_s", "tpot_s", "tokens_per_s", "speedup_vs_target_only", "prefill_slowdown")


def sample_id(i: int, extra: dict) -> str:
    """A sample's id: its manifest "id" when it has one, else its line number."""
    return str(extra.get("id", i))


def read_rows(path: Path) -> list[dict]:
    """The complete rows of a results file; a torn last line (a kill mid-write) is cut from the file."""
    return rows_file.read_rows(path, ("sample", "mode"), what="result row")


# What makes two runs the same run (a resume must match all of them): the data and requests, the
# pair and every argument that changes what loads or how it runs.
RUN_PATHS = ("data", "target", "draft", "head", "adapter", "clip_dir")
RUN_ARGS = ("limit", "max_new_tokens", "temperature", "seed", "no_head", "no_adapter", "overlap", "draft_graph",
            "device", "dtype", "draft_quant", "target_quant", "topk", "depth", "budget", "window_depth",
            "window_budget", "calibrate")


def run_identity(args, modes: list[str]) -> dict:
    ident = {k: str(Path(getattr(args, k)).resolve()) if getattr(args, k, None) else None for k in RUN_PATHS}
    ident.update({k: getattr(args, k, None) for k in RUN_ARGS})
    ident["modes"] = modes
    ident["mode_order"] = "rotated per sample (sample i starts at mode i mod len(modes)), after one warm-up per mode"
    return ident


def _open_run(out: Path, run: dict, resume: bool) -> list[dict]:
    """Create RUN_DIR or, with resume, check it is the same run; returns the rows already there."""
    results = out / RESULTS
    if results.is_file() and not resume and out.is_dir():
        raise PhideError(f"{out} already holds a run ({RESULTS}): pass --resume to finish it, or another --out")
    open_run_dir(out, RUN, run, resume)
    return read_rows(results)


class RowWriter(rows_file.RowWriter):
    """Appends rows to results.jsonl, each flushed and synced as it completes; a (sample, mode)
    already written is dropped (a retried task's repeat), so no row is written twice."""

    def __init__(self, path: Path, done: set):
        super().__init__(path, lambda row: (row["sample"], row["mode"]), done)


def paired_items(data_dir, *, keep_bad: bool = False) -> list[dict]:
    """A paired directory's samples as work items: {"sample" (id), "question", "video", "events",
    "answer" (or None), "type"}, with the files checked up front (phide.io.paired). keep_bad
    (phide eval): the event files are opened too (`check_event_file`), and a sample whose file is
    missing or bad gets "error" (its rows become error rows, the run goes on); else (phide
    distill) a missing file is one PhideError for the whole set."""
    from phide.io.events import check_event_file
    from phide.io.paired import read_paired_dir

    items = []
    for i, s in enumerate(read_paired_dir(data_dir, keep_missing=keep_bad)):
        item = {"sample": sample_id(i, s.extra), "question": s.question, "video": str(s.video),
                "events": str(s.events), "answer": s.extra.get("answer"),
                "type": s.extra.get("type") or s.extra.get("task")}
        problem = s.problem
        if problem is None and keep_bad:
            try:
                check_event_file(s.events)
            except PhideError as exc:
                problem = str(exc)
        if problem is not None:
            item["error"] = problem
        items.append(item)
    return items


def item_request(item: dict, request: dict):
    """The request of a work item (`request`: max_new_tokens, temperature, seed): the sample's
    files, read by the frontends as `phide generate --video --events` reads them."""
    from phide.engine import Request

    return Request(prompt=item["question"], video=item["video"], events=item["events"], **request)


def mode_order(modes: list[str], index: int) -> list[str]:
    """Sample `index`'s modes, rotated by its index: each mode runs first on 1/len(modes) of the
    samples, so whatever a shared machine does meanwhile (load, caches warmed by the previous
    mode) is not one mode's bias."""
    k = index % len(modes)
    return modes[k:] + modes[:k]


WARM_UP_TOKENS = 4


def warm_up(session, item: dict, request: dict, modes: list[str]) -> None:
    """One short untimed request per mode on a fresh session (first-call costs: allocations,
    kernel caches, the lanes), before any timed row; a mode whose warm-up fails is left to fail
    in its rows."""
    req = item_request(item, {**request, "max_new_tokens": WARM_UP_TOKENS})
    for mode in modes:
        try:
            session.generate(req, mode)
        except PhideError:
            pass


def run_item(session, item: dict, request: dict):
    """The rows of one work item: its sample under each of its modes, in the item's order (a
    sample with bad input gives error rows; the run goes on). `order` in a row: its place in the
    sample's rotation (0: ran first)."""
    if "error" in item:  # a sample whose files were refused up front
        for mode in item["modes"]:
            yield {"sample": item["sample"], "mode": mode, "error": item["error"]}
        return
    req = item_request(item, request)
    for mode in item["modes"]:
        order = item["order"].index(mode)
        try:
            result = session.generate(req, mode)
            yield {"sample": item["sample"], "mode": mode, "order": order, "question": item["question"],
                   **({"type": item["type"]} if item.get("type") else {}),
                   "text": session.decode(result.token_ids), "token_ids": result.token_ids, "stats": result.stats}
        except PhideError as exc:
            yield {"sample": item["sample"], "mode": mode, "order": order, "error": str(exc)}


def run_serial(items: list[dict], request: dict, load_session, warm: dict | None = None):
    session = load_session()
    if warm is not None:
        warm_up(session, warm, request, warm["order"])
    for item in items:
        yield from run_item(session, item, request)


def run_eval(args, load_session) -> int:
    """`load_session()`: the session the pair arguments describe (the CLI's loader), called only
    when rows remain to run (with --ray, once per worker)."""
    from phide import schedules

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in schedules.modes()]
    if bad or not modes:
        raise PhideError(f"unknown mode {bad[0] if bad else '(none)'!r} in --modes (choose from {', '.join(schedules.modes())})")
    samples = paired_items(args.data, keep_bad=True)[: args.limit or None]
    ids = [s["sample"] for s in samples]
    if len(set(ids)) != len(ids):
        raise PhideError(f"{args.data}: sample ids repeat (\"id\" keys in samples.jsonl must be unique)")
    n_cal = getattr(args, "calibrate", None) or 0
    if n_cal and n_cal >= len(samples):
        raise PhideError(f"--calibrate {n_cal} leaves no sample to evaluate ({len(samples)} in {args.data})")
    calibration_samples, samples = samples[:n_cal], samples[n_cal:]
    ids = [s["sample"] for s in samples]
    refused = [s for s in samples if "error" in s]
    if refused:  # listed once, up front; each becomes error rows and the run goes on
        print(f"phide: eval: {len(refused)} of {len(samples)} samples refused (error rows; exit 1):", file=sys.stderr)
        for s in refused:
            print(f"phide: eval:   sample {s['sample']}: {s['error']}", file=sys.stderr)
        sys.stderr.flush()
    if getattr(args, "ray", None):
        from phide.tools.eval_ray import connect

        connect(args.ray)  # before RUN_DIR is made: an unreachable cluster leaves nothing to resume
    out = Path(args.out)
    run = run_identity(args, modes)
    rows = _open_run(out, run, args.resume)
    done = {(r["sample"], r["mode"]) for r in rows}
    # One work item per sample: its modes still missing, in its rotated order (a sample's rows run
    # on one engine, so its speedups compare runs on one machine).
    items = []
    for i, s in enumerate(samples):
        order = mode_order(modes, i)
        items.append({**s, "order": order, "modes": [m for m in order if (s["sample"], m) not in done]})
    items = [it for it in items if it["modes"]]
    warm = next((it for it in items if "error" not in it), None)
    request = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed}
    session, loaded = None, {}  # the calibrating session serves the rows too (one load)
    if items and calibration_samples:
        session = load_session()
        args.calibration_file = str(_calibrate_on(session, calibration_samples, request))
    if items:
        with RowWriter(out / RESULTS, done) as write, _progress(len(ids) * len(modes), len(done),
                                                                quiet=args.json) as bar:
            if getattr(args, "ray", None):
                from phide.tools.eval_ray import run_on_ray

                rows_out = run_on_ray(args.ray, items, request, load_session, run_item, workers=args.workers,
                                      warm_up=(warm_up, {**warm, "order": modes}) if warm else None)
            else:
                def serial_session():
                    loaded["session"] = session or load_session()
                    return loaded["session"]

                rows_out = run_serial(items, request, serial_session, {**warm, "order": modes} if warm else None)
            for row in rows_out:
                if write(row):
                    bar.update(1)
    rows = read_rows(out / RESULTS)
    references = {s["sample"]: s["answer"] for s in samples}
    summary = summarize(rows, modes, references)
    summary["environment"] = environment(args, loaded.get("session"))
    rows_file.write_json_atomic(out / SUMMARY, summary)
    png = summary_png(rows, modes, out / PNG, summary)
    if args.json:
        print(json.dumps({"run_dir": str(out), "summary": summary, "png": str(png) if png else None}))
    else:
        print(format_summary(summary))
        print(f"phide: eval: wrote {out / RESULTS}, {out / SUMMARY}" + (f", {png}" if png else ""), file=sys.stderr)
    return 1 if summary["errors"] else 0


def environment(args, session=None) -> dict:
    """What the rows ran on, for the paper's table: machine, versions, dtype, commit and which
    calibration the planner read (its key digest when this process ran the rows)."""
    import torch

    from phide.tools.benchlog import run_context

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = {**run_context(), "cuda": torch.version.cuda, "triton_version": triton_version,
           "device_arg": getattr(args, "device", None), "dtype": getattr(args, "dtype", None),
           "calibration": getattr(args, "calibration_file", None) or "auto (this machine's saved one, if any)"}
    if session is not None and getattr(session, "key", None):
        from phide.session import key_digest

        env["calibration_key"] = key_digest(session.key)
    return env


def _calibrate_on(session, samples: list[dict], request: dict):
    """`phide calibrate` on these samples' requests; the calibration is saved where the session's
    loader looks, and its path returned (for the sessions the rows run on, Ray workers included)."""
    from phide.session import save_session_calibration
    from phide.tools.calibrate import calibrate

    good = [s for s in samples if "error" not in s]
    if not good:
        raise PhideError("--calibrate: every calibration sample was refused")
    print(f"phide: eval: calibrating on {len(good)} samples (left out of the table)", file=sys.stderr, flush=True)
    cal = calibrate(session, [item_request(s, request) for s in good],
                    log=lambda msg: print(f"phide: calibrate: {msg}", file=sys.stderr, flush=True))
    return save_session_calibration(session, cal)


def _progress(total: int, initial: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="row", desc="phide eval", disable=quiet, file=sys.stderr,
                dynamic_ncols=True)


# ----------------------------------------------------------------------------------- the summary
def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def _dist(values: list[float], digits: int = 4, qs=(50, 90, 99)) -> dict:
    """{mean, p50, p90, p99} of per-request values (numpy's linear interpolation)."""
    out = {"mean": round(statistics.fmean(values), digits)}
    out.update({f"p{q}": round(_pct(values, q), digits) for q in qs})
    return out


def _acceptance_by_depth(rows: list[dict]) -> dict[str, float]:
    """Per draft depth d: of the verified trees that reached depth d, the share whose accepted path
    did too."""
    from phide.engine import acceptance_by_depth

    return acceptance_by_depth(r["stats"] for r in rows)


def question_type(row: dict) -> str:
    """A row's question type: the sample's `type` (or `task`) field, else its question's first
    three words ("Which way does", "How many objects")."""
    return row.get("type") or " ".join(str(row.get("question", "")).split()[:3]) or "?"


def tpot_s(stats: dict) -> float | None:
    """Time per output token after the first: (latency - TTFT) / (tokens - 1)."""
    n = stats.get("new_tokens", 0)
    if n < 2 or "first_token_s" not in stats:
        return None
    return (stats["wall_s"] - stats["first_token_s"]) / (n - 1)


def _mode_entry(ok: list[dict], refs: list[tuple[dict, dict]], mode: str) -> dict:
    """The aggregates of one mode's good rows; refs: (row, the same sample's target-only row)."""
    lat = [r["stats"]["wall_s"] for r in ok]
    e = {"latency_s": _dist(lat)}
    ttft = [r["stats"]["first_token_s"] for r in ok if "first_token_s" in r["stats"]]
    if ttft:
        e["ttft_s"] = _dist(ttft)
    tpot = [t for t in (tpot_s(r["stats"]) for r in ok) if t is not None]
    if tpot:
        e["tpot_s"] = _dist(tpot, 6)
    # τ per request (tokens emitted per verify), then its mean: every request counts once,
    # however long its answer (a pooled ratio would weigh long answers more).
    e["tau"] = _dist([r["stats"]["accepted_per_verify"] for r in ok])
    e["new_tokens"] = sum(r["stats"]["new_tokens"] for r in ok)
    e["tokens_per_s"] = round(e["new_tokens"] / sum(lat), 3)
    e["acceptance_by_depth"] = _acceptance_by_depth(ok)
    if refs and mode != TARGET_ONLY:
        speed = [t["stats"]["wall_s"] / r["stats"]["wall_s"] for r, t in refs]
        e["speedup_vs_target_only"] = {"median": round(statistics.median(speed), 3),
                                       "p10": round(_pct(speed, 10), 3), "worst": round(min(speed), 3)}
    if refs:
        e["identical_rate"] = round(sum(r["token_ids"] == t["token_ids"] for r, t in refs) / len(refs), 4)
    hid = [r for r in ok if r["stats"]["plan"]["schedule"] == HIDE]
    if hid:
        e["draft_tokens_in_window"] = round(statistics.fmean(r["stats"].get("draft_tokens_in_window", 0)
                                                             for r in hid), 3)
        slow = [r["stats"]["phases"]["target_prefill"] / t["stats"]["phases"]["target_prefill"]
                for r, t in refs if r in hid and t["stats"]["phases"].get("target_prefill")]
        if slow:  # the target's prefill beside the draft vs the same sample's prefill alone
            e["prefill_slowdown"] = round(statistics.median(slow), 3)
    return e


def summarize(rows: list[dict], modes: list[str], references: dict | None = None) -> dict:
    """Per mode: rows and errors, how often it ran first (the rotation), what the planner ran and
    why, latency / TTFT / TPOT (mean, p50, p90, p99 over requests), τ per request (its mean and
    percentiles), acceptance at each draft depth, tokens/s, speedup vs the same sample's
    target-only run (median, p10, worst), identical-token rate vs target-only, the draft's hidden
    work (window tokens, target prefill slowdown), exact-match accuracy where samples carry
    reference answers; and per question type the speedup and τ."""
    by = {(r["sample"], r["mode"]): r for r in rows}
    samples = sorted({r["sample"] for r in rows}, key=lambda x: (len(x), x))
    out = {"samples": len(samples), "rows": len(rows), "errors": sum("error" in r for r in rows), "modes": {}}
    for mode in modes:
        mine = [by[(s, mode)] for s in samples if (s, mode) in by]
        ok = [r for r in mine if "error" not in r]
        entry = {"rows": len(mine), "errors": len(mine) - len(ok),
                 "ran_first": sum(r.get("order") == 0 for r in mine)}
        if ok:
            entry["schedules"] = dict(sorted(_count(r["stats"]["plan"]["schedule"] for r in ok).items()))
            entry["why"] = {sched: max(_count(r["stats"]["plan"].get("reason", "") for r in ok
                                              if r["stats"]["plan"]["schedule"] == sched).items(),
                                       key=lambda kv: kv[1])[0] for sched in entry["schedules"]}
            refs = [(r, by.get((r["sample"], TARGET_ONLY))) for r in ok]
            refs = [(r, t) for r, t in refs if t is not None and "error" not in t]
            entry.update(_mode_entry(ok, refs, mode))
            answered = [(r, (references or {}).get(r["sample"])) for r in ok]
            answered = [(r, a) for r, a in answered if a is not None]
            if answered:
                entry["accuracy"] = round(sum(r["text"].strip() == str(a).strip() for r, a in answered)
                                          / len(answered), 4)
            kinds = {}
            for r, t in [(r, by.get((r["sample"], TARGET_ONLY))) for r in ok]:
                k = kinds.setdefault(question_type(r), {"rows": 0, "tau": [], "speedup": []})
                k["rows"] += 1
                k["tau"].append(r["stats"]["accepted_per_verify"])
                if mode != TARGET_ONLY and t is not None and "error" not in t:
                    k["speedup"].append(t["stats"]["wall_s"] / r["stats"]["wall_s"])
            entry["by_question_type"] = {
                q: {"rows": k["rows"], "tau_mean": round(statistics.fmean(k["tau"]), 4),
                    **({"speedup_median": round(statistics.median(k["speedup"]), 3)} if k["speedup"] else {})}
                for q, k in sorted(kinds.items())}
        out["modes"][mode] = entry
    return out


def _count(items) -> dict:
    counts: dict = {}
    for x in items:
        counts[x] = counts.get(x, 0) + 1
    return counts


# Of rows that ran the hide schedule, acceptance depends on a timing too: how much of the first
# tree the draft grew before the target's prefill ended.
WINDOW_KEYS = ("tau", "acceptance_by_depth", "draft_tokens_in_window")


def without_timings(summary: dict) -> dict:
    """The summary less what differs between two runs of the same samples: timings, and where
    rows ran the hide schedule, the acceptance the window's length decides."""
    def keep(entry: dict, key: str) -> bool:
        return key not in TIMING_KEYS and not (key in WINDOW_KEYS and HIDE in entry.get("schedules", {}))

    def strip(e: dict) -> dict:
        out = {k: v for k, v in e.items() if keep(e, k)}
        if "by_question_type" in out:  # speedups are timings; τ is the window's where hide ran
            hide = HIDE in e.get("schedules", {})
            out["by_question_type"] = {q: {k: v for k, v in d.items() if k != "speedup_median"
                                           and not (hide and k == "tau_mean")}
                                       for q, d in out["by_question_type"].items()}
        return out

    rest = {k: v for k, v in summary.items() if k != "environment"}  # when and where it ran
    return {**rest, "modes": {m: strip(e) for m, e in summary["modes"].items()}}


def _num(v, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "-" if v is None else format(v * scale, spec) + unit


def format_summary(summary: dict) -> str:
    lines = [f"{summary['samples']} samples, {summary['rows']} rows, {summary['errors']} errors",
             f"{'mode':14} {'rows':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'ttft ms':>8} {'tpot ms':>8} "
             f"{'τ':>6} {'tok/s':>7} {'vs target':>10} {'p10':>6} {'worst':>6} {'identical':>9} {'accuracy':>8}"]
    for mode, e in summary["modes"].items():
        if "latency_s" not in e:
            lines.append(f"{mode:14} {e['rows']:5d}  (no row ran)")
            continue
        sp, lat = e.get("speedup_vs_target_only", {}), e["latency_s"]
        lines.append(
            f"{mode:14} {e['rows']:5d} {_num(lat['p50'], '.1f', 1e3):>8} {_num(lat['p90'], '.1f', 1e3):>8} "
            f"{_num(lat['p99'], '.1f', 1e3):>8} {_num(e.get('ttft_s', {}).get('p50'), '.1f', 1e3):>8} "
            f"{_num(e.get('tpot_s', {}).get('p50'), '.2f', 1e3):>8} {e['tau']['mean']:6.2f} {e['tokens_per_s']:7.1f} "
            f"{_num(sp.get('median'), '.2f', unit='x'):>10} {_num(sp.get('p10'), '.2f', unit='x'):>6} "
            f"{_num(sp.get('worst'), '.2f', unit='x'):>6} {_num(e.get('identical_rate'), '.2f'):>9} "
            f"{_num(e.get('accuracy'), '.2f'):>8}")
    lines.append("what ran (each sample's modes in a rotated order, after one warm-up per mode): ")
    for mode, e in summary["modes"].items():
        ok = e["rows"] - e["errors"]
        ran = ", ".join(f"{sched} on {n}/{ok}" + (f" ({e['why'][sched]})" if e.get("why", {}).get(sched) and
                                                  (sched != mode or mode == "auto") else "")
                        for sched, n in e.get("schedules", {}).items())
        hidden = ""
        if "draft_tokens_in_window" in e:
            hidden = f"; draft tokens in the window {e['draft_tokens_in_window']:.1f}"
            if "prefill_slowdown" in e:
                hidden += f", target prefill {e['prefill_slowdown']:.2f}x its time alone"
        lines.append(f"  {mode}: {ran or 'nothing'}; ran first on {e['ran_first']}{hidden}")
    return "\n".join(lines)


def summary_png(rows: list[dict], modes: list[str], path: Path, summary: dict | None = None) -> Path | None:
    """Four panels: latency CDF per mode, τ per request (histogram), acceptance at each draft depth
    (per-position acceptance) and the median speedup per question type; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    summary = summary or summarize(rows, modes)
    fig, ((a, b), (c, d)) = plt.subplots(2, 2, figsize=(12, 8))
    for mode in modes:
        ok = [r for r in rows if r["mode"] == mode and "error" not in r]
        lat = sorted(r["stats"]["wall_s"] * 1e3 for r in ok)
        if not lat:
            continue
        a.step(lat, [(i + 1) / len(lat) for i in range(len(lat))], where="post", label=mode)
        if mode != TARGET_ONLY:
            b.hist([r["stats"]["accepted_per_verify"] for r in ok], bins=20, alpha=0.5, label=mode)
        depth = summary["modes"].get(mode, {}).get("acceptance_by_depth", {})
        if depth:
            c.plot([int(k) for k in depth], list(depth.values()), marker="o", label=mode)
    kinds = {m: e.get("by_question_type", {}) for m, e in summary["modes"].items() if m != TARGET_ONLY}
    types = sorted({q for k in kinds.values() for q in k})
    width = 0.8 / max(1, len(kinds))
    for j, (mode, k) in enumerate(kinds.items()):
        vals = [k.get(q, {}).get("speedup_median", 0.0) for q in types]
        if any(vals):
            d.bar([i + j * width for i in range(len(types))], vals, width=width, label=mode)
    d.set_xticks([i + 0.4 - width / 2 for i in range(len(types))], types, rotation=20, ha="right", fontsize=8)
    d.axhline(1.0, color="grey", lw=0.8)
    a.set(xlabel="latency (ms)", ylabel="share of requests", title="latency CDF")
    b.set(xlabel="τ (tokens per verify)", ylabel="requests", title="τ per request")
    c.set(xlabel="draft depth", ylabel="accepted share of trees reaching it", title="acceptance by depth", ylim=(0, 1.05))
    d.set(ylabel="median speedup vs target-only", title="speedup per question type")
    for ax in (a, b, c, d):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
