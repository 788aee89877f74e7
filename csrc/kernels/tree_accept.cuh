// CUDA kernel and launcher for the accept_path op: torch-free (raw pointers, sizes,
// cudaStream_t -> cudaError_t), FlashInfer style. The torch glue is csrc/tree_accept_cuda.cu.
//
// One thread per request running the same walk as the CPU path (csrc/tree_accept.h), so both
// produce identical tokens. Requests are independent and a walk is a short serial loop. All
// buffers are contiguous:
//   tokens, parents, target_choice, accept_nodes, out_tokens: [B, N]; accept_len: [B]
// accept_nodes and out_tokens must be pre-filled with -1 by the caller.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "../tree_accept.h"

namespace phide {
namespace kernels {

constexpr int kTreeAcceptThreads = 128;

template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    accept_path_kernel(int64_t B, int64_t N, const int64_t* __restrict__ tokens,
                              const int64_t* __restrict__ parents,
                              const int64_t* __restrict__ target_choice,
                              int64_t* __restrict__ accept_nodes, int64_t* __restrict__ out_tokens,
                              int64_t* __restrict__ accept_len) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (b >= B) return;
  const int64_t o = b * N;  // int64 offsets
  accept_len[b] = accept_path_one(N, tokens + o, parents + o, target_choice + o,
                                         accept_nodes + o, out_tokens + o);
}

inline cudaError_t accept_path_launch(int64_t B, int64_t N, const int64_t* tokens,
                                             const int64_t* parents, const int64_t* target_choice,
                                             int64_t* accept_nodes, int64_t* out_tokens,
                                             int64_t* accept_len, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  constexpr int kThreads = kTreeAcceptThreads;
  const unsigned int blocks = static_cast<unsigned int>((B + kThreads - 1) / kThreads);
  accept_path_kernel<kThreads><<<blocks, kThreads, 0, stream>>>(
      B, N, tokens, parents, target_choice, accept_nodes, out_tokens, accept_len);
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace phide
