// CPU glue for the accept_path op: checks, output allocation, a parallel loop over
// requests calling the torch-free walk in tree_accept.h. Registered in csrc/bindings.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "ops.h"
#include "tree_accept.h"
#include "tree_accept_checks.h"

namespace phide {
namespace {

void check_cpu(const at::Tensor& tokens, const char* op) {
  TORCH_CHECK(tokens.device().is_cpu(), op, ": CPU kernel called with tensors on ", tokens.device());
}

// Like children_lists() in phide/ops/reference/accept.py: a non-negative parent must precede
// its child. ValueError in Python, matching the twin.
void check_topological(const at::Tensor& parents, const char* op) {
  const int64_t B = parents.size(0);
  const int64_t N = parents.size(1);
  const int64_t* par = parents.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 1; i < N; ++i) {
      const int64_t p = par[b * N + i];
      TORCH_CHECK_VALUE(p < i, op, ": tree is not topologically sorted: parents[", b, ", ", i,
                        "] = ", p);
    }
  }
}

TensorTriple empty_outputs(const at::Tensor& tokens) {
  const int64_t B = tokens.size(0);
  const int64_t N = tokens.size(1);
  auto opts = tokens.options().dtype(at::kLong);
  return {at::full({B, N}, -1, opts), at::full({B, N}, -1, opts), at::zeros({B}, opts)};
}

}  // namespace

TensorTriple accept_path_cpu(const at::Tensor& tokens, const at::Tensor& parents,
                                    const at::Tensor& target_choice) {
  const char* op = "phide::accept_path";
  check_greedy_inputs(tokens, parents, target_choice);
  check_cpu(tokens, op);
  check_topological(parents, op);
  auto [accept_nodes, out_tokens, accept_len] = empty_outputs(tokens);
  const int64_t B = tokens.size(0);
  const int64_t N = tokens.size(1);
  const int64_t* tok = tokens.data_ptr<int64_t>();
  const int64_t* par = parents.data_ptr<int64_t>();
  const int64_t* choice = target_choice.data_ptr<int64_t>();
  int64_t* nodes = accept_nodes.data_ptr<int64_t>();
  int64_t* out = out_tokens.data_ptr<int64_t>();
  int64_t* len = accept_len.data_ptr<int64_t>();
  // A greedy walk is O(N^2) integer compares: only large batches are worth threads.
  at::parallel_for(0, B, /*grain_size=*/256, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t o = b * N;
      len[b] = accept_path_one(N, tok + o, par + o, choice + o, nodes + o, out + o);
    }
  });
  return {accept_nodes, out_tokens, accept_len};
}

}  // namespace phide
