"""The bundled, trained toy pair (`phide/toy/bundled/`) and the command that rebuilds it.

    phide/toy/bundled/tokenizer   the toy world's tokenizer (HF format)
    phide/toy/bundled/target      Video-LLaVA-format target + eagle_head.* (the continuation head)
    phide/toy/bundled/clip        the draft's CLIP tower
    phide/toy/bundled/draft       EventGPT-format draft + draft_adapter.* (strategy B adapter)

Rebuild (fixed seeds; about an hour on 2 CPU cores, most of it the target):

    python -m phide.toy.bundle OUT_DIR [--install]

runs, in order (each step is a `phide.toy.train` / `phide distill` command, logged as it runs):
  1. write the random `demo` pair (unit-scale text embeddings, visual outputs scaled down:
     `phide.toy.pair`);
  2. target, curriculum stage 1: text only (no visual tokens), 300 steps: templates and copying
     from the question;
  3. target, stage 2: frames + question, answer loss + renderer-supervised patch losses
     (`phide.toy.supervision`), the first `--target-stop` steps of a `--target-steps` schedule;
  4. draft, the same two stages on events;
  5. export paired distillation data (`phide.paired` layout) and `phide distill --data` (EAGLE
     head + draft adapter), copied into the model directories.
--install copies OUT_DIR over phide/toy/bundled/. CPU training is deterministic up to
floating-point reduction order, so a rebuild gives a pair of the same quality, not the same bits.

Scene seeds: training uses world seed 0, distillation data seed 1, the demo and bench seed 2
(`EVAL_SEED`), so the demo's scenes were never trained on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from phide.errors import PhideError

BUNDLED = Path(__file__).resolve().parent / "bundled"
TRAIN_SEED, DISTILL_SEED, EVAL_SEED = 0, 1, 2
PARTS = ("tokenizer", "target", "clip", "draft")


def bundled_dir() -> Path:
    """The bundled pair's directory ($PHIDE_TOY_PAIR overrides it, e.g. with a pair being
    rebuilt or the tests' tiny one); a clear error when the checkpoints are missing."""
    root = Path(os.environ.get("PHIDE_TOY_PAIR") or BUNDLED)
    if not (root / "target" / "config.json").is_file() or not (root / "draft" / "config.json").is_file():
        raise PhideError(f"the toy pair is missing from {root}; rebuild it with "
                         f"`python -m phide.toy.bundle OUT --install`")
    return root


def export_distill_data(out_dir, scenes: int, seed: int = DISTILL_SEED) -> int:
    """Write `scenes` toy scenes (all their questions) as a paired-sample directory."""
    from phide.paired import write_paired_dir
    from phide.toy.world import make_dataset

    samples = make_dataset(scenes, seed=seed, questions_per_scene=None)
    by_scene: dict[int, list] = {}
    for s in samples:
        by_scene.setdefault(id(s._sensors), []).append(s)
    clips = ((group[0].frames, group[0].events, [s.question for s in group], {}) for group in by_scene.values())
    return write_paired_dir(out_dir, clips)


def main(argv: list[str] | None = None) -> int:
    from phide.cli import main as phide_main
    from phide.toy.train import main as train_main

    ap = argparse.ArgumentParser(prog="python -m phide.toy.bundle", description="rebuild the bundled toy pair")
    ap.add_argument("out_dir")
    ap.add_argument("--text-steps", type=int, default=300, help="stage 1 steps (target); the draft gets 2/3")
    ap.add_argument("--target-steps", type=int, default=1000, help="stage 2 schedule length (target)")
    ap.add_argument("--target-stop", type=int, default=200, help="end stage 2 after this many steps (0: all)")
    ap.add_argument("--draft-steps", type=int, default=300, help="stage 2 steps (draft)")
    ap.add_argument("--train-scenes", type=int, default=800)
    ap.add_argument("--distill-scenes", type=int, default=60)
    ap.add_argument("--head-steps", type=int, default=800)
    ap.add_argument("--adapter-steps", type=int, default=400)
    ap.add_argument("--skip-training", action="store_true", help="OUT_DIR already holds the trained pair")
    ap.add_argument("--install", action="store_true", help=f"copy the result over {BUNDLED}")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    if not args.skip_training:
        common = [str(out), "--size", "demo", "--scenes", str(args.train_scenes), "--seed", str(TRAIN_SEED),
                  "--log-every", "50"]
        train_main(common + ["--only", "target", "--text-only", "--target-steps", str(args.text_steps)])
        train_main(common + ["--only", "target", "--target-steps", str(args.target_steps),
                             "--stop-at", str(args.target_stop)])
        train_main(common + ["--only", "draft", "--text-only", "--draft-steps", str(2 * args.text_steps // 3)])
        train_main(common + ["--only", "draft", "--draft-steps", str(args.draft_steps)])
    n = export_distill_data(out / "distill-data", args.distill_scenes)
    print(f"phide: wrote {n} paired samples to {out / 'distill-data'}", file=sys.stderr)
    rc = phide_main(["distill", "--target", str(out / "target"), "--draft", str(out / "draft"),
                     "--data", str(out / "distill-data"), "--out", str(out / "distilled"),
                     "--steps", str(args.head_steps), "--adapter-steps", str(args.adapter_steps)])
    if rc:
        return rc
    for f in (out / "distilled").glob("eagle_head.*"):
        shutil.copy2(f, out / "target" / f.name)
    for f in (out / "distilled").glob("draft_adapter.*"):
        shutil.copy2(f, out / "draft" / f.name)
    if args.install:
        for part in PARTS:
            shutil.rmtree(BUNDLED / part, ignore_errors=True)
            shutil.copytree(out / part, BUNDLED / part)
        print(f"phide: installed the pair in {BUNDLED}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
