"""phide target-only against transformers' own greedy `generate` on the same LLaMA checkpoint.

One process, both engines on the same weights (fp32, CPU or GPU), rotated per repetition after a
warm-up of each; per prompt the median of `--reps` runs, summed over the prompts: ms per generated
token (prefill included), and their ratio. Both decode exactly `--new-tokens` tokens (no EOS
stop) and the script checks they emit the same tokens.

    python profiling/vs_transformers.py                      # builds a 32-layer, hidden-128 LLaMA
    python profiling/vs_transformers.py --model DIR --new-tokens 48 --prompts 8 --csv PATH

Rows go to profiling/results/vs_transformers.csv (a clean tree; --allow-dirty to try things).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness

import torch  # noqa: E402
from harness import append_rows, run_context  # noqa: E402

DEFAULT_MODEL = Path(os.environ.get("PHIDE_HOME", Path.home() / ".cache" / "phide")) / "bench" / "llama32x128"


def build_model(out: Path) -> None:
    from phide.models.tiny import write_tiny_llama

    write_tiny_llama(out, seed=0, hidden=128, layers=32, heads=4, kv_heads=2, intermediate=256, init_std=0.1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                    help="a LlamaForCausalLM directory (default: a 32-layer, hidden-128 one, built once)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--csv", type=Path, default=Path(__file__).parent / "results" / "vs_transformers.csv")
    ap.add_argument("--allow-dirty", action="store_true")
    args = ap.parse_args(argv)

    from transformers import LlamaForCausalLM

    from phide.engine import Engine, Request
    from phide.models.loading import load_llama

    if not (args.model / "config.json").is_file():
        print(f"building {args.model} ...", file=sys.stderr)
        build_model(args.model)
    dev = torch.device(args.device)
    hf = LlamaForCausalLM.from_pretrained(str(args.model), dtype=torch.float32).to(dev).eval()
    hf.generation_config.eos_token_id = None  # decode exactly --new-tokens, as phide does below
    ours = Engine(load_llama(args.model, device=dev), eos_token_ids=[])
    g = torch.Generator().manual_seed(0)
    vocab = hf.config.vocab_size
    prompts = [torch.randint(3, vocab, (args.prompt_len,), generator=g).tolist() for _ in range(args.prompts)]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def run_hf(ids):
        with torch.inference_mode():
            x = torch.tensor([ids], device=dev)
            out = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.new_tokens,
                              do_sample=False, pad_token_id=0)
        sync()
        return out[0, len(ids):].tolist()

    def run_phide(ids):
        out = ours.generate(Request(prompt_ids=ids, max_new_tokens=args.new_tokens), "target-only").token_ids
        sync()
        return out

    engines = {"transformers": run_hf, "phide": run_phide}
    for fn in engines.values():  # warm-up
        fn(prompts[0])
    times = {name: [] for name in engines}
    same = 0
    for i, ids in enumerate(prompts):
        runs = {name: [] for name in engines}
        outs = {}
        for rep in range(args.reps):
            order = list(engines) if (i + rep) % 2 == 0 else list(reversed(engines))
            for name in order:
                t0 = time.perf_counter()
                outs[name] = engines[name](ids)
                runs[name].append(time.perf_counter() - t0)
        same += outs["transformers"] == outs["phide"]
        for name in engines:
            times[name].append(statistics.median(runs[name]))
    tokens = args.prompts * args.new_tokens
    ms = {name: 1e3 * sum(t) / tokens for name, t in times.items()}
    ratio = ms["phide"] / ms["transformers"]
    row = dict(run_context(), threads=torch.get_num_threads(), model=args.model.name, layers=hf.config.num_hidden_layers, hidden=hf.config.hidden_size,
               prompts=args.prompts, prompt_len=args.prompt_len, new_tokens=args.new_tokens, reps=args.reps,
               transformers_ms_per_token=round(ms["transformers"], 3), phide_ms_per_token=round(ms["phide"], 3),
               phide_over_transformers=round(ratio, 3), same_tokens=f"{same}/{args.prompts}")
    print(", ".join(f"{k}={v}" for k, v in row.items()))
    append_rows(args.csv, [row], allow_dirty=args.allow_dirty)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
