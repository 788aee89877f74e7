"""End-to-end benchmark: every mode on the same prompts, medians and spread, speedups measured
in one run, rows appended to profiling/results/e2e.csv with the machine and git sha.

    python profiling/bench_e2e.py                       # the demo pair (tiny random LLaMA)
    python profiling/bench_e2e.py --target T --draft D  # any local pair
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import append_csv, run_context  # noqa: E402

PROMPTS = ["What is moving in the scene?", "Describe the scene.", "Which car turns left?",
           "Where is the red ball?", "How many people are there?", "Is it dark?"]
MODES = ("target-only", "sequential", "hide")


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target")
    ap.add_argument("--draft")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--csv", default=str(Path(__file__).parent / "results" / "e2e.csv"))
    args = ap.parse_args()

    from phide.demo import ensure_demo_pair
    from phide.engine import Engine, Request
    from phide.models.loading import load_llama, load_tokenizer
    from phide.models.vocab import shared_vocab_size

    if bool(args.target) != bool(args.draft):
        ap.error("give both --target and --draft, or neither (demo pair)")
    target_dir, draft_dir = (args.target, args.draft) if args.target else ensure_demo_pair()
    tok = load_tokenizer(target_dir)
    engine = Engine(load_llama(target_dir, label="target"), load_llama(draft_dir, label="draft"),
                    eos_token_ids=[tok.eos_token_id],
                    shared_vocab=shared_vocab_size(tok, load_tokenizer(draft_dir)))
    engine.generate(Request(prompt_ids=tok(PROMPTS[0])["input_ids"], max_new_tokens=4))  # warm-up

    walls = {m: [] for m in MODES}
    taus = {m: [] for m in MODES}
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        ref = None
        for _ in range(args.repeats):
            for mode in MODES:  # interleaved so drift hits every mode alike
                r = engine.generate(Request(prompt_ids=ids, max_new_tokens=args.max_new_tokens, mode=mode))
                ref = r.token_ids if ref is None else ref
                if r.token_ids != ref:
                    print(f"error: {mode} diverged on {prompt!r}", file=sys.stderr)
                    return 1
                walls[mode].append(r.stats["wall_s"])
                taus[mode].append(r.stats["accepted_per_verify"])

    ctx = run_context()
    base = statistics.median(walls["target-only"])
    rows = []
    print(f"{'mode':12} {'median s':>9} {'p20 s':>8} {'p80 s':>8} {'tau':>5} {'speedup':>8}")
    for mode in MODES:
        w = sorted(walls[mode])
        med = statistics.median(w)
        p20, p80 = w[int(0.2 * (len(w) - 1))], w[int(0.8 * (len(w) - 1))]
        tau = statistics.fmean(taus[mode])
        print(f"{mode:12} {med:>9.4f} {p20:>8.4f} {p80:>8.4f} {tau:>5.2f} {base / med:>7.2f}x")
        rows.append({"bench": "e2e", "mode": mode, "median_s": med, "p20_s": p20, "p80_s": p80, "tau": tau,
                     "speedup_vs_target_only": base / med, "n": len(w), "target": str(target_dir), **ctx})
    append_csv(args.csv, rows)
    print(f"appended {len(rows)} rows to {args.csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
