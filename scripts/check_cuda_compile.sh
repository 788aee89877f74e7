#!/usr/bin/env bash
# Compile phide's torch-free CUDA kernel headers on their own, without torch or a GPU:
# csrc/kernels/*.cuh (each through a one-line .cu that includes it) and csrc/tree_accept.h under
# nvcc, for every arch in PHIDE_CUDA_ARCHS (default "80;90a"). Fails loudly on the first error.
# Usage: scripts/check_cuda_compile.sh   (needs nvcc on PATH or CUDA_HOME)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NVCC="${NVCC:-$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")}"
ARCHS="${PHIDE_CUDA_ARCHS:-80;90a}"
WORK="$(mktemp -d /tmp/phide_cuda_check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

if [[ ! -x "$NVCC" ]]; then
  echo "check_cuda_compile: FAIL: nvcc not found (set NVCC or CUDA_HOME)" >&2
  exit 1
fi
echo "check_cuda_compile: $("$NVCC" --version | tail -1)"

headers=("$ROOT"/csrc/kernels/*.cuh "$ROOT"/csrc/tree_accept.h)
status=0
IFS=';' read -r -a arch_list <<< "$ARCHS"
for header in "${headers[@]}"; do
  name="$(basename "$header")"
  tu="$WORK/${name//./_}.cu"
  printf '#include "%s"\n' "$header" > "$tu"
  for arch in "${arch_list[@]}"; do
    arch="${arch//./}"
    start=$SECONDS
    if "$NVCC" -c -std=c++17 -O3 --fmad=false -Werror all-warnings \
        -gencode "arch=compute_${arch},code=sm_${arch}" \
        -o "$WORK/${name}.${arch}.o" "$tu" 2> "$WORK/err.txt"; then
      echo "  ok    ${name}  sm_${arch}  ($((SECONDS - start)) s)"
    else
      echo "  FAIL  ${name}  sm_${arch}" >&2
      cat "$WORK/err.txt" >&2
      status=1
    fi
  done
done
if [[ $status -ne 0 ]]; then
  echo "check_cuda_compile: FAILED" >&2
  exit 1
fi
echo "check_cuda_compile: all torch-free kernel headers compile"
