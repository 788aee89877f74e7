// Tree acceptance walks for ONE request: torch-free, host and device callable.
//
// These functions are the compiled twins of `tree_accept_greedy_torch` and
// `tree_accept_stochastic_torch` in phide/spec/verify.py and must reproduce them bit for bit:
// same traversal order, same float64 accumulation order, same tie-breaking. Any change here needs
// the same change there (and tests/test_ext.py compares the two on random trees).
//
// Tree layout (one request):
//   tokens  [N] int64  node 0 is the root (the last committed token)
//   parents [N] int64  parents[0] is ignored; parents[i] < i; a node i > 0 with a negative parent
//                      is padding and never visited. Children are visited in ascending node index,
//                      found by scanning parents[] (no child lists, no allocation, no recursion).
//                      A node with parents[i] >= i is never visited (the CPU glue rejects such trees
//                      up front, like the twin; the CUDA path cannot raise and ignores them).
// Outputs (width N, pre-filled with -1 by the caller):
//   accept_nodes [N]   accepted path, root first
//   out_tokens   [N]   accepted draft tokens, then the correction / bonus token
//   return value       number of accepted draft tokens (bonus excluded)
//
// Floating point: only IEEE adds, one multiply and compares, in double; build without fast-math
// and without FMA contraction (setup.py passes -ffp-contract=off / --fmad=false).
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define PHIDE_HOST_DEVICE __host__ __device__
#else
#define PHIDE_HOST_DEVICE
#endif

