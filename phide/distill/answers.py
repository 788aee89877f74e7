"""Stage 1 of `phide distill`: every sample answered by the target alone (greedy, the engine's own
target-only path), appended to OUT/answers.jsonl as it completes.

    {"sample": id, "question": str, "token_ids": [int], "text": str, "rank": r}

Rows are fsynced one by one (phide.io.rows), so a kill loses at most the answer in flight and a
resumed run answers only the missing samples. Under torchrun each rank answers its share of the
samples (every world-th, from its rank) into OUT/answers.rank{r}.jsonl; rank 0 then merges them
into answers.jsonl in the samples' order, each sample once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from phide.distill import dist
from phide.io.rows import RowWriter, read_rows

ANSWERS = "answers.jsonl"
REQUIRED = ("sample", "token_ids")


def rank_file(out: Path, rank: int) -> Path:
    return out / f"answers.rank{rank}.jsonl"


def read_answers(out: Path) -> dict[str, dict]:
    """Every answer written so far under `out` (the merged file and any rank's), by sample."""
    rows: dict[str, dict] = {}
    for path in [out / ANSWERS, *sorted(out.glob("answers.rank*.jsonl"))]:
        for row in read_rows(path, REQUIRED, what="answer row"):
            rows.setdefault(str(row["sample"]), row)
    return rows


def answer_samples(generate: Callable[[dict], tuple[list[int], str]], items: list[dict], out: Path, *,
                   quiet: bool = False) -> dict[str, dict]:
    """Answer the items this rank owns that have no answer yet; returns every item's answer (all
    ranks', after the merge). generate(item) -> (token ids, text): the target alone."""
    from tqdm import tqdm

    rank, world = dist.rank(), dist.world_size()
    done = read_answers(out)
    mine = [it for i, it in enumerate(items) if i % world == rank and str(it["sample"]) not in done]
    path = out / ANSWERS if world == 1 else rank_file(out, rank)
    bar = tqdm(total=len(mine), unit="sample", desc=f"phide distill: target answers (rank {rank})" if world > 1
               else "phide distill: target answers", disable=quiet or not mine, file=sys.stderr, dynamic_ncols=True)
    with RowWriter(path, lambda row: str(row["sample"]), done) as write, bar:
        for it in mine:
            ids, text = generate(it)
            write({"sample": str(it["sample"]), "question": it.get("question"), "token_ids": ids, "text": text,
                   "rank": rank})
            bar.update()
    dist.barrier()
    if dist.is_main():
        merge_answers(out, items)
    dist.barrier()
    return read_answers(out)


def merge_answers(out: Path, items: list[dict]) -> None:
    """Write answers.jsonl with every sample's answer once, in the items' order (synced, then
    renamed over the old file), and drop the rank files it came from."""
    import json

    rows = read_answers(out)
    order = [str(it["sample"]) for it in items if str(it["sample"]) in rows]
    order += sorted(set(rows) - set(order))  # answers of samples no longer listed are kept
    tmp = out / (ANSWERS + ".tmp")
    with open(tmp, "w") as f:
        for s in order:
            f.write(json.dumps(rows[s]) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / ANSWERS)
    for p in out.glob("answers.rank*.jsonl"):
        p.unlink()
