"""Rebuild the bundled toy pair (`phide/toy/bundled/`, see phide.toy.bundle), through the same
commands a user runs (`phide.toy.train`, `phide distill`).

    phide/toy/bundled/tokenizer   the toy world's tokenizer (HF format)
    phide/toy/bundled/target      Video-LLaVA-format target + eagle_head/ (the continuation head,
                                  EAGLE-3 in SGLang's layout) + tree_shape.json
    phide/toy/bundled/clip        the draft's CLIP tower
    phide/toy/bundled/draft       EventGPT-format draft + draft_adapter.* (strategy B adapter)

Rebuild (fixed seeds; about 2.5 hours on 2 free CPU cores, most of it the target):

    python -m phide.rebuild_toy_pair OUT_DIR [--install]
    python -m phide.rebuild_toy_pair OUT_DIR --from-bundled [--install]   # the head and adapter only (~40 min)

runs, in order (each step is a `phide.toy.train` / `phide distill` command, logged as it runs):
  1. write the random `demo` pair with shallow language models (`--train-layers`, 4: on 2 cores a
     32-layer LM trains ~8x slower per step, and reading the frames takes thousands of steps);
     unit-scale text embeddings, visual outputs scaled down (`phide.toy.pair`);
  2. target (`TARGET_STAGES`): text only first (no visual tokens: templates and copying from the
     question), then frames + question with answer loss + renderer-supervised losses
     (`phide.toy.supervision`: per patch and per scene; `phide.toy.look`: attention), at a
     lower learning rate and on more scenes as it goes; held-out exact-match logged throughout;
  3. draft (`DRAFT_STAGES`), the same on events;
  4. grow both language models to the preset's 32 layers, function-preserving (`phide.toy.grow`:
     the new layers do full work but start as identities), then `--finetune-steps` at full depth;
  5. export paired distillation data (`phide.io.paired` layout; `--distill-scenes`, all their
     questions) and ONE `phide distill --draft` (`DISTILL_ARGS`): the target answers every sample,
     offline features are written once, the EAGLE-3 head trains over its own steps and the draft
     adapter from the same files; the head goes to target/eagle_head/, the adapter to draft/.
--from-bundled skips 1-4: the committed language models (and towers) are copied into OUT_DIR, their
head and adapter left out. --install copies OUT_DIR over phide/toy/bundled/. The committed pair's
LMs were trained stage by stage while the recipe was being found (the per-patch row/column
losses joined at the target's third stage); the stages above are that run. CPU training is
deterministic up to floating-point reduction order, so a rebuild gives a pair of the same
quality, not the same bits.

"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from phide.toy.bundle import (BUNDLED, DISTILL_ARGS, DRAFT_STAGES, PARTS, TARGET_STAGES, TRAIN_SEED, TREE_SHAPE,
                              export_distill_data)


def _copy_bundled_lms(out: Path) -> None:
    """The committed pair without its head and adapter (what steps 1-4 would rebuild)."""
    from phide.models.draft_adapter import CONFIG as ADAPTER_CONFIG, WEIGHTS as ADAPTER_WEIGHTS
    from phide.models.eagle import CONFIG as HEAD_CONFIG, WEIGHTS as HEAD_WEIGHTS
    from phide.models.heads import HEAD_SUBDIR

    skip = {HEAD_SUBDIR, HEAD_CONFIG, HEAD_WEIGHTS, ADAPTER_CONFIG, ADAPTER_WEIGHTS}
    for part in PARTS:
        shutil.rmtree(out / part, ignore_errors=True)
        shutil.copytree(BUNDLED / part, out / part, ignore=lambda d, names: [n for n in names if n in skip])


def main(argv: list[str] | None = None) -> int:
    from phide.cli import main as phide_main
    from phide.models.heads import HEAD_SUBDIR
    from phide.toy.grow import grow_decoder
    from phide.toy.pair import SIZES
    from phide.toy.train import main as train_main

    ap = argparse.ArgumentParser(prog="python -m phide.rebuild_toy_pair", description="rebuild the bundled toy pair")
    ap.add_argument("out_dir")
    ap.add_argument("--train-layers", type=int, default=4, help="LM layers while training (then grown)")
    ap.add_argument("--finetune-steps", type=int, default=0, help="steps of each model after growing it")
    ap.add_argument("--distill-scenes", type=int, default=300)
    ap.add_argument("--skip-training", action="store_true", help="OUT_DIR already holds the trained pair")
    ap.add_argument("--from-bundled", action="store_true", help="reuse the committed LMs: rebuild the head and adapter")
    ap.add_argument("--install", action="store_true", help=f"copy the result over {BUNDLED}")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_bundled:
        _copy_bundled_lms(out)
    elif not args.skip_training:
        common = [str(out), "--size", "demo", "--seed", str(TRAIN_SEED), "--log-every", "50",
                  "--lm-layers", str(args.train_layers), "--held-out", "96"]
        for part, stages in (("target", TARGET_STAGES), ("draft", DRAFT_STAGES)):
            for stage in stages:
                train_main(common + ["--only", part, *stage])
        depth = SIZES["demo"]["target"]["text_layers"]
        for part in ("target", "draft"):
            old = grow_decoder(out / part, depth)
            print(f"phide: grew the {part} LM from {old} to {depth} layers", file=sys.stderr)
        if args.finetune_steps:
            train_main(common + ["--target-steps", str(args.finetune_steps), "--draft-steps",
                                 str(args.finetune_steps), "--lr", "3e-4"])
    data = out / "distill-data"
    if not (data / "samples.jsonl").is_file():
        n = export_distill_data(data, args.distill_scenes)
        print(f"phide: wrote {n} paired samples to {data}", file=sys.stderr)
    run = out / "distilled"
    distill = ["distill", "--target", str(out / "target"), "--draft", str(out / "draft"), "--data", str(data),
               "--out", str(run), "--features", str(out / "distill-features"), *DISTILL_ARGS]
    if (run / "distill.json").is_file():
        distill.append("--resume")
    rc = phide_main(distill)
    if rc:
        return rc
    head = out / "target" / HEAD_SUBDIR
    shutil.rmtree(head, ignore_errors=True)
    head.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(run / name, head / name)
    (out / "target" / "tree_shape.json").write_text(json.dumps(TREE_SHAPE, indent=2))  # session.TREE_SHAPE_FILE
    for f in run.glob("draft_adapter.*"):
        shutil.copy2(f, out / "draft" / f.name)
    if args.install:
        for part in PARTS:
            shutil.rmtree(BUNDLED / part, ignore_errors=True)
            shutil.copytree(out / part, BUNDLED / part)
        print(f"phide: installed the pair in {BUNDLED}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