namespace phide {

// Next child of `parent` with index > `after`, or -1. First child: tree_next_child(.., p, p).
PHIDE_HOST_DEVICE inline int64_t tree_next_child(int64_t N, const int64_t* parents, int64_t parent,
                                                 int64_t after) {
  for (int64_t c = after + 1; c < N; ++c) {
    if (parents[c] == parent) return c;
  }
  return -1;
}

// Greedy walk: accept a child while its token equals the target's choice at its parent.
//   target_choice [N] int64: target argmax after node i.
PHIDE_HOST_DEVICE inline int64_t tree_accept_greedy_one(int64_t N, const int64_t* tokens,
                                                        const int64_t* parents,
                                                        const int64_t* target_choice,
                                                        int64_t* accept_nodes, int64_t* out_tokens) {
  int64_t last = 0;
  int64_t n = 0;
  accept_nodes[0] = 0;
  for (;;) {  // `last` strictly increases, so at most N - 1 levels
    const int64_t want = target_choice[last];
    int64_t next = -1;
    for (int64_t c = tree_next_child(N, parents, last, last); c >= 0;
         c = tree_next_child(N, parents, last, c)) {
      if (tokens[c] == want) {
        next = c;
        break;
      }
    }
    if (next < 0) break;
    ++n;
    accept_nodes[n] = next;
    out_tokens[n - 1] = tokens[next];
    last = next;
  }
  out_tokens[n] = target_choice[last];
  return n;
}

// Ascending insertion sort of a short array (at most N entries).
PHIDE_HOST_DEVICE inline void tree_sort_small(int64_t* a, int64_t n) {
  for (int64_t i = 1; i < n; ++i) {
    const int64_t key = a[i];
    int64_t j = i - 1;
    while (j >= 0 && a[j] > key) {
      a[j + 1] = a[j];
      --j;
    }
    a[j + 1] = key;
  }
}

// First index of the maximum, a NaN counting as the maximum (torch.argmax semantics).
PHIDE_HOST_DEVICE inline int64_t tree_argmax_first(const float* row, int64_t V) {
  int64_t best = 0;
  float best_val = row[0];
  for (int64_t i = 1; i < V; ++i) {
    if (best_val != best_val) break;  // NaN already found: it wins
    const float v = row[i];
    if (v != v || v > best_val) {
      best = i;
      best_val = v;
    }
  }
  return best;
}

// Residual mass of token i: 0 if rejected (sorted[] ascending, cursor *k advanced monotonically),
// else row[i] clamped at 0 from below. A NaN stays NaN, like torch.clamp(min=0).
PHIDE_HOST_DEVICE inline double tree_residual_at(const float* row, int64_t i, const int64_t* sorted,
                                                 int64_t n_sorted, int64_t* k) {
  while (*k < n_sorted && sorted[*k] < i) ++*k;
  if (*k < n_sorted && sorted[*k] == i) return 0.0;
  const double r = static_cast<double>(row[i]);
  return r < 0.0 ? 0.0 : r;
}

// Inverse-CDF sample of `row` [V] with the `rejected` tokens zeroed (sample_residual_torch):
// first index whose float64 running sum exceeds coin * total (strict), else the last index with
// positive residual mass, else (total not > 0, NaN included) the row's argmax.
// `rejected` holds distinct valid ids and is sorted in place (it is scratch).
PHIDE_HOST_DEVICE inline int64_t tree_sample_residual_one(const float* row, int64_t V,
                                                          int64_t* rejected, int64_t n_rejected,
                                                          float coin) {
  tree_sort_small(rejected, n_rejected);
  double total = 0.0;
  int64_t k = 0;
  for (int64_t i = 0; i < V; ++i) total += tree_residual_at(row, i, rejected, n_rejected, &k);
  if (!(total > 0.0)) return tree_argmax_first(row, V);
  const double threshold = static_cast<double>(coin) * total;
  double cum = 0.0;
  int64_t last_positive = -1;
  k = 0;
  for (int64_t i = 0; i < V; ++i) {  // same sequence of adds as above: same partial sums
    const double r = tree_residual_at(row, i, rejected, n_rejected, &k);
    cum += r;
    if (cum > threshold) return i;
    if (r > 0.0) last_positive = i;
  }
  return last_positive >= 0 ? last_positive : tree_argmax_first(row, V);
}

// Lossless target-only stochastic walk (SGLang/EAGLE style), see phide/spec/verify.py.
//   target_probs [N, V] float32  row i = target distribution after node i
//   coins        [N]    float32  coins[i] decides the level below node i
//   final_coin          float32  correction / bonus draw
//   rejected     [N]    int64    scratch (rejected sibling tokens of the current level)
// Per level: siblings in ascending index; invalid ids (x < 0 || x >= V) and tokens already
// rejected at this level are skipped; acc += p(x) in double; accept the first with p(x) > 0 and
// u < acc; otherwise x is rejected. When a level rejects everything, the correction is sampled
// from the last accepted node's row with that level's rejected tokens zeroed.
PHIDE_HOST_DEVICE inline int64_t tree_accept_stochastic_one(
    int64_t N, const int64_t* tokens, const int64_t* parents, const float* target_probs, int64_t V,
    const float* coins, float final_coin, int64_t* accept_nodes, int64_t* out_tokens,
    int64_t* rejected) {
  int64_t last = 0;
  int64_t n = 0;
  int64_t n_rejected = 0;
  accept_nodes[0] = 0;
  for (;;) {
    const float* row = target_probs + last * V;
    const double u = static_cast<double>(coins[last]);
    double acc = 0.0;
    int64_t chosen = -1;
    n_rejected = 0;
    for (int64_t c = tree_next_child(N, parents, last, last); c >= 0;
         c = tree_next_child(N, parents, last, c)) {
      const int64_t x = tokens[c];
      if (x < 0 || x >= V) continue;  // invalid id: carries no mass of its own
      bool duplicate = false;
      for (int64_t j = 0; j < n_rejected; ++j) duplicate = duplicate || rejected[j] == x;
      if (duplicate) continue;  // duplicate sibling: its mass was already tested
      const double px = static_cast<double>(row[x]);
      acc += px;
      if (px > 0.0 && u < acc) {
        chosen = c;
        break;
      }
      rejected[n_rejected++] = x;  // at most (number of children) < N entries
    }
    if (chosen < 0) break;
    ++n;
    accept_nodes[n] = chosen;
    out_tokens[n - 1] = tokens[chosen];
    last = chosen;
  }
  out_tokens[n] =
      tree_sample_residual_one(target_probs + last * V, V, rejected, n_rejected, final_coin);
  return n;
}

}  // namespace phide
