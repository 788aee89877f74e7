"""Compile every Triton kernel variant the engine launches for sm_90a (H100/H200), on a machine
without a GPU, and report each one's registers, spills and shared memory. Exits non-zero when a
half-precision (bf16/fp16) variant spills (fp32 ones are reported, not gated) or one fails to
compile. CI runs it after `make test`.

    python profiling/sm90_compile.py                     # print the table
    python profiling/sm90_compile.py --csv [--allow-dirty]   # and append it to results/sm90_compile.csv

The variants are `phide.triton_kernels.precompile.kernel_variants` (the list the engine's
`precompile` compiles at load time) over 7B-class shapes: head dims 64/80/128, 32 query heads over
32 or 8 KV heads, trees up to 64 nodes, vocabularies 32000/32064/128256, top-k 4 (and 1, the
cross-vocabulary chains), cache bf16/fp16/fp32 and logits fp32 (the engine's) plus bf16/fp16.
Launches that compile to the same binary (e.g. head dims 80 and 128: one BLOCK_D) are one row,
listing what they cover. Compiled by Triton's own path (specialisation, passes, its bundled
ptxas) into a temporary cache; TRITON_INTERPRET is forced off here.

Columns: regs (per thread), spill st/ld and stack (bytes per thread, ptxas -v), smem (bytes per
program, Triton's metadata), s (compile seconds).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # before triton is imported: the kernels must be JITFunctions
os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="sm90-compile-"))

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "profiling"))

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402
from harness import append_rows, run_context  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from phide.triton_kernels.precompile import compile_key, compile_offline, kernel_variants  # noqa: E402

CSV_PATH = ROOT / "profiling" / "results" / "sm90_compile.csv"
TARGET = GPUTarget("cuda", 90, 32)  # sm_90a: Triton adds the "a" for capability >= 90
HEAD_DIMS = (64, 80, 128)
HEADS = ((32, 32), (32, 8))  # (query heads, KV heads): MHA and GQA 7B-class models
CACHE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
LOGITS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
VOCABS = (32000, 32064, 128256)
TOPK = (4, 1)
MAX_TREE_NODES = 64
HALF = (torch.bfloat16, torch.float16)
# Constexprs that are not tile sizes: shown elsewhere or implied by the dtype.
_HIDDEN = {"DOT_PRECISION", "UPCAST"}

_JOBS: list = []  # one dict per distinct kernel (launch, variant, cases): read by the forked workers


def collect() -> list[dict]:
    """One job per distinct binary: its launch and every case that compiles to it."""
    jobs: dict[str, dict] = {}
    for dtype in CACHE_DTYPES:
        for logits_dtype in LOGITS_DTYPES:
            for D in HEAD_DIMS:
                for Hq, Hkv in HEADS:
                    for V in VOCABS:
                        # the decoder's norm and RoPE/KV-write kernels for a model of these heads
                        for variant in kernel_variants(dtype, D, Hq, Hkv, V, MAX_TREE_NODES, topk=TOPK,
                                                       logits_dtype=logits_dtype, decoders=((Hq * D, Hq, Hkv, D),)):
                            for launch in variant.launches("meta"):
                                key = compile_key(launch, TARGET)
                                job = jobs.setdefault(key, dict(launch=launch, variant=variant, cases=set()))
                                job["cases"].add(_case(variant))
    return list(jobs.values())


def _case(variant) -> tuple[str, str]:
    """(head dim, other sizes) of a case, for the row's coverage columns."""
    s = variant.shape
    span = f"{min(variant.covers)}..{max(variant.covers)}" if variant.covers else ""
    if variant.op == "tree_attention":
        return str(s["D"]), f"Hkv={s['Hkv']} G={s['Hq'] // s['Hkv']} N={span}"
    if variant.op == "kv_commit":
        return str(s["D"]), f"H={s['H']} W={span}"
    if variant.op == "tree_topk":
        return "-", f"V={s['V']} k={s['k']}"
    if variant.op == "rms_norm":
        return "-", f"H={s['H']} residual={int(s['residual'])}"
    if variant.op == "rope_kv_write":
        return str(s["D"]), f"Hq={s['Hq']} Hkv={s['Hkv']}"
    return "-", f"V={s['V']}"


def _compile(i: int) -> dict:
    t0 = time.perf_counter()
    try:
        stats = compile_offline(_JOBS[i]["launch"], TARGET)
    except Exception as exc:  # reported as a failed row; the run exits non-zero
        return dict(error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    return stats


def _ints(values) -> str:
    """'64,80,128': the distinct integers among `values`, ascending ('-' when none)."""
    nums = sorted({int(v) for v in values if v.lstrip("-").isdigit()})
    return ",".join(map(str, nums)) if nums else "-"


def _spans(values: set[int]) -> str:
    """'1..16,33..64': sorted integers with runs collapsed."""
    out, run = [], []
    for v in sorted(values):
        if run and v != run[-1] + 1:
            out.append(run)
            run = []
        run.append(v)
    out.append(run)
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}..{r[-1]}" for r in out)


def _cover(cases: set) -> tuple[str, str]:
    """The head dims and the other sizes (merged per name) of every case a kernel serves."""
    dims = _ints(d for d, _ in cases)
    others: dict[str, set] = {}
    for _, other in cases:
        for part in other.split():
            name, value = part.split("=")
            lo, _, hi = value.partition("..")
            others.setdefault(name, set()).update(range(int(lo), int(hi or lo) + 1))
    return dims, " ".join(f"{name}={_spans(values) if name in ('N', 'W') else ','.join(map(str, sorted(values)))}"
                          for name, values in others.items())


