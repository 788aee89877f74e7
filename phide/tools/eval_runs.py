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
import os
import statistics
import sys
from pathlib import Path

from phide.errors import PhideError
from phide.io import rows as rows_file
from phide.io.rows import open_run_dir

RESULTS, SUMMARY, RUN, PNG = "results.jsonl", "summary.json", "run.json", "summary.png"
# Summary keys that are timings (they differ between two runs of the same rows).
TIMING_KEYS = ("latency_s", "first_token_s", "tokens_per_s", "speedup_vs_target_only")


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
            "window_budget")


def run_identity(args, modes: list[str]) -> dict:
    ident = {k: str(Path(getattr(args, k)).resolve()) if getattr(args, k, None) else None for k in RUN_PATHS}
    ident.update({k: getattr(args, k, None) for k in RUN_ARGS})
    ident["modes"] = modes
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


def paired_items(data_dir) -> list[dict]:
    """A paired directory's samples as work items: {"sample" (id), "question", "video", "events",
    "answer" (or None)}, with the files checked (phide.io.paired)."""
    from phide.io.paired import read_paired_dir

    return [{"sample": sample_id(i, s.extra), "question": s.question, "video": str(s.video), "events": str(s.events),
             "answer": s.extra.get("answer")} for i, s in enumerate(read_paired_dir(data_dir))]


def item_request(item: dict, request: dict):
    """The request of a work item (`request`: max_new_tokens, temperature, seed): the sample's
    files, read by the frontends as `phide generate --video --events` reads them."""
    from phide.engine import Request

    return Request(prompt=item["question"], video=item["video"], events=item["events"], **request)


def run_item(session, item: dict, request: dict):
    """The rows of one work item: its sample under each of its modes (a sample with bad input
    gives error rows; the run goes on)."""
    req = item_request(item, request)
    for mode in item["modes"]:
        try:
            result = session.generate(req, mode)
            yield {"sample": item["sample"], "mode": mode, "question": item["question"],
                   "text": session.decode(result.token_ids), "token_ids": result.token_ids, "stats": result.stats}
        except PhideError as exc:
            yield {"sample": item["sample"], "mode": mode, "error": str(exc)}


def run_serial(items: list[dict], request: dict, load_session):
    session = load_session()
    for item in items:
        yield from run_item(session, item, request)


def run_eval(args, load_session) -> int:
    """`load_session()`: the session the pair arguments describe (the CLI's loader), called only
    when rows remain to run (with --ray, once per worker)."""
    from phide.modes import MODES

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise PhideError(f"unknown mode {bad[0] if bad else '(none)'!r} in --modes (choose from {', '.join(MODES)})")
    samples = paired_items(args.data)[: args.limit or None]
    ids = [s["sample"] for s in samples]
    if len(set(ids)) != len(ids):
        raise PhideError(f"{args.data}: sample ids repeat (\"id\" keys in samples.jsonl must be unique)")
    if getattr(args, "ray", None):
        from phide.tools.eval_ray import connect

        connect(args.ray)  # before RUN_DIR is made: an unreachable cluster leaves nothing to resume
    out = Path(args.out)
    run = run_identity(args, modes)
    rows = _open_run(out, run, args.resume)
    done = {(r["sample"], r["mode"]) for r in rows}
    # One work item per sample: its modes still missing (a sample's rows run on one engine, so its
    # speedups compare runs on one machine).
    items = [{**s, "modes": [m for m in modes if (s["sample"], m) not in done]} for s in samples]
    items = [it for it in items if it["modes"]]
    request = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed}
    if items:
        with RowWriter(out / RESULTS, done) as write, _progress(len(ids) * len(modes), len(done),
                                                                quiet=args.json) as bar:
            if getattr(args, "ray", None):
                from phide.tools.eval_ray import run_on_ray

                rows_out = run_on_ray(args.ray, items, request, load_session, run_item, workers=args.workers)
            else:
                rows_out = run_serial(items, request, load_session)
            for row in rows_out:
                if write(row):
                    bar.update(1)
    rows = read_rows(out / RESULTS)
    references = {s["sample"]: s["answer"] for s in samples}
    summary = summarize(rows, modes, references)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2))
    png = summary_png(rows, modes, out / PNG)
    if args.json:
        print(json.dumps({"run_dir": str(out), "summary": summary, "png": str(png) if png else None}))
    else:
        print(format_summary(summary))
        print(f"phide: eval: wrote {out / RESULTS}, {out / SUMMARY}" + (f", {png}" if png else ""), file=sys.stderr)
    return 1 if summary["errors"] else 0


def _progress(total: int, initial: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="row", desc="phide eval", disable=quiet, file=sys.stderr,
                dynamic_ncols=True)


# ----------------------------------------------------------------------------------- the summary
def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def _acceptance_by_depth(rows: list[dict]) -> dict[str, float]:
    """Per draft depth d: of the verified trees that reached depth d, the share whose accepted path
    did too."""
    from phide.engine import acceptance_by_depth

    return acceptance_by_depth(r["stats"] for r in rows)


