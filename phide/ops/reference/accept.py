"""The tree acceptance walk (greedy or sampled choices): the torch twin.

`accept_path_torch` is the reference semantics for the C++/CUDA walk
(`csrc/tree_accept.h`) and the CPU path when the extension is missing. `phide.ops` dispatches
between them.

Tree layout (per request b, fixed node count N so batches stack):
  tokens  [B, N] int64  node 0 is the root: the last committed token, not yet in the target cache
  parents [B, N] int64  parents[b, 0] = -1; parents[b, i] < i (topological order); a node i > 0
                        with parent -1 is padding and is never visited
Children of a node are visited in ascending node index (= descending draft score for phide's
tree builders).

Outputs:
  accept_nodes [B, N] int64  accepted path, root first, -1 padded
  out_tokens   [B, N] int64  accepted draft tokens, then the bonus token, -1 padded
  accept_len   [B]    int64  number of accepted draft tokens (bonus excluded)

The walk serves greedy and sampled decoding alike: `target_choice` is the target's argmax per
node, or, when sampling, its Gumbel-max sample with hash noise keyed by the seed, the output
position and the token (`phide.ops.gumbel_choices`). A child is then accepted exactly when its
token is the one the target draws, so the emitted tokens are those target-only decoding would
produce with the same seed.
"""

from __future__ import annotations

import torch

__all__ = [
    "children_lists",
    "accept_path_torch",
]


def children_lists(parents_row: list[int]) -> list[list[int]]:
    """Children of each node in ascending index; padding nodes (parent -1, index > 0) dropped."""
    n = len(parents_row)
    kids: list[list[int]] = [[] for _ in range(n)]
    for i in range(1, n):
        p = parents_row[i]
        if p < 0:
            continue
        if p >= i:
            raise ValueError(f"tree is not topologically sorted: parent[{i}] = {p}")
        kids[p].append(i)
    return kids


def _empty_outputs(B: int, N: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    accept_nodes = torch.full((B, N), -1, dtype=torch.int64, device=device)
    out_tokens = torch.full((B, N), -1, dtype=torch.int64, device=device)
    accept_len = torch.zeros(B, dtype=torch.int64, device=device)
    return accept_nodes, out_tokens, accept_len


def accept_path_torch(
    tokens: torch.Tensor, parents: torch.Tensor, target_choice: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy walk: accept a child while its token equals the target's choice at its parent.

    tokens, parents, target_choice: [B, N] int64 (target_choice[b, i] = the target's choice after
    node i: its argmax, or its Gumbel-max sample).

    On the device, with no host read (a read would be a host sync per verify): a node is taken when
    its token is its parent's choice and no lower-index sibling's is (the walk visits children in
    ascending index), and it is on the path when every node up to the root is taken, found by
    pointer jumping in ceil(log2 N) rounds of fixed shapes. The path is the taken nodes in
    ascending index (a child's index exceeds its parent's).
    """
    B, N = tokens.shape
    device = tokens.device
    idx = torch.arange(N, device=device)
    real = (parents >= 0) & (idx > 0)  # padding nodes (parent -1 past the root) are never visited
    # an asynchronous assert: raised at once on a CPU, a device-side assert on a GPU (no host read)
    torch._assert_async(~(real & (parents >= idx)).any(), "tree is not topologically sorted")
    parent = torch.where(real, parents, torch.zeros_like(parents))
    match = real & (tokens == target_choice.gather(1, parent))
    # a lower-index sibling matching first wins
    earlier = (parent.unsqueeze(2) == parent.unsqueeze(1)) & (idx.view(1, 1, N) < idx.view(1, N, 1))
    taken = match & ~(earlier & match.unsqueeze(1)).any(-1)
    taken[:, 0] = True  # the root
    on_path, up = taken.clone(), parent.clone()
    for _ in range(max(1, (N - 1).bit_length())):  # after round r: the 2**r nearest ancestors checked
        on_path = on_path & on_path.gather(1, up)
        up = up.gather(1, up)
    accept_len = on_path.sum(1) - 1
    order = torch.where(on_path, idx, idx + N).sort(1).values  # the path first, in ascending index
    accept_nodes = torch.where(order < N, order, torch.full_like(order, -1))
    nodes = accept_nodes.clamp(min=0)
    slot = idx.view(1, N)
    n = accept_len.view(B, 1)
    drafted = tokens.gather(1, nodes.roll(-1, 1))  # slot k < n: the path's (k+1)-th node's token
    bonus = target_choice.gather(1, nodes.gather(1, n))  # the choice after the last accepted node
    out_tokens = torch.where(slot < n, drafted, torch.where(slot == n, bonus, torch.full_like(drafted, -1)))
    return accept_nodes, out_tokens, accept_len
