"""`phide demo`: the bundled toy pair (a Video-LLaVA-format target watching RGB frames, an
EventGPT-format draft watching events, both trained here; `phide.toy.bundle`) on a few held-out
scenes, in every mode, compared.

Prints per scene the question, the target's answer (scored against the scene), what the draft
alone would have said, and per mode what ran, the tokens emitted per verify (τ), draft tokens made
inside the target's prefill, wall time and speedup over target-only; then writes the timeline (PNG
and Chrome trace) of one hide request. The first run on a machine calibrates the planner (saved,
so `phide generate` on the bundled pair plans from it too). `--json`: one object (the contract's
text/token_ids/stats of the first `auto` request, plus "modes", "scenes", "accuracy" and the
timeline paths).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from phide.schedules import HIDE, TARGET_ONLY
from phide.errors import PhideError


def _mark(ok: bool) -> str:
    return "ok" if ok else "WRONG"


def run_demo(args) -> int:
    import torch

    from phide.runtime.trace import timeline_png, write_chrome_trace
    from phide.tools.bench import (DEMO_CONFIGS, accuracy, eval_samples, load_configs, run_scenes, summarize,
                                   toy_request)

    torch.manual_seed(0)
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PhideError(f"cannot create {out_dir}: {exc.strerror}") from None
    names = list(DEMO_CONFIGS)
    configs = load_configs(names, log=lambda msg: print(f"phide: demo: {msg}", file=sys.stderr, flush=True))
    samples = eval_samples(args.scenes)
    rows = run_scenes(configs, samples, max_new_tokens=args.max_new_tokens)
    summary, acc = summarize(rows, names), accuracy(rows)

    # The picture: one hide request (the draft lane inside the target's prefill).
    session, _ = configs[HIDE]
    shown = session.generate(toy_request(rows[0]["sample"], args.max_new_tokens), HIDE)
    trace = write_chrome_trace(shown.timeline, out_dir / "trace.json", metadata={"stats": shown.stats})
    lanes = shown.stats.get("window_lanes", "")
    try:
        png = timeline_png(shown.timeline, out_dir / "timeline.png",
                           title=f"phide hide ({lanes}): {rows[0]['sample'].question}")
    except ImportError:
        png = None  # matplotlib missing: the trace JSON still shows the lanes

    if args.json:
        first = rows[0]["results"]["auto"]
        scenes = [{"question": r["sample"].question, "answer": r["text"], "score": r["score"],
                   "draft_alone": r.get("draft_text"), "draft_score": r.get("draft_score"),
                   "modes": {m: {"ran": r["results"][m].stats["plan"]["schedule"],
                                 **{k: r["results"][m].stats[k] for k in
                                    ("wall_s", "accepted_per_verify", "draft_tokens_in_window", "target_forwards")}}
                             for m in names}} for r in rows]
        print(json.dumps({"text": rows[0]["text"], "token_ids": first.token_ids, "stats": first.stats,
                          "modes": summary, "scenes": scenes, "accuracy": acc,
                          "trace": str(trace), "timeline_png": str(png) if png else None}))
        return 0

    for n, r in enumerate(rows, 1):
        sc = r["score"]
        print(f"[{n}] {r['sample'].question}")
        print(f"    target:      {r['text']}  (motion {_mark(sc['motion'])}, colour {_mark(sc['colour'])})")
        if "draft_text" in r:
            ds = r["draft_score"]
            print(f"    draft alone: {r['draft_text']}  (motion {_mark(ds['motion'])}, colour {_mark(ds['colour'])})")
        print(f"    {'mode (what ran)':24} {'τ':>5} {'window':>6} {'wall ms':>8} {'speedup':>7}")
        base = r["results"][TARGET_ONLY].stats["wall_s"]
        for m in names:
            st = r["results"][m].stats
            ran = st["plan"]["schedule"]
            label = m if ran == m else f"{m} ({ran})"
            print(f"    {label:24} {st['accepted_per_verify']:>5.2f} {st['draft_tokens_in_window']:>6} "
                  f"{st['wall_s'] * 1e3:>8.1f} {base / st['wall_s']:>6.2f}x")
        print()
    med = {m: summary[m]["median_wall_s"] * 1e3 for m in names}
    print(f"median over {len(rows)} scenes: " + ", ".join(f"{summary[m]['ran']} {med[m]:.0f} ms" for m in names))
    for m in names[1:]:
        print(f"  {summary[m]['ran']}: {summary[m]['speedup_vs_target-only']:.2f}x target-only (median per scene)")
    same = all(e["identical_scenes"] == len(rows) for e in summary.values())
    print(f"tokens identical to target-only in every mode on {len(rows)} scenes: {'yes' if same else 'NO'}; "
          f"target correct on {acc['target_correct']:.0%}, the draft alone right on motion "
          f"{acc.get('draft_motion', 0):.0%} and on colour {acc.get('draft_colour', 0):.0%}")
    print(f"timeline of a hide request: {png or '(no matplotlib)'} and {trace}", file=sys.stderr)
    if not same:
        raise PhideError("a mode's tokens differ from target-only's: this is a bug")
    return 0
