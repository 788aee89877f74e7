// Torch-side entry points of phide's compiled ops (declarations only).
// Registration lives in csrc/bindings.cpp (CPU) and csrc/tree_accept_cuda.cu (CUDA, when built).
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

namespace phide {

using TensorTriple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// tokens, parents, target_choice: [B, N] int64 -> (accept_nodes [B, N], out_tokens [B, N],
// accept_len [B]) int64. CPU implementation (csrc/tree_accept_cpu.cpp).
TensorTriple accept_path_cpu(const at::Tensor& tokens, const at::Tensor& parents,
                                    const at::Tensor& target_choice);

// The decoder's fused ops on a CPU: the twins' ATen calls, composed in C++ (csrc/decoder_cpu.cpp).
// x, residual [..., H], weight [H] -> rms_norm(residual + x) [, residual + x].
at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps);
std::tuple<at::Tensor, at::Tensor> add_rms_norm_cpu(const at::Tensor& x, const at::Tensor& residual,
                                                    const at::Tensor& weight, double eps);
// qkv [B, T, (Hq + 2 Hkv) D], cos/sin [B, T, D], k_cache/v_cache [B, Hkv, S, D] (written at
// slots [B, T]) -> q [B, Hq, T, D] rotated.
at::Tensor rope_kv_write_cpu(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                             at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slots,
                             int64_t n_heads, int64_t n_kv_heads);

}  // namespace phide