def _ensure_ptxas() -> None:
    """Triton's bundled ptxas (what a GPU run uses too); if a build of triton lacks it, a CUDA
    toolkit's (nvcc 13 on PATH), through TRITON_PTXAS_PATH."""
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if os.environ.get("TRITON_PTXAS_PATH") or bundled.exists():
        return
    nvcc = shutil.which("nvcc")
    for cand in (shutil.which("ptxas"), nvcc and str(Path(os.path.realpath(nvcc)).parent / "ptxas"),
                 "/usr/local/cuda/bin/ptxas"):
        if cand and Path(cand).exists():
            os.environ["TRITON_PTXAS_PATH"] = cand
            return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--csv", action="store_true", help=f"append the rows to {CSV_PATH.relative_to(ROOT)}")
    ap.add_argument("--csv-path", type=Path, default=CSV_PATH, help=argparse.SUPPRESS)
    ap.add_argument("--allow-dirty", action="store_true", help="write rows from a tree with uncommitted changes")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    args = ap.parse_args()

    start = time.perf_counter()
    _ensure_ptxas()
    from triton import knobs

    ptxas = knobs.nvidia.ptxas
    meta = {**run_context(), "triton_version": triton.__version__, "target": "sm_90a", "ptxas": ptxas.version}
    print(f"# sm_90a offline compile: triton {triton.__version__}, ptxas {ptxas.version} ({ptxas.path}), "
          f"torch {torch.__version__}, git {meta['git_sha']}{'-dirty' if meta['dirty'] else ''}")
    if args.csv and meta["dirty"] and not args.allow_dirty:  # before minutes of compiling, not after
        sys.exit(f"not writing to {args.csv_path}: the tree has uncommitted changes (commit, or pass --allow-dirty)")
    _JOBS.extend(sorted(collect(), key=_order))
    print(f"# {len(_JOBS)} distinct kernels, {args.jobs} parallel compiles")
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_compile, range(len(_JOBS))))
    else:
        results = [_compile(i) for i in range(len(_JOBS))]

    header = (f"{'kernel':<24} {'dtype':<9} {'D':<9} {'case':<34} {'blocks':<36} {'warps':>5} {'stages':>6} "
              f"{'regs':>5} {'spill st':>8} {'spill ld':>8} {'stack':>6} {'smem':>7} {'s':>5}")
    print(header)
    rows, failed = [], []
    for job, res in zip(_JOBS, results):
        launch, variant = job["launch"], job["variant"]
        dims, case = _cover(job["cases"])
        dtype = str(variant.dtype).removeprefix("torch.")
        blocks = " ".join(f"{k}={v}" for k, v in launch.options.items()
                          if k.isupper() and k not in _HIDDEN)
        name = launch.name.strip("_").removesuffix("_kernel")
        warps, stages = launch.options["num_warps"], launch.options["num_stages"]
        if "error" in res:
            print(f"{name:<24} {dtype:<9} {dims:<9} {case:<34} {blocks:<36} {warps:>5} {stages:>6}  "
                  f"FAILED {res['error']}")
            failed.append(f"{name} {dtype} {blocks}: {res['error']}")
            continue
        print(f"{name:<24} {dtype:<9} {dims:<9} {case:<34} {blocks:<36} {warps:>5} {stages:>6} "
              f"{res['registers']:>5} {res['spill_stores']:>8} {res['spill_loads']:>8} {res['stack']:>6} "
              f"{res['shared']:>7} {res['seconds']:>5.1f}")
        rows.append({"kernel": name, "dtype": dtype, "head_dims": dims, "case": case, "blocks": blocks,
                     "num_warps": warps, "num_stages": stages, "registers": res["registers"],
                     "spill_stores": res["spill_stores"], "spill_loads": res["spill_loads"],
                     "stack_bytes": res["stack"], "shared_bytes": res["shared"], **meta})
        if variant.dtype in HALF and res["spill_stores"] > 0:
            failed.append(f"{name} {dtype} D={dims} {case} {blocks} num_warps={warps}: "
                          f"{res['spill_stores']} bytes spill stores")
    fp32_spills = sum(1 for r in rows if r["dtype"] == "float32" and r["spill_stores"] > 0)
    print(f"# {len(rows)} compiled in {time.perf_counter() - start:.0f} s; fp32 variants spilling "
          f"(reported, not gated): {fp32_spills}")
    if args.csv:
        append_rows(args.csv_path, rows, allow_dirty=args.allow_dirty)
        print(f"appended {len(rows)} rows to {args.csv_path}")
    if failed:
        sys.exit("half-precision spills or failed compiles:\n  " + "\n  ".join(failed))


def _order(job) -> tuple:
    launch, variant = job["launch"], job["variant"]
    dtypes = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}
    dims, case = _cover(job["cases"])
    options = [(0, v, "") if isinstance(v, int) else (1, 0, str(v)) for v in launch.options.values()]
    return (variant.op, launch.name, dtypes[variant.dtype], dims, case.split()[0], options, case)


if __name__ == "__main__":
    try:
        main()
    finally:
        cache = os.environ.get("TRITON_CACHE_DIR", "")
        if Path(cache).name.startswith("sm90-compile-"):
            shutil.rmtree(cache, ignore_errors=True)
