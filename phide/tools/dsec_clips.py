"""`phide dsec-clips SEQUENCE_DIR... --out PAIRED_DIR --questions FILE`: DSEC sequences as a paired
directory that `phide eval` and `phide distill` read (phide.io.dsec cuts the clips)."""

from __future__ import annotations

import sys
from pathlib import Path

from phide.errors import PhideError


def read_questions(path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise PhideError(f"questions file not found: {p}")
    try:
        questions = [q.strip() for q in p.read_text().splitlines() if q.strip()]
    except UnicodeDecodeError as exc:
        raise PhideError(f"{p}: not a text file ({exc})") from None
    if not questions:
        raise PhideError(f"{p}: no questions (one per line)")
    return questions


def run_dsec_clips(args) -> int:
    import json

    from tqdm import tqdm

    import shutil

    from phide.io.dsec import check_clip_args, clip_span, cut_clips, read_sequence
    from phide.io.paired import write_paired_dir

    questions = read_questions(args.questions)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PhideError(f"{out} already holds files; choose another --out")
    check_clip_args(args.clip_ms, args.event_ms)
    sequences = [read_sequence(d) for d in args.sequences]  # every layout and frame checked first
    for seq in sequences:
        clip_span(seq, args.clip_ms)
    # Written beside the destination and renamed when complete: an error half-way leaves no
    # half-written data set behind.
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    skipped: list = []
    bar = tqdm(desc="phide dsec-clips", unit="clip", file=sys.stderr, disable=args.json)

    def clips():
        for seq in sequences:
            for clip in cut_clips(seq, args.clip_ms, args.event_ms, skipped=skipped):
                bar.update(1)
                yield clip.frames, clip.events, questions, {
                    "sequence": seq.root.name, "clip": clip.index, "t_start_us": clip.t_start_us,
                    "t_end_us": clip.t_end_us, "event_ms": args.event_ms}

    try:
        n = write_paired_dir(partial, clips())
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        bar.close()
    if out.exists():
        out.rmdir()  # empty (checked above)
    partial.rename(out)
    report = {"out": str(out), "samples": n, "clips": bar.n, "questions": len(questions),
              "skipped_clips": [{"clip": k, "why": why} for k, why in skipped]}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"wrote {n} samples ({bar.n} clips x {len(questions)} questions) to {out}"
              + (f"; skipped {len(skipped)} clips without frames or events" if skipped else ""))
    return 0
