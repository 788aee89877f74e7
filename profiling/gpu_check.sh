#!/usr/bin/env bash
# GPU check for a user with an NVIDIA GPU (written for an H100; any sm_80+ works):
#   0. checks first, and prints: the GPU and its compute capability, the NVIDIA driver and whether
#      it supports the CUDA version torch was built for, nvcc and whether it matches torch's CUDA,
#      whether the compute capability is >= 8.0; then which steps run (profiling/gpu_env.py decides),
#   1. builds the CUDA extension (PHIDE_BUILD_CUDA=1) into the current environment,
#   2. runs the kernel tests ON THE DEVICE: the CUDA acceptance walk, green-context lanes and
#      the engine's hide window on them, post-verify overlap on a side stream (pytest -m gpu) and the
#      tree-attention / top-k Triton kernels compiled for real,
#   3. the per-op microbenchmarks (torch twin vs Triton vs CUDA; CSV in profiling/results/): the
#      verification kernels, tree-verify attention (Vicuna-7B MHA and a GQA layout) and the draft
#      tree step top-k; and the target's whole step per tree-size bucket (dynamic, static, CUDA
#      graph) against the memory roofline on a 7B-shaped LLaMA (profiling/bench_step.py),
#   4. the planner's projection (`phide plan`),
#   5. an Nsight Systems trace of one toy request, when nsys is installed.
#   6. the lane-overlap sweep: the toy pair's hide window with the draft on 8/16/24/32 SMs,
#   7. how often greedy answers in bf16 are token-for-token target-only's, per schedule
#      (profiling/identity.py),
#   8. `phide distill` on the device: bf16 frozen models, the head under bf16 autocast, online and
#      offline features (tests/test_distill_runs.py -m gpu).
#   9. every Triton kernel variant compiled for sm_90a offline (profiling/sm90_compile.py).
#
# Everything lands in ONE report directory a user can attach as is (GPU_CHECK_OUT, default
# profiling/results/gpu_check/<UTC time>/): environment.txt (the checks above, the commit, pip
# freeze, nvidia-smi), <step>.log per step, the CSVs the steps wrote, the nsys trace when nsys
# exists, and summary.txt (steps run / failed / skipped, the bf16 identity fractions).
# Without a CUDA device the CPU steps (interpreted Triton tests, the planner, the sm_90a compile)
# still run and the report is written; the exit status is then 2.
#
# A failing step prints "FAILED: <step> (exit N)" and the next one runs. Without the CUDA build
# (no nvcc, an nvcc that is not torch's CUDA major.minor, a driver too old for torch's CUDA, a
# compute capability < 8.0, or a build that failed) only what needs the CUDA extension is skipped:
# tests/test_ext.py's GPU tests and bench_tree_accept.py's cpp backend. The summary at the end
# lists the steps run, failed and skipped; the exit status is 1 when one failed, 2 when torch sees
# no CUDA device (then only the CPU steps ran), else 0.
#
#   bash profiling/gpu_check.sh            # from the repository root, in phide's environment
#   PYTHON=/path/to/python bash profiling/gpu_check.sh
# shellcheck disable=SC2317  # the step_* functions are called indirectly ("step_$key")
set -uo pipefail  # no -e: each step's failure is reported, then the next step runs
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}

