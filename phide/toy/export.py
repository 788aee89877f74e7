"""Export toy-world scenes as a paired directory, for `phide eval` (or `phide distill`).

    python -m phide.toy.export OUT [--scenes 50] [--seed eval|distill|calibration|N]

Default: held-out scenes (EVAL_SEED, never trained, distilled or calibrated on), one question each,
with the reference answer in each manifest line ("answer": what `phide eval` scores accuracy on,
as exact match).
"""

from __future__ import annotations

import argparse
import sys

from phide.errors import PhideError


def export_scenes(out_dir, scenes: int, seed: int) -> int:
    """`scenes` scenes from world seed `seed`, one question each, with their reference answers."""
    from phide.io.paired import write_paired_dir
    from phide.toy.world import make_dataset

    samples = make_dataset(scenes, seed=seed, questions_per_scene=1)
    return write_paired_dir(out_dir, ((s.frames, s.events, [s.question], {"answer": s.answer}) for s in samples))


def main(argv=None) -> int:
    from phide.toy import bundle

    seeds = {"eval": bundle.EVAL_SEED, "distill": bundle.DISTILL_SEED, "calibration": bundle.CALIBRATION_SEED}
    p = argparse.ArgumentParser(prog="python -m phide.toy.export", description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--scenes", type=int, default=50)
    p.add_argument("--seed", default="eval", help="eval (held out, default), distill, calibration, or an integer")
    args = p.parse_args(argv)
    try:
        seed = seeds[args.seed] if args.seed in seeds else int(args.seed)
        if args.scenes < 1:
            raise PhideError("--scenes must be positive")
        n = export_scenes(args.out, args.scenes, seed)
    except ValueError:
        print(f"phide: error: --seed {args.seed!r} is not eval, distill, calibration or an integer", file=sys.stderr)
        return 2
    except PhideError as exc:
        print(f"phide: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} samples to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
