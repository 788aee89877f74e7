// CUDA glue for the accept_path op: checks, device guard, current stream, output
// allocation, then the torch-free launcher of csrc/kernels/tree_accept.cuh. Compiled only with
// PHIDE_BUILD_CUDA=1; the schema is defined in csrc/bindings.cpp.
//
// Unlike the CPU path, no host-side topology check (it would need a device sync): nodes whose
// parent is not smaller than their own index are simply never visited.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: that one needs cuBLAS/cuSPARSE headers
#include <torch/library.h>

#include "kernels/tree_accept.cuh"
#include "ops.h"
#include "tree_accept_checks.h"

namespace phide {
namespace {

void check_cuda(const at::Tensor& tokens, const char* op) {
  TORCH_CHECK(tokens.is_cuda(), op, ": CUDA kernel called with tensors on ", tokens.device());
}

TensorTriple empty_outputs(const at::Tensor& tokens) {
  const int64_t B = tokens.size(0);
  const int64_t N = tokens.size(1);
  auto opts = tokens.options().dtype(at::kLong);
  return {at::full({B, N}, -1, opts), at::full({B, N}, -1, opts), at::empty({B}, opts)};
}

}  // namespace

TensorTriple accept_path_cuda(const at::Tensor& tokens, const at::Tensor& parents,
                                     const at::Tensor& target_choice) {
  const char* op = "phide::accept_path";
  check_greedy_inputs(tokens, parents, target_choice);
  check_cuda(tokens, op);
  const c10::cuda::CUDAGuard guard(tokens.device());
  auto [accept_nodes, out_tokens, accept_len] = empty_outputs(tokens);
  const cudaError_t err = kernels::accept_path_launch(
      tokens.size(0), tokens.size(1), tokens.data_ptr<int64_t>(), parents.data_ptr<int64_t>(),
      target_choice.data_ptr<int64_t>(), accept_nodes.data_ptr<int64_t>(),
      out_tokens.data_ptr<int64_t>(), accept_len.data_ptr<int64_t>(),
      c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(err));
  return {accept_nodes, out_tokens, accept_len};
}

}  // namespace phide

TORCH_LIBRARY_IMPL(phide, CUDA, m) {
  m.impl("accept_path", &phide::accept_path_cuda);
}
