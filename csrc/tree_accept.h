// Tree acceptance walk for ONE request: torch-free, host and device callable.
//
// accept_path_one is the compiled twin of `accept_path_torch` in
// phide/ops/reference/accept.py and must reproduce it exactly: same traversal order, same
// tie-breaking (the first matching sibling wins). Any change here needs the same change there
// (and tests/test_ext.py compares the two on random trees). Sampling needs no other walk: the
// target's choice per node is its Gumbel-max sample (phide.ops.gumbel_choices), then this walk.
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
//   out_tokens   [N]   accepted draft tokens, then the bonus token (the target's choice there)
//   return value       number of accepted draft tokens (bonus excluded)
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
//   target_choice [N] int64: the target's choice after node i (argmax, or Gumbel-max sample).
PHIDE_HOST_DEVICE inline int64_t accept_path_one(int64_t N, const int64_t* tokens,
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

}  // namespace phide