def summarize(rows: list[dict], modes: list[str], references: dict | None = None) -> dict:
    """Per mode: rows and errors, latency (median, p25, p75, p95), time to first token, τ, acceptance
    by draft depth, speedup vs target-only per sample (median, worst), identical-token rate vs
    target-only, tokens/s and, where samples carry reference answers, exact-match accuracy."""
    by = {(r["sample"], r["mode"]): r for r in rows}
    samples = sorted({r["sample"] for r in rows}, key=lambda x: (len(x), x))
    out = {"samples": len(samples), "rows": len(rows), "errors": sum("error" in r for r in rows), "modes": {}}
    for mode in modes:
        ok = [by[(s, mode)] for s in samples if (s, mode) in by and "error" not in by[(s, mode)]]
        entry = {"rows": sum((s, mode) in by for s in samples), "errors": sum("error" in by.get((s, mode), {})
                                                                               for s in samples)}
        if ok:
            lat = [r["stats"]["wall_s"] for r in ok]
            entry["latency_s"] = {"median": round(statistics.median(lat), 4), "p25": round(_pct(lat, 25), 4),
                                  "p75": round(_pct(lat, 75), 4), "p95": round(_pct(lat, 95), 4)}
            ttft = [r["stats"]["first_token_s"] for r in ok if "first_token_s" in r["stats"]]
            if ttft:
                entry["first_token_s"] = {"median": round(statistics.median(ttft), 4)}
            tokens = sum(r["stats"]["new_tokens"] for r in ok)
            verifies = sum(r["stats"]["verifies"] for r in ok)
            entry["tau"] = round(tokens / max(verifies, 1), 4)  # tokens emitted per verify, pooled
            entry["new_tokens"] = tokens
            entry["tokens_per_s"] = round(tokens / sum(lat), 3)
            entry["acceptance_by_depth"] = _acceptance_by_depth(ok)
            entry["schedules"] = dict(sorted(_count(r["stats"]["plan"]["schedule"] for r in ok).items()))
            ref = [(r, by.get((r["sample"], "target-only"))) for r in ok]
            ref = [(r, t) for r, t in ref if t is not None and "error" not in t]
            if ref and mode != "target-only":
                speed = [t["stats"]["wall_s"] / r["stats"]["wall_s"] for r, t in ref]
                entry["speedup_vs_target_only"] = {"median": round(statistics.median(speed), 3),
                                                   "worst": round(min(speed), 3)}
            if ref:
                entry["identical_rate"] = round(sum(r["token_ids"] == t["token_ids"] for r, t in ref) / len(ref), 4)
            answered = [(r, (references or {}).get(r["sample"])) for r in ok]
            answered = [(r, a) for r, a in answered if a is not None]
            if answered:
                entry["accuracy"] = round(sum(r["text"].strip() == str(a).strip() for r, a in answered)
                                          / len(answered), 4)
        out["modes"][mode] = entry
    return out


def _count(items) -> dict:
    counts: dict = {}
    for x in items:
        counts[x] = counts.get(x, 0) + 1
    return counts


# Of rows that ran the hide schedule, acceptance depends on a timing too: how much of the first
# tree the draft grew before the target's prefill ended.
WINDOW_KEYS = ("tau", "acceptance_by_depth")


def without_timings(summary: dict) -> dict:
    """The summary less what differs between two runs of the same samples: timings, and where
    rows ran the hide schedule, the acceptance the window's length decides."""
    def keep(entry: dict, key: str) -> bool:
        return key not in TIMING_KEYS and not (key in WINDOW_KEYS and "hide" in entry.get("schedules", {}))

    return {**summary, "modes": {m: {k: v for k, v in e.items() if keep(e, k)} for m, e in summary["modes"].items()}}


def _num(v, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "-" if v is None else format(v * scale, spec) + unit


def format_summary(summary: dict) -> str:
    lines = [f"{summary['samples']} samples, {summary['rows']} rows, {summary['errors']} errors",
             f"{'mode':14} {'rows':>5} {'median ms':>10} {'p95 ms':>8} {'ttft ms':>8} {'τ':>6} {'tok/s':>7} "
             f"{'vs target':>10} {'worst':>7} {'identical':>9} {'accuracy':>8}"]
    for mode, e in summary["modes"].items():
        if "latency_s" not in e:
            lines.append(f"{mode:14} {e['rows']:5d}  (no row ran)")
            continue
        sp = e.get("speedup_vs_target_only", {})
        lines.append(
            f"{mode:14} {e['rows']:5d} {_num(e['latency_s']['median'], '.1f', 1e3):>10} "
            f"{_num(e['latency_s']['p95'], '.1f', 1e3):>8} {_num(e.get('first_token_s', {}).get('median'), '.1f', 1e3):>8} "
            f"{e['tau']:6.2f} {e['tokens_per_s']:7.1f} {_num(sp.get('median'), '.2f', unit='x'):>10} "
            f"{_num(sp.get('worst'), '.2f', unit='x'):>7} {_num(e.get('identical_rate'), '.2f'):>9} "
            f"{_num(e.get('accuracy'), '.2f'):>8}")
    return "\n".join(lines)


def summary_png(rows: list[dict], modes: list[str], path: Path) -> Path | None:
    """Latency CDF per mode and the τ histogram (per request); None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in modes:
        lat = sorted(r["stats"]["wall_s"] * 1e3 for r in rows if r["mode"] == mode and "error" not in r)
        if lat:
            a.step(lat, [(i + 1) / len(lat) for i in range(len(lat))], where="post", label=mode)
            taus = [r["stats"]["accepted_per_verify"] for r in rows if r["mode"] == mode and "error" not in r]
            if mode != "target-only":
                b.hist(taus, bins=20, alpha=0.5, label=mode)
    a.set(xlabel="latency (ms)", ylabel="share of requests", title="latency CDF")
    b.set(xlabel="τ (tokens per verify)", ylabel="requests", title="τ per request")
    for ax in (a, b):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
