// Input validation shared by the CPU and CUDA glue of the tree_accept ops (torch side).
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
  const char* op = "phide::tree_accept_greedy";
  check_tree_inputs(tokens, parents, op);
  check_tensor(target_choice, op, "target_choice", at::kLong, 2);
  TORCH_CHECK(target_choice.sizes() == tokens.sizes(), op, ": target_choice must be [B, N] = ",
              tokens.sizes(), ", got ", target_choice.sizes());
  check_same_device(tokens, target_choice, op, "target_choice");
}

inline void check_stochastic_inputs(const at::Tensor& tokens, const at::Tensor& parents,
                                    const at::Tensor& target_probs, const at::Tensor& coins,
                                    const at::Tensor& final_coins) {
  const char* op = "phide::tree_accept_stochastic";
  check_tree_inputs(tokens, parents, op);
  const int64_t B = tokens.size(0);
  const int64_t N = tokens.size(1);
  check_tensor(target_probs, op, "target_probs", at::kFloat, 3);
  TORCH_CHECK(target_probs.size(0) == B && target_probs.size(1) == N && target_probs.size(2) >= 1,
              op, ": target_probs must be [B, N, V] with [B, N] = ", tokens.sizes(),
              " and V >= 1, got ", target_probs.sizes());
  check_tensor(coins, op, "coins", at::kFloat, 2);
  TORCH_CHECK(coins.sizes() == tokens.sizes(), op, ": coins must be [B, N] = ", tokens.sizes(),
              ", got ", coins.sizes());
  check_tensor(final_coins, op, "final_coins", at::kFloat, 1);
  TORCH_CHECK(final_coins.size(0) == B, op, ": final_coins must be [B] = [", B, "], got ",
              final_coins.sizes());
  check_same_device(tokens, target_probs, op, "target_probs");
  check_same_device(tokens, coins, op, "coins");
  check_same_device(tokens, final_coins, op, "final_coins");
}

}  // namespace phide
