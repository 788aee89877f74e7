"""The bundled, trained toy pair (`phide/toy/bundled/`): where it lives, the recipe's stages and
seeds, and its distillation data. `python -m phide.rebuild_toy_pair` rebuilds it.

    phide/toy/bundled/tokenizer   the toy world's tokenizer (HF format)
    phide/toy/bundled/target      Video-LLaVA-format target + eagle_head/ (the continuation head)
                                  + tree_shape.json (the tree shape the pair is run with)
    phide/toy/bundled/clip        the draft's CLIP tower
    phide/toy/bundled/draft       EventGPT-format draft + draft_adapter.* (strategy B adapter)

Scene seeds: training uses world seed 0, distillation data seed 1, the demo and bench seed 2
(`EVAL_SEED`), so the demo's scenes were never trained on; calibration uses seed 3
(`CALIBRATION_SEED`), never measured by the demo or the bench.
"""

from __future__ import annotations

import os
from pathlib import Path

from phide.errors import PhideError

BUNDLED = Path(__file__).resolve().parent / "bundled"
# The committed pair's training, stage by stage (`phide.toy.train` arguments after --only PART).
TARGET_STAGES = (
    ["--text-only", "--target-steps", "400", "--scenes", "800"],
    ["--target-steps", "2000", "--scenes", "800", "--checkpoint-every", "200"],
    ["--target-steps", "2000", "--lr", "1e-3", "--scenes", "800", "--checkpoint-every", "250"],
    ["--target-steps", "2500", "--lr", "1e-3", "--scenes", "2000", "--checkpoint-every", "250", "--stop-at", "0"],
    ["--target-steps", "2500", "--lr", "1e-3", "--scenes", "2000", "--checkpoint-every", "250"],
    ["--target-steps", "3000", "--lr", "7e-4", "--scenes", "5000", "--checkpoint-every", "250"],
)
DRAFT_STAGES = (
    ["--text-only", "--draft-steps", "266", "--scenes", "800"],
    ["--draft-steps", "1500", "--scenes", "800", "--checkpoint-every", "250"],
    ["--draft-steps", "2500", "--lr", "1e-3", "--scenes", "2000", "--checkpoint-every", "500"],
    ["--draft-steps", "2500", "--lr", "1e-3", "--scenes", "2000", "--checkpoint-every", "500", "--stop-at", "0"],
    ["--draft-steps", "3000", "--lr", "7e-4", "--scenes", "5000", "--checkpoint-every", "500"],
)
TRAIN_SEED, DISTILL_SEED, EVAL_SEED, CALIBRATION_SEED = 0, 1, 2, 3
# The head and the adapter: one `phide distill --draft --data D --features F` run with these
# (phide.rebuild_toy_pair; the measured comparison of the two head kinds is in docs/measured.md).
DISTILL_ARGS = ("--head-kind", "eagle3", "--max-new-tokens", "48", "--steps", "4500", "--batch", "8",
                "--ttt-steps", "7", "--validate-every", "1500", "--checkpoint-every", "500",
                "--adapter-steps", "400", "--adapter-batch", "16")
PARTS = ("tokenizer", "target", "clip", "draft")
# The tree shape the pair runs with (written as target/tree_shape.json): its answers are
# templated, so deeper round trees pay; the draft's first tree gets 8 levels (the same work in
# sequential and hide).
TREE_SHAPE = {"topk": 4, "depth": 10, "budget": 32, "window_depth": 8, "window_budget": 48}


def bundled_dir() -> Path:
    """The bundled pair's directory ($PHIDE_TOY_PAIR overrides it, e.g. with a pair being
    rebuilt or the tests' tiny one); a clear error when the checkpoints are missing."""
    root = Path(os.environ.get("PHIDE_TOY_PAIR") or BUNDLED)
    if not (root / "target" / "config.json").is_file() or not (root / "draft" / "config.json").is_file():
        raise PhideError(f"the toy pair is missing from {root}; rebuild it with "
                         f"`python -m phide.rebuild_toy_pair OUT --install`")
    return root


def export_distill_data(out_dir, scenes: int, seed: int = DISTILL_SEED) -> int:
    """Write `scenes` toy scenes (all their questions) as a paired-sample directory."""
    from phide.io.paired import write_paired_dir
    from phide.toy.world import make_dataset

    samples = make_dataset(scenes, seed=seed, questions_per_scene=None)
    by_scene: dict[int, list] = {}
    for s in samples:
        by_scene.setdefault(id(s._sensors), []).append(s)
    clips = ((group[0].frames, group[0].events, [s.question for s in group], {}) for group in by_scene.values())
    return write_paired_dir(out_dir, clips)
