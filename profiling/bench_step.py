"""What one target verify step costs, per tree-size bucket: kernel launches per decoder layer, host
time per step, and on a GPU the step's time against the memory roofline.

A decode step is a verify of a one-node tree; a round verifies up to 64 nodes. For each bucket
size N (trees filling the bucket over a `--prefix`-row prompt) and each path that can run here:

  dynamic   the eager verify at the tree's own shape
  static    the static-shape verify run eagerly (the CUDA graphs' twin; what a CPU runs)
  graph     the static-shape verify replayed as a CUDA graph (a GPU only)

columns: launches_per_layer / launches_per_step (phide.ops.launch_count: ATen ops the host
launches, each phide op counted once, as on the GPU path; a graph replay is one launch, its layers
none), host_ms (median wall time of a verify
step, the walk's one read included), and on a GPU device_ms (CUDA events around the step) beside
roofline_ms = (weight bytes + the KV bytes the step reads) / peak bandwidth, and their ratio.
Paths are timed in rotated order after a warm-up.

    python profiling/bench_step.py                       # the bundled toy target (32 layers)
    python profiling/bench_step.py --target DIR --dtype bfloat16 --peak-gbs 3350
    python profiling/bench_step.py --shape llama7b --dtype bfloat16 --prefix 2048   # gpu_check.sh step 3

Rows go to profiling/results/bench_step.csv (a clean tree; --allow-dirty to try things).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness

import torch  # noqa: E402
from harness import append_rows, run_context  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEAK_GBS = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0, "L40S": 864.0, "4090": 1008.0}  # HBM/GDDR, GB/s


# Real models' shapes, for step costs without their checkpoints (random weights).
SHAPES = {"llama7b": dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, head_dim=128, max_position_embeddings=4096)}


def random_llama(shape: str, device, dtype):
    from phide.models.llama import LlamaConfig, LlamaModel

    cfg = LlamaConfig(**SHAPES[shape], eos_token_id=[])
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the target dtype on the device: no fp32 copy of 7B
    try:
        with torch.device(device):
            model = LlamaModel(cfg)
    finally:
        torch.set_default_dtype(before)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model.eval()


def peak_bandwidth(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_GBS.items() if k in name), None)


def step_bytes(model, prefix: int, n: int) -> int:
    """Bytes a verify of n nodes over `prefix` rows must read from memory: every decoder and
    LM-head weight once (the embedding only its n rows) and the K/V rows attention reads."""
    emb = model.embed_tokens.weight
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) - emb.numel() * emb.element_size()
    cfg = model.cfg
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * (prefix + n) * emb.element_size()
    return weights + n * cfg.hidden_size * emb.element_size() + kv


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=Path, default=ROOT / "phide" / "toy" / "bundled" / "target")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None,
                    help="instead of --target: a LLaMA of this shape with random weights (the step's cost, not its answers)")
    ap.add_argument("--prefix", type=int, default=600, help="committed rows under each tree")
    ap.add_argument("--buckets", type=int, nargs="+", default=None, help="tree sizes (default: the static buckets)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per path and size")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--peak-gbs", type=float, default=None, help="peak memory bandwidth, GB/s (default: by GPU name)")
    ap.add_argument("--csv", type=Path, default=Path(__file__).parent / "results" / "bench_step.csv")
    ap.add_argument("--allow-dirty", action="store_true")
    args = ap.parse_args(argv)

    from phide.models.registry import load_frontend
    from phide.ops.launch_count import LaunchCount
    from phide.speculation.runners import TargetRunner
    from phide.speculation.static_verify import BUCKETS, StaticVerify
    from phide.speculation.tree import Tree

    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.shape:
        model = random_llama(args.shape, dev, dtype)
    else:
        model = load_frontend(args.target, role="target", device=dev, dtype=dtype).lm
    model.fuse_projections()
    sizes = args.buckets or list(BUCKETS)
    rows = args.prefix + max(sizes) + 8
    gpu = dev.type == "cuda"
    static = StaticVerify(model, rows, buckets=sizes, graph=False)
    graphed = StaticVerify(model, rows, buckets=sizes, graph=True) if gpu else None
    paths = {"dynamic": None, "static": static, **({"graph": graphed} if gpu else {})}
    peak = args.peak_gbs or peak_bandwidth(dev)
    prompt = [3 + i % (model.cfg.vocab_size - 3) for i in range(args.prefix)]
    runners = {}
    for name, step in paths.items():
        r = TargetRunner(model, rows, static=step)
        r.prefill(prompt)
        runners[name] = r

    def tree(n):
        return Tree([3 + (5 * i) % (model.cfg.vocab_size - 3) for i in range(n)], [-1] + [(i - 1) // 3 for i in range(1, n)])

    def one(name, n):
        r = runners[name]
        r.verify(tree(n), 0.0, 0, 0)
        r.length = args.prefix  # every step over the same prefix

    ctx = run_context()
    out = []
    for n in sizes:
        counts = {}
        for name in paths:  # what the host launches (a graph replay: one launch, its layers none)
            with LaunchCount(layers=model.layers) as lc:
                one(name, n)
            counts[name] = (lc.per_layer(), lc.total())
        host = {name: [] for name in paths}
        device = {name: [] for name in paths}
        order = list(paths)
        for name in order:  # warm-up
            for _ in range(2):
                one(name, n)
        for i in range(args.steps):
            for name in order[i % len(order):] + order[: i % len(order)]:  # rotated
                if gpu:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    torch.cuda.synchronize(dev)
                    start.record()
                t0 = time.perf_counter()
                one(name, n)  # ends with the outcome's read: the step is done on the device
                host[name].append(time.perf_counter() - t0)
                if gpu:
                    end.record()
                    end.synchronize()
                    device[name].append(start.elapsed_time(end) / 1e3)
        roof = step_bytes(model, args.prefix, n) / (peak * 1e9) if peak else None
        for name in paths:
            dev_s = statistics.median(device[name]) if device[name] else None
            out.append(dict(ctx, target=args.shape or args.target.name, dtype=args.dtype, layers=model.cfg.num_hidden_layers,
                            prefix=args.prefix, nodes=n, path=name,
                            launches_per_layer=round(counts[name][0], 2), launches_per_step=counts[name][1],
                            host_ms=round(1e3 * statistics.median(host[name]), 3),
                            device_ms=round(1e3 * dev_s, 3) if dev_s else "",
                            roofline_ms=round(1e3 * roof, 3) if roof else "",
                            roofline_fraction=round(roof / dev_s, 3) if roof and dev_s else ""))
            print(", ".join(f"{k}={out[-1][k]}" for k in ("nodes", "path", "launches_per_layer", "launches_per_step",
                                                          "host_ms", "device_ms", "roofline_ms", "roofline_fraction")))
    append_rows(args.csv, out, allow_dirty=args.allow_dirty)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
