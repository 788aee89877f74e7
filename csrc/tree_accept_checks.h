// Input validation shared by the CPU and CUDA glue of the accept_path op (torch side).
// Violations raise RuntimeError in Python (TORCH_CHECK) with the op name and what was expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace phide {

inline void check_tensor(const at::Tensor& t, const char* op, const char* name,
                         at::ScalarType dtype, int64_t dim) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must have ", dim, " dims, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

inline void check_same_device(const at::Tensor& ref, const at::Tensor& t, const char* op,
                              const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but tokens are on ", ref.device());
}

// tokens, parents: [B, N] int64, N >= 1 (the root).
inline void check_tree_inputs(const at::Tensor& tokens, const at::Tensor& parents, const char* op) {
  check_tensor(tokens, op, "tokens", at::kLong, 2);
  check_tensor(parents, op, "parents", at::kLong, 2);
  TORCH_CHECK(parents.sizes() == tokens.sizes(), op, ": parents must be [B, N] = ", tokens.sizes(),
              ", got ", parents.sizes());
  TORCH_CHECK(tokens.size(1) >= 1, op, ": a tree needs at least its root (N >= 1), got N = 0");
  check_same_device(tokens, parents, op, "parents");
}

inline void check_greedy_inputs(const at::Tensor& tokens, const at::Tensor& parents,
                                const at::Tensor& target_choice) {
  const char* op = "phide::accept_path";
  check_tree_inputs(tokens, parents, op);
  check_tensor(target_choice, op, "target_choice", at::kLong, 2);
  TORCH_CHECK(target_choice.sizes() == tokens.sizes(), op, ": target_choice must be [B, N] = ",
              tokens.sizes(), ", got ", target_choice.sizes());
  check_same_device(tokens, target_choice, op, "target_choice");
}

}  // namespace phide
