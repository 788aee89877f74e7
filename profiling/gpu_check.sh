#!/usr/bin/env bash
# GPU check for a user with an NVIDIA GPU (written for an H100; any sm_80+ works):
#   1. builds the CUDA extension (PHIDE_BUILD_CUDA=1) into the current environment,
#   2. runs the kernel tests ON THE DEVICE: the CUDA acceptance walk, green-context lanes and
#      the engine's hide window on them, post-verify overlap on a side stream (pytest -m gpu) and the
#      tree-attention / top-k Triton kernels compiled for real,
#   3. the per-op microbenchmarks (torch twin vs Triton vs CUDA; CSV in profiling/results/): the
#      verification kernels, tree-verify attention (Vicuna-7B MHA and a GQA layout) and the draft
#      tree step top-k,
#   4. the planner's projection (`phide plan`),
#   5. an Nsight Systems trace of one toy request, when nsys is installed.
#   6. the lane-overlap sweep: the toy pair's hide window with the draft on 8/16/24/32 SMs.
#
#   bash profiling/gpu_check.sh            # from the repository root, in phide's environment
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to torch; nothing to check here" >&2
    exit 2
fi
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'gpu_check: {p.name}, {p.multi_processor_count} SMs, torch {torch.__version__}')"

echo "== 1. build the CUDA extension"
PHIDE_BUILD_CUDA=1 "$PY" -m pip install --no-build-isolation -e . -q

echo "== 2. kernel tests on the device"
"$PY" -m pytest -q -m gpu tests/test_ext.py tests/test_green_ctx.py tests/test_window_lanes.py tests/test_static_step.py tests/test_overlap.py
TRITON_INTERPRET=0 "$PY" -m pytest -q tests/test_tree_attention.py tests/test_tree_topk.py
# test_triton_kernels.py builds its kernel inputs on the CPU, so it runs interpreted here too (its
# Gumbel / KV-commit kernels are compiled for real by the microbenchmarks below).
TRITON_INTERPRET=1 "$PY" -m pytest -q tests/test_triton_kernels.py

echo "== 3. microbenchmarks"
"$PY" profiling/bench_tree_accept.py
"$PY" profiling/bench_verify_kernels.py --V 32064 128256 --L 32 --H 8 --D 128 --S 4096 --path 8
"$PY" profiling/bench_tree_attention.py --B 1 4 --Hq 32 --Hkv 32 --D 128 --N 24 64 --prefix 2048 8192
"$PY" profiling/bench_tree_attention.py --B 1 4 --Hq 32 --Hkv 8 --D 128 --N 24 64 --prefix 2048 8192
"$PY" profiling/bench_tree_topk.py --B 1 8 --F 4 8 --V 32064 128256 --k 4 8

echo "== 4. planner projection for the real pair"
"$PY" -m phide.cli plan

echo "== 5. Nsight Systems trace"
if command -v nsys >/dev/null 2>&1; then
    echo "see profiling/nsys_trace.sh TARGET DRAFT [VIDEO] [EVENTS] for a trace of the real pair"
else
    echo "nsys not installed: skipped"
fi
echo "== 6. lane-overlap sweep (the draft's window on 8/16/24/32 SMs of a green-context split)"
"$PY" profiling/sweep_lanes.py --draft-sms 8 16 24 32
