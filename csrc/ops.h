// Torch-side entry points of phide's compiled ops (declarations only).
// Registration lives in csrc/bindings.cpp (CPU) and csrc/tree_accept_cuda.cu (CUDA, when built).
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

namespace phide {

using TensorTriple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// tokens, parents, target_choice: [B, N] int64 -> (accept_nodes [B, N], out_tokens [B, N],
// accept_len [B]) int64. CPU implementation (csrc/tree_accept_cpu.cpp).
TensorTriple tree_accept_greedy_cpu(const at::Tensor& tokens, const at::Tensor& parents,
                                    const at::Tensor& target_choice);

}  // namespace phide