OUT=${GPU_CHECK_OUT:-profiling/results/gpu_check/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT" || exit 1
PLAN="$OUT/plan.tsv"
STAMP="$OUT/.started"
touch "$STAMP"
echo "gpu_check: report directory $OUT"

# -- 0. the checks, before anything is built or installed --------------------------------------
"$PY" profiling/gpu_env.py --plan-file "$PLAN" 2>&1 | tee "$OUT/environment.txt"
rc=${PIPESTATUS[0]}
NO_GPU=0
if ((rc == 2)); then
    NO_GPU=1  # torch sees no CUDA device; gpu_env.py said so, and planned the CPU steps only
elif ((rc != 0)); then
    echo "gpu_check: could not inspect this machine with $PY (profiling/gpu_env.py exit $rc)" >&2
    exit 1
fi
{
    echo "== commit"
    git rev-parse HEAD 2>/dev/null && git status --short 2>/dev/null | head -20
    echo "== nvidia-smi"
    nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    echo "== pip freeze"
    "$PY" -m pip freeze 2>&1
} >>"$OUT/environment.txt"

ARCHS=""
KEYS=()
declare -A ACTION NEEDS TITLE REASON
while IFS=$'\t' read -r key action needs title reason; do
    if [[ $key == archs ]]; then
        ARCHS=$action
        continue
    fi
    KEYS+=("$key")
    ACTION[$key]=$action
    NEEDS[$key]=$needs
    TITLE[$key]=$title
    REASON[$key]=$reason
done <"$PLAN"

RAN=()
FAILED=()
SKIPPED=()
EXT_OK=0  # set by a successful CUDA build
if [[ ${ACTION[build_cuda]:-skip} == run ]]; then
    EXT_WHY="the CUDA extension's build failed"
else
    EXT_WHY="no CUDA build (${REASON[build_cuda]:-not planned})"
fi

# -- the steps: step_<key> runs one step; its exit status is the step's ------------------------
step_build_cuda() {
    echo "PHIDE_CUDA_ARCHS=$ARCHS"
    PHIDE_BUILD_CUDA=1 PHIDE_CUDA_ARCHS="$ARCHS" "$PY" -m pip install --no-build-isolation -e . -q || return
    "$PY" - <<'EOF' || return
import sys
import torch
from phide._ext import load_extension
if not load_extension():
    sys.exit("gpu_check: phide._C does not load after the build")
if not torch._C._dispatch_has_kernel_for_dispatch_key("phide::accept_path", "CUDA"):
    sys.exit("gpu_check: phide._C was built without its CUDA kernel")
print("gpu_check: phide._C loads, with its CUDA kernel")
EOF
    EXT_OK=1
}

step_test_ext() {
    "$PY" -m pytest -q -m gpu tests/test_ext.py
}

step_test_gpu() {
    "$PY" -m pytest -q -m gpu tests/test_green_ctx.py tests/test_window_lanes.py tests/test_static_step.py tests/test_overlap.py \
        tests/test_quant.py
}

step_test_triton() {
    TRITON_INTERPRET=0 "$PY" -m pytest -q tests/test_tree_attention.py tests/test_tree_topk.py
}

step_test_triton_interp() {
    # test_triton_kernels.py builds its kernel inputs on the CPU, so it runs interpreted here too
    # (its Gumbel / KV-commit kernels are compiled for real by the microbenchmarks below).
    TRITON_INTERPRET=1 "$PY" -m pytest -q tests/test_triton_kernels.py tests/test_precompile_coverage.py
}

step_bench_tree_accept() {
    if ((EXT_OK)); then
        "$PY" profiling/bench_tree_accept.py
    else
        if [[ ${ACTION[build_cuda]} == run ]]; then  # else the plan's reason said so already
            echo "(cpp backend skipped: $EXT_WHY; timing the torch twin only)"
        fi
        SKIPPED+=("bench_tree_accept.py's cpp backend: $EXT_WHY")
        "$PY" profiling/bench_tree_accept.py --backends torch
    fi
}

step_bench_verify() {
    "$PY" profiling/bench_verify_kernels.py --V 32064 128256 --L 32 --H 8 --D 128 --S 4096 --path 8
}

step_bench_attention_mha() {
    "$PY" profiling/bench_tree_attention.py --B 1 4 --Hq 32 --Hkv 32 --D 128 --N 24 64 --prefix 2048 8192
}

step_bench_attention_gqa() {
    "$PY" profiling/bench_tree_attention.py --B 1 4 --Hq 32 --Hkv 8 --D 128 --N 24 64 --prefix 2048 8192
}

step_bench_topk() {
    "$PY" profiling/bench_tree_topk.py --B 1 8 --F 4 8 --V 32064 128256 --k 4 8
}

step_bench_step() {
    # a random LLaMA of Vicuna-7B's shape in bf16: launches, host time and step time vs roofline per bucket
    "$PY" profiling/bench_step.py --shape llama7b --dtype bfloat16 --prefix 2048
}

step_plan() {
    "$PY" -m phide.cli plan
}

step_nsys() {
    # one hide request of the bundled toy pair; profiling/nsys_trace.sh TARGET DRAFT traces the real pair
    OUT="$OUT/nsys_hide" PYTHON="$PY" bash "${NSYS_TRACE:-profiling/nsys_trace.sh}" phide/toy/bundled/target \
        phide/toy/bundled/draft
}

step_sweep_lanes() {
    "$PY" profiling/sweep_lanes.py --draft-sms 8 16 24 32
}

step_identity_bf16() {
    "$PY" profiling/identity.py --dtype bfloat16 --scenes 32
}

step_distill_gpu() {
    "$PY" -m pytest -q -s -m gpu tests/test_distill_runs.py
}

step_sm90_compile() {
    "$PY" profiling/sm90_compile.py
}

summary() {
    echo "== summary: ${#RAN[@]} run, ${#FAILED[@]} failed, ${#SKIPPED[@]} skipped"
    local line
    for line in "${FAILED[@]}"; do
        echo "  FAILED: $line"
    done
    for line in "${SKIPPED[@]}"; do
        echo "  skipped: $line"
    done
}

report() {  # the CSVs the steps wrote, and the summary, into the report directory
    local csv
    while IFS= read -r csv; do
        cp "$csv" "$OUT/"
    done < <(find profiling/results -maxdepth 1 -name '*.csv' -newer "$STAMP" 2>/dev/null)
    {
        summary
        if [[ -f $OUT/identity_bf16.log ]]; then
            echo "== bf16 greedy answers identical to target-only (profiling/identity.py)"
            grep "identical to target-only" "$OUT/identity_bf16.log" || echo "  (none measured)"
        fi
    } >"$OUT/summary.txt"
    rm -f "$STAMP"
    echo "gpu_check: report in $OUT"
}

trap 'echo; echo "gpu_check: interrupted"; summary; report; exit 130' INT

for key in "${KEYS[@]}"; do
    title=${TITLE[$key]}
    echo "== $title"
    if [[ ${ACTION[$key]} == skip ]]; then
        echo "skipped: ${REASON[$key]}"
        SKIPPED+=("$title: ${REASON[$key]}")
        continue
    fi
    if [[ ${NEEDS[$key]} == ext ]] && ((!EXT_OK)); then
        echo "skipped: $EXT_WHY"
        SKIPPED+=("$title: $EXT_WHY")
        continue
    fi
    if [[ ${REASON[$key]} != - ]]; then
        echo "(${REASON[$key]})"
    fi
    # in this shell (a pipe would run it in a subshell and lose EXT_OK / SKIPPED)
    "step_$key" > >(tee "$OUT/$key.log") 2>&1
    rc=$?
    if ((rc != 0)); then
        echo "FAILED: $title (exit $rc)"
        FAILED+=("$title (exit $rc)")
    else
        RAN+=("$title")
    fi
done

summary
report
((${#FAILED[@]} == 0)) || exit 1
((NO_GPU == 0)) || exit 2
exit 0
