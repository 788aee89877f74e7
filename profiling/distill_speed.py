"""Head training speed: the batched trainer vs the per-sample loop it replaced, in one run.

The per-sample loop is `phide.distill.head.train_eagle_head` as it was at 399dce9 (read from git,
run against today's models: its math is the EAGLE-2 head's, unchanged): every sample's features
held in memory, one sample's rollout at a time. The batched trainer (phide.distill.trainer) runs
the same head kind (EAGLE-2), the same batch (8 samples per step), the same unrolled steps (3),
on the same answered samples, with its features read from offline files (the same setting: the
old loop also had them ready) and, for reference, computed online by the frozen target.

Timing: the training steps only (the old loop's features are computed before its clock starts,
as the offline files are written before the new one's), each configuration once as a warm-up,
then `--repeats` rounds in rotated order; samples/s = steps x batch / seconds, the median round.

    python profiling/distill_speed.py RUN_DIR --data PAIRED_DIR [--target DIR] [--steps 20]

RUN_DIR: a `phide distill` run (its answers.jsonl). Rows: profiling/results/distill_speed.csv.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from phide.distill.answers import read_answers
from phide.distill.features import Entry, OfflineSource, OnlineSource, features_identity, open_features_dir, write_features
from phide.distill.head import HeadObjective, new_head
from phide.distill.trainer import TrainConfig, train
from phide.tools.benchlog import ROOT, append_csv, check_schema, run_context
from phide.tools.eval_runs import paired_items

OLD_COMMIT = "399dce9"
COLUMNS = ["device", "torch_version", "git_sha", "dirty", "timestamp", "config", "samples", "steps", "batch",
           "unrolled_steps", "median_s", "samples_per_s", "vs_per_sample_loop"]


def old_module():
    src = subprocess.run(["git", "show", f"{OLD_COMMIT}:phide/distill/head.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    mod = types.ModuleType("phide_old_distill_head")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, f"{OLD_COMMIT}:phide/distill/head.py", "exec"), mod.__dict__)
    return mod


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--data", required=True)
    ap.add_argument("--target", default=str(ROOT / "phide/toy/bundled/target"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--unrolled", type=int, default=3)
    ap.add_argument("--samples", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--csv", default=str(ROOT / "profiling/results/distill_speed.csv"))
    ap.add_argument("--allow-dirty", action="store_true")
    args = ap.parse_args(argv)
    check_schema(args.csv, COLUMNS)
    ctx = run_context()
    if ctx["dirty"] and not args.allow_dirty:
        raise SystemExit("uncommitted changes: commit first (or --allow-dirty)")
    from phide.session import load_session

    with contextlib.redirect_stderr(io.StringIO()):
        session = load_session(args.target, use_head=False, calibration=None)
    engine, target = session.engine, session.engine.target
    items = paired_items(args.data)
    answers = read_answers(Path(args.run_dir))
    entries = [Entry(i, it, answers[str(it["sample"])]["token_ids"]) for i, it in enumerate(items)
               if str(it["sample"]) in answers][: args.samples]
    online = OnlineSource(engine, None)
    tmp = Path(tempfile.mkdtemp(prefix="phide-speed-"))
    open_features_dir(tmp, features_identity(engine, None, False), create=True)
    write_features(online, entries, tmp, with_draft=False, quiet=True)
    offline = OfflineSource(tmp, None, target)

    old = old_module()
    seqs = []
    for e in entries:  # the old loop's in-memory data: sequence ids and spliced embeddings
        emb, P = online.sequence(e)
        seqs.append(old.Sequence(list(range(P)) + e.answer, emb.clone()))
    feats = {id(s): tuple(t.clone() for t in old.target_features(target, s)) for s in seqs}
    old.target_features = lambda _t, s: feats[id(s)]  # ready in memory before the clock starts

    def run_old(steps):
        torch.manual_seed(0)
        old.train_eagle_head(target, seqs, steps=steps, batch=args.batch, rollout=args.unrolled, log_every=0)

    def run_new(source, steps):
        torch.manual_seed(0)
        head = new_head("eagle2", target).float().train()
        obj = HeadObjective(head, source, target.lm_head.weight, ttt_steps=args.unrolled, noise=0.05)
        cfg = TrainConfig(steps=steps, batch=args.batch, micro_batch=args.batch, lr=3e-3, warmup=1)
        train(obj, head, entries, cfg, ckpt_dir=None, resume=False, quiet=True)

    configs = {"per-sample loop (399dce9, features in memory)": run_old,
               "batched (offline features)": lambda s: run_new(offline, s),
               "batched (online features)": lambda s: run_new(online, s)}
    names = list(configs)
    for name in names:  # warm-up
        configs[name](2)
    times = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            configs[name](args.steps)
            times[name].append(time.perf_counter() - t0)
    base = args.steps * args.batch / statistics.median(times[names[0]])
    rows = []
    for name in names:
        med = statistics.median(times[name])
        sps = args.steps * args.batch / med
        rows.append({**ctx, "config": name, "samples": len(entries), "steps": args.steps, "batch": args.batch,
                     "unrolled_steps": args.unrolled, "median_s": round(med, 3), "samples_per_s": round(sps, 2),
                     "vs_per_sample_loop": round(sps / base, 2)})
        print(f"{name:48} {med:7.2f} s  {sps:7.1f} samples/s  {sps / base:5.2f}x", flush=True)
    append_csv(args.csv, rows, COLUMNS, allow_dirty=args.allow_dirty)
    print(f"appended {len(rows)} rows to {args.csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
