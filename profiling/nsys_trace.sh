#!/usr/bin/env bash
# Capture an Nsight Systems trace of ONE `phide generate --mode hide` request on a GPU, with
# phide's NVTX ranges ("<lane>:<phase>", e.g. "target:target_prefill", "draft:draft_grow") on the
# timeline next to the CUDA kernels of both streams: check that draft and prefill kernels overlap.
#
# Usage:
#   profiling/nsys_trace.sh TARGET_DIR DRAFT_DIR [VIDEO] [EVENTS] [-- extra phide generate args]
# or with the environment:
#   TARGET=... DRAFT=... VIDEO=... EVENTS=... profiling/nsys_trace.sh
#
# Arguments win over the environment. VIDEO (a video file or frame folder, Video-LLaVA target) and
# EVENTS (DSEC events.h5/.npz/.npy, EventGPT draft) are optional; pass "" to skip one.
#
# Environment (defaults in brackets):
#   PROMPT         prompt text ["Describe what happens in the scene."]
#   MAX_NEW_TOKENS tokens to generate [64]
#   OUT            report path without extension [<this dir>/results/nsys_hide_<timestamp>]
#   CAPTURE_RANGE  nsys --capture-range [none]: "none" records the whole process (model loading
#                  included); "nvtx" starts at the NVTX range named by NVTX_CAPTURE (e.g.
#                  NVTX_CAPTURE="target:target_prefill"; whether nsys triggers on phide's
#                  start/end-style ranges depends on the nsys version); "cudaProfilerApi" needs
#                  code that calls cudaProfilerStart/Stop, which phide does not do today.
#   NVTX_CAPTURE   range (optionally range@domain) for CAPTURE_RANGE=nvtx
#   PHIDE          command that runs the CLI [phide, or "$PYTHON -m phide.cli" if not on PATH]
#   PYTHON         interpreter for that fallback [python3]
#   NSYS           nsys binary [nsys]
#
# Output: $OUT.nsys-rep (open in the Nsight Systems GUI) and, when `nsys stats` works, a text
# summary $OUT.stats.txt (CUDA kernels, NVTX ranges).
set -euo pipefail

die() { echo "nsys_trace.sh: error: $*" >&2; exit 2; }

# Up to 4 positionals, then everything after "--" goes to `phide generate` unchanged.
POS=()
while (( $# )); do
    if [[ $1 == "--" ]]; then shift; break; fi
    POS+=("$1"); shift
done
EXTRA=("$@")
(( ${#POS[@]} <= 4 )) || die "at most 4 arguments before '--' (TARGET DRAFT VIDEO EVENTS)"
TARGET=${POS[0]:-${TARGET:-}}
DRAFT=${POS[1]:-${DRAFT:-}}
if (( ${#POS[@]} > 2 )); then VIDEO=${POS[2]}; else VIDEO=${VIDEO:-}; fi
if (( ${#POS[@]} > 3 )); then EVENTS=${POS[3]}; else EVENTS=${EVENTS:-}; fi

PROMPT=${PROMPT:-"Describe what happens in the scene."}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-64}
CAPTURE_RANGE=${CAPTURE_RANGE:-none}
NSYS=${NSYS:-nsys}
OUT=${OUT:-$(dirname "$0")/results/nsys_hide_$(date +%Y%m%d_%H%M%S)}

command -v "$NSYS" >/dev/null 2>&1 || die "'$NSYS' (Nsight Systems CLI) not found on PATH;" \
    "install Nsight Systems (it ships with the CUDA toolkit) or set NSYS=/path/to/nsys"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
    || echo "nsys_trace.sh: warning: nvidia-smi sees no GPU; the trace will have no CUDA rows" >&2

[[ -n $TARGET ]] || die "no target checkpoint: pass TARGET_DIR as argument 1 or set TARGET"
[[ -n $DRAFT ]] || die "no draft checkpoint: pass DRAFT_DIR as argument 2 or set DRAFT"
[[ -d $TARGET ]] || die "target checkpoint '$TARGET' is not a directory"
[[ -d $DRAFT ]] || die "draft checkpoint '$DRAFT' is not a directory"
[[ -z $VIDEO || -e $VIDEO ]] || die "video '$VIDEO' does not exist"
[[ -z $EVENTS || -e $EVENTS ]] || die "events file '$EVENTS' does not exist"

if [[ -n ${PHIDE:-} ]]; then
    read -r -a PHIDE_CMD <<< "$PHIDE"
elif command -v phide >/dev/null 2>&1; then
    PHIDE_CMD=(phide)
else
    PHIDE_CMD=("${PYTHON:-python3}" -m phide.cli)
fi

CAPTURE=(--capture-range="$CAPTURE_RANGE")
case $CAPTURE_RANGE in
    none) ;;
    nvtx)
        [[ -n ${NVTX_CAPTURE:-} ]] || die "CAPTURE_RANGE=nvtx needs NVTX_CAPTURE (e.g. target:target_prefill)"
        # nsys matches only NVTX registered strings by default; =0 also matches plain messages.
        export NSYS_NVTX_PROFILER_REGISTER_ONLY=0
        CAPTURE+=(--nvtx-capture="$NVTX_CAPTURE" --capture-range-end=stop) ;;
    cudaProfilerApi) CAPTURE+=(--capture-range-end=stop) ;;
    *) die "CAPTURE_RANGE must be none, nvtx or cudaProfilerApi, got '$CAPTURE_RANGE'" ;;
esac

GEN=(generate --mode hide --device cuda --target "$TARGET" --draft "$DRAFT"
     --prompt "$PROMPT" --max-new-tokens "$MAX_NEW_TOKENS")
[[ -n $VIDEO ]] && GEN+=(--video "$VIDEO")
[[ -n $EVENTS ]] && GEN+=(--events "$EVENTS")

mkdir -p "$(dirname "$OUT")"
echo "nsys_trace.sh: tracing: ${PHIDE_CMD[*]} ${GEN[*]} ${EXTRA[*]-}" >&2

# cuda,nvtx,osrt: kernels/memcpys per stream, phide's NVTX phases, OS runtime (thread waits).
# --cuda-graph-trace=node shows kernels inside CUDA graphs instead of one block per replay.
# PYTHONUNBUFFERED keeps phide's output in order with nsys's own messages.
PYTHONUNBUFFERED=1 "$NSYS" profile \
    -t cuda,nvtx,osrt \
    "${CAPTURE[@]}" \
    --cuda-graph-trace=node \
    --trace-fork-before-exec=true \
    --force-overwrite=true \
    -o "$OUT" \
    "${PHIDE_CMD[@]}" "${GEN[@]}" ${EXTRA[@]+"${EXTRA[@]}"}

REPORT="$OUT.nsys-rep"
[[ -f $REPORT ]] || die "nsys finished but wrote no $REPORT (nothing captured? check CAPTURE_RANGE)"
echo "nsys_trace.sh: wrote $REPORT" >&2
if "$NSYS" stats --report cuda_gpu_kern_sum,nvtx_sum --format column "$REPORT" \
        > "$OUT.stats.txt" 2>/dev/null; then
    echo "nsys_trace.sh: summary in $OUT.stats.txt" >&2
else
    rm -f "$OUT.stats.txt"
    echo "nsys_trace.sh: warning: 'nsys stats' failed; open $REPORT in the GUI instead" >&2
fi
