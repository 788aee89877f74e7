"""KV commit after verification: move each request's accepted path to the front of its tree
slots, in place (torch twin: phide.ops.reference.kv_commit.commit_accepted_path, same signature/semantics).

Layout: k_cache, v_cache [L, B, H, S, D]; tree node j of request b sits at slot base[b] + j, and
after the commit node accept_nodes[b, i] sits at slot base[b] + i for i <= accept_len[b].

One launch moves K and V of every layer. Each program owns one (layer, batch, head, D-block) of
one cache, so programs touch disjoint memory. Inside a program the moves overlap (path [0, 2, 3]
reads slot 2 and writes slot 2), so the program loads ALL its source rows, then a barrier, then
stores: the rows of a tile live in different threads, and without the barrier one warp could
store slot 2 before another warp has read it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from phide.triton_kernels.launch import Launch

try:  # guarded: `import phide` (and this module) must work on machines without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on triton-less installs
    triton = None

__all__ = ["MAX_PATH", "CommitConfig", "commit_config", "kv_commit_launches", "kv_commit_triton"]

MAX_PATH = 64  # accept_nodes width bound: the whole path of a request is one register tile
_TILE_ELEMS = 4096  # BLOCK_M * BLOCK_D cap, keeps the tile in registers

if triton is not None:

    @triton.jit
    def _move_rows(
        cache_ptr,  # [L, B, H, S, D] one cache
        l, b, h,  # int64 scalars: the program's (layer, batch, head)
        src, dst,  # [BLOCK_M] int64 source / destination slots
        move,  # [BLOCK_M] bool, rows to move
        offs_d,  # [BLOCK_D] int32 head-dim offsets of this program
        D, s_l, s_b, s_h, s_s, s_d,  # head dim and the cache's 5 strides (elements)
    ):
        head = cache_ptr + l * s_l + b * s_b + h * s_h
        mask = move[:, None] & (offs_d < D)[None, :]
        col = offs_d.to(tl.int64)[None, :] * s_d
        tile = tl.load(head + src[:, None] * s_s + col, mask=mask)
        tl.debug_barrier()  # every source row read before any destination row is written
        tl.store(head + dst[:, None] * s_s + col, tile, mask=mask)

    # S (the cache's length) and W (the tree's size) change per request: not specialised on, so
    # one compiled variant per BLOCK_M serves them all (precompile.py builds them up front).
    @triton.jit(do_not_specialize=["S", "W"])
    def _kv_commit_kernel(
        k_ptr,  # [L, B, H, S, Dk]
        v_ptr,  # [L, B, H, S, Dv] (may be k_ptr with grid axis 2 == 1: one cache only)
        base_ptr,  # [B] int64, slot of tree node 0 of request b
        nodes_ptr,  # [B, W] int64, accepted node ids, root first, -1 padded (contiguous)
        alen_ptr,  # [B] int64, accepted drafts: path = nodes[b, 0 .. alen[b]]
        B, H, S, W,
        Dk, sk_l, sk_b, sk_h, sk_s, sk_d,
        Dv, sv_l, sv_b, sv_h, sv_s, sv_d,
        BLOCK_M: tl.constexpr,  # next_pow2(W) <= MAX_PATH
        BLOCK_D: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)  # flattened (layer, batch, head)
        h = pid % H
        b = (pid // H) % B
        l = pid // (H * B)
        offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)

        steps = tl.arange(0, BLOCK_M)
        alen = tl.load(alen_ptr + b)
        base = tl.load(base_ptr + b)
        on_path = (steps <= alen) & (steps < W)  # padding past accept_len + 1 stays untouched
        nodes = tl.load(nodes_ptr + b * W + steps, mask=on_path, other=0)
        src = base + nodes
        dst = base + steps
        # Identity moves (the root, unchanged prefixes) are skipped; out-of-range slots are
        # skipped instead of corrupting memory (the torch twin raises on them).
        move = on_path & (nodes != steps) & (src >= 0) & (src < S) & (dst < S)

        if tl.program_id(2) == 0:
            _move_rows(k_ptr, l, b, h, src, dst, move, offs_d, Dk, sk_l, sk_b, sk_h, sk_s, sk_d)
        else:
            _move_rows(v_ptr, l, b, h, src, dst, move, offs_d, Dv, sv_l, sv_b, sv_h, sv_s, sv_d)


class CommitConfig(NamedTuple):
    block_m: int  # path rows: next_pow2(W) <= MAX_PATH
    block_d: int  # head-dim columns per program
    num_warps: int
    num_stages: int


def commit_config(W: int, D: int) -> CommitConfig:
    """The launcher's choices for a path width W and head dim D (the larger of k's and v's): a
    pure function of shapes (precompile.py and the tests call it too)."""
    block_m = triton.next_power_of_2(W)
    block_d = min(triton.next_power_of_2(D), max(16, _TILE_ELEMS // block_m))
    return CommitConfig(block_m=block_m, block_d=block_d, num_warps=4, num_stages=3)


def _launch(k, v, base, nodes, alen, n_caches: int) -> Launch:
    L, B, H, S, _ = k.shape
    W = nodes.shape[1]
    d_max = max(k.shape[4], v.shape[4])
    cfg = commit_config(W, d_max)
    grid = (L * B * H, triton.cdiv(d_max, cfg.block_d), n_caches)
    return Launch(
        _kv_commit_kernel, grid,
        (k, v, base, nodes, alen, B, H, S, W, k.shape[4], *k.stride(), v.shape[4], *v.stride()),
        dict(BLOCK_M=cfg.block_m, BLOCK_D=cfg.block_d, num_warps=cfg.num_warps, num_stages=cfg.num_stages),
    )


def kv_commit_launches(k_cache, v_cache, base, accept_nodes, accept_len) -> list[Launch]:
    """The launches of kv_commit_triton without running them (arguments as there). Works on
    meta tensors (precompile.py)."""
    if k_cache.dim() != 5 or v_cache.dim() != 5:
        raise ValueError("k_cache and v_cache must be [L, B, H, S, D]")
    if accept_nodes.dim() != 2:
        raise ValueError(f"accept_nodes must be [B, W], got {tuple(accept_nodes.shape)}")
    B, W = accept_nodes.shape
    if W > MAX_PATH:
        raise ValueError(f"accept_nodes width {W} exceeds MAX_PATH={MAX_PATH}")
    if k_cache.shape[1] != B or v_cache.shape[1] != B:
        raise ValueError("cache batch dim must match accept_nodes")
    if B == 0 or W <= 1:
        return []  # nothing can move: the root is already in place
    dev = k_cache.device
    nodes = accept_nodes.to(device=dev, dtype=torch.int64).contiguous()
    base = base.to(device=dev, dtype=torch.int64).contiguous()
    alen = accept_len.to(device=dev, dtype=torch.int64).contiguous()
    if k_cache.shape[:4] == v_cache.shape[:4] and k_cache.numel() and v_cache.numel():
        return [_launch(k_cache, v_cache, base, nodes, alen, n_caches=2)]
    # Differing L/H/S (or an empty cache): one launch per cache; with grid axis 2 == 1 only the
    # k branch runs, so each cache is passed as both pointers.
    return [_launch(cache, cache, base, nodes, alen, n_caches=1) for cache in (k_cache, v_cache) if cache.numel()]


def kv_commit_triton(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    base: torch.Tensor,
    accept_nodes: torch.Tensor,
    accept_len: torch.Tensor,
) -> None:
    """Triton twin of commit_accepted_path, in place, no host sync.

    k_cache, v_cache: [L, B, H, S, D] (any strides; D and dtype may differ between them).
    base: [B] int64; accept_nodes: [B, W] int64 (root first, -1 padded, W <= MAX_PATH);
    accept_len: [B] int64. For i <= accept_len[b]: slot base[b] + i <- slot
    base[b] + accept_nodes[b, i]; every other slot keeps its value. Requires base[b] + W <= S
    (out-of-range moves are skipped rather than raising)."""
    if triton is None:
        raise RuntimeError("kv_commit_triton needs triton; use commit_accepted_path")
    for launch in kv_commit_launches(k_cache, v_cache, base, accept_nodes, accept_len):
        launch()
