"""Tree-verify attention (torch twin: phide.ops.reference.tree_attention.tree_attention_torch, same
signature and semantics; the visibility rule is documented there).

Per (request b, KV head) the N tree nodes times the G query heads of the GQA group form
M = N * G query rows (row m = node * G + g), packed into one tile so every K/V row that is read
serves all of them (the GQA group shares one K/V read). Two launches:

1. _prefix_partial_kernel, grid (B * Hkv, M blocks, splits): split-K over the committed prefix
   rows [0, prefix_len[b]). Each program streams its chunk once, with no mask (the prefix is
   visible to every node, so it carries no mask traffic), and writes its partial result per row:
   O normalised by its own softmax sum, and the log2-sum-exp2 of its scores (-inf: empty chunk).
2. _tail_merge_kernel, grid (B * Hkv, M blocks): log-sum-exp merges the splits, then attends the
   tree's own rows tree_start[b] + j (j < N) under the ancestor bitmask (bit j of
   ancestors[b, node]), merges that too and writes O in q's dtype; padding nodes get zeros.

The prefix is read once per (request, KV head) when M <= BLOCK_M (fp16/bf16: 64 rows for
D <= 128, e.g. 16 nodes x 4 heads); larger M takes several M blocks, each reading it again.
Softmax and accumulation run in fp32 in the exp2 domain (scale folded with log2 e). fp32 inputs
use IEEE dots (no TF32), so fp32 results match the twin to rounding; fp16/bf16 round P to the
input dtype for the P @ V dot, as flash attention does. Split count and block sizes depend on
shapes only (no host sync), and never on N: a node's row is reduced in the same order whether
it is verified alone (a decode) or inside a tree (`attention_config` says why that takes fixed
tiles).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from phide.formats import MAX_TREE_NODES
from phide.triton_kernels.launch import Launch

try:  # guarded: `import phide` (and this module) must work on machines without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on triton-less installs
    triton = None

__all__ = ["MAX_HEAD_DIM", "MAX_TREE_NODES", "AttentionConfig", "attention_config", "tree_attention_launches",
           "tree_attention_triton"]

MAX_HEAD_DIM = 256  # q, the accumulator and a K/V tile of BLOCK_D columns stay in registers

_MAX_SPLITS = 16
_MIN_SPLIT_ROWS = 256  # below this a split costs more in merging than it saves
_LOG2E = 1.4426950408889634

if triton is not None:

    @triton.jit
    def _dot(a, b, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        # UPCAST: Triton's CPU interpreter multiplies bf16 operands as raw bits (numpy has no
        # bf16), so there the operands go to fp32 first; bf16 x bf16 products are exact in fp32,
        # so this is the GPU's bf16 MMA math up to summation order.
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        return tl.dot(a, b, input_precision=DOT_PRECISION)

    @triton.jit
    def _load_q(q_ptr, b, kvh, rows, row_ok, offs_d, d_ok, G, sq_b, sq_h, sq_n, sq_d):
        # Rows m = node * G + g of one KV head's group -> a [BLOCK_M, BLOCK_D] tile (zero padded).
        node = (rows // G).to(tl.int64)
        head = (kvh * G + rows % G).to(tl.int64)
        ptrs = q_ptr + b * sq_b + head[:, None] * sq_h + node[:, None] * sq_n + offs_d[None, :] * sq_d
        return tl.load(ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    # Per-call sizes (N, S, split count and rows) are not specialised on (== 1, % 16): one compiled
    # variant serves every tree and cache length, so precompile.py can build them all up front.
    @triton.jit(do_not_specialize=["N", "split_rows"])
    def _prefix_partial_kernel(
        q_ptr,  # [B, Hq, N, D] (any strides)
        k_ptr,  # [B, Hkv, S, D] one layer's cache (any strides)
        v_ptr,  # [B, Hkv, S, D]
        prefix_ptr,  # [B] int64, rows [0, prefix_len) are visible to every node
        o_part_ptr,  # [B * Hkv, splits, M, D] fp32 contiguous: each split's normalised O
        lse_part_ptr,  # [B * Hkv, splits, M] fp32: each split's log2-sum-exp2 (-inf: empty)
        Hkv, G, N, D,
        split_rows,  # rows per split, a multiple of BLOCK_N
        qk_scale,  # fp32: scale * log2(e)
        sq_b, sq_h, sq_n, sq_d,
        sk_b, sk_h, sk_s, sk_d,
        sv_b, sv_h, sv_s, sv_d,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no TF32)
        UPCAST: tl.constexpr,  # bf16 under the interpreter (see _dot)
    ):
        pid = tl.program_id(0).to(tl.int64)  # flattened (request, kv head)
        b = pid // Hkv
        kvh = pid % Hkv
        split = tl.program_id(2)
        M = N * G
        rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        q = _load_q(q_ptr, b, kvh, rows, row_ok, offs_d, d_ok, G, sq_b, sq_h, sq_n, sq_d)

        k_head = k_ptr + b * sk_b + kvh * sk_h
        v_head = v_ptr + b * sv_b + kvh * sv_h
        lo = split.to(tl.int64) * split_rows  # int64 like hi: one loop-variable type
        hi = tl.load(prefix_ptr + b)
        # The last chunk also takes any prefix rows past the planned ones: the launcher plans
        # over S - N rows, and only padding nodes may lie past S (so a prefix may reach into them).
        if split < tl.num_programs(2) - 1:
            hi = tl.minimum(lo + split_rows, hi)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(lo, hi, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < hi
            kv_mask = col_ok[:, None] & d_ok[None, :]
            cols64 = cols.to(tl.int64)[:, None]
            k = tl.load(k_head + cols64 * sk_s + offs_d[None, :] * sk_d, mask=kv_mask, other=0.0)
            s = _dot(q, tl.trans(k), DOT_PRECISION, UPCAST) * qk_scale
            s = tl.where(col_ok[None, :], s, float("-inf"))
            # Inside the loop every row sees at least one finite score, so m_new is finite.
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_head + cols64 * sv_s + offs_d[None, :] * sv_d, mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PRECISION, UPCAST)
            m_i = m_new

        seen = l_i > 0
        l_safe = tl.where(seen, l_i, 1.0)
        part = (pid * tl.num_programs(2) + split) * M + rows  # [BLOCK_M] int64
        o_ptrs = o_part_ptr + part[:, None] * D + offs_d[None, :]
        tl.store(o_ptrs, acc / l_safe[:, None], mask=row_ok[:, None] & d_ok[None, :])
        lse = tl.where(seen, m_i + tl.log2(l_safe), float("-inf"))
        tl.store(lse_part_ptr + part, lse, mask=row_ok)

    @triton.jit(do_not_specialize=["N", "S", "n_splits"])
    def _tail_merge_kernel(
        q_ptr,  # [B, Hq, N, D]
        k_ptr,  # [B, Hkv, S, D]
        v_ptr,  # [B, Hkv, S, D]
        o_ptr,  # [B, Hq, N, D] out, q's dtype
        tree_start_ptr,  # [B] int64, cache row of tree node 0
        anc_ptr,  # [B, N] int64 contiguous, ancestor-or-self bitmask per node
        n_nodes_ptr,  # [B] int64, real nodes; the rest is padding (output 0)
        o_part_ptr,  # [B * Hkv, splits, M, D] fp32 from _prefix_partial_kernel
        lse_part_ptr,  # [B * Hkv, splits, M] fp32
        Hkv, G, N, D, S, n_splits,
        qk_scale,
        sq_b, sq_h, sq_n, sq_d,
        sk_b, sk_h, sk_s, sk_d,
        sv_b, sv_h, sv_s, sv_d,
        so_b, so_h, so_n, so_d,
        BLOCK_M: tl.constexpr,
        BLOCK_T: tl.constexpr,  # >= N (the launcher: MAX_TREE_NODES, whatever N)
        BLOCK_D: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        b = pid // Hkv
        kvh = pid % Hkv
        M = N * G
        rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        node = rows // G
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        tile_ok = row_ok[:, None] & d_ok[None, :]

        # 1. LSE-merge the prefix splits. -inf entries (empty splits) get weight 0; m_safe keeps
        #    exp2(-inf - -inf) from producing NaN while nothing has been seen yet.
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for split in range(0, n_splits):
            part = (pid * n_splits + split) * M + rows
            lse_s = tl.load(lse_part_ptr + part, mask=row_ok, other=float("-inf"))
            o_s = tl.load(o_part_ptr + part[:, None] * D + offs_d[None, :], mask=tile_ok, other=0.0)
            m_new = tl.maximum(m_i, lse_s)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            beta = tl.exp2(lse_s - m_safe)
            acc = acc * alpha[:, None] + o_s * beta[:, None]
            l_i = l_i * alpha + beta
            m_i = m_new

        # 2. The tree's own rows under the ancestor bitmask.
        q = _load_q(q_ptr, b, kvh, rows, row_ok, offs_d, d_ok, G, sq_b, sq_h, sq_n, sq_d)
        t = tl.arange(0, BLOCK_T)
        slot = tl.load(tree_start_ptr + b) + t
        t_ok = (t < N) & (slot < S)
        kv_mask = t_ok[:, None] & d_ok[None, :]
        k_t = tl.load(k_ptr + b * sk_b + kvh * sk_h + slot[:, None] * sk_s + offs_d[None, :] * sk_d,
                      mask=kv_mask, other=0.0)
        v_t = tl.load(v_ptr + b * sv_b + kvh * sv_h + slot[:, None] * sv_s + offs_d[None, :] * sv_d,
                      mask=kv_mask, other=0.0)
        anc = tl.load(anc_ptr + b * N + node, mask=row_ok, other=0)
        # Arithmetic shift: bit 63 (the sign bit) still reads as 1.
        visible = (((anc[:, None] >> t.to(tl.int64)[None, :]) & 1) != 0) & t_ok[None, :]
        s = _dot(q, tl.trans(k_t), DOT_PRECISION, UPCAST) * qk_scale
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _dot(p.to(v_t.dtype), v_t, DOT_PRECISION, UPCAST)

        real = row_ok & (node < tl.load(n_nodes_ptr + b)) & (l_i > 0)
        out = acc / tl.where(real, l_i, 1.0)[:, None]
        out = tl.where(real[:, None], out, 0.0)
        head = (kvh * G + rows % G).to(tl.int64)
        o_ptrs = o_ptr + b * so_b + head[:, None] * so_h + node.to(tl.int64)[:, None] * so_n + offs_d[None, :] * so_d
        tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=tile_ok)

    # Under TRITON_INTERPRET=1 (decided when this module is imported) @triton.jit returns an
    # interpreter object instead of a JITFunction.
    _INTERPRETED = not isinstance(_prefix_partial_kernel, triton.runtime.JITFunction)


class AttentionConfig(NamedTuple):
    """What the launcher picks for one call: tile sizes, prefix split-K and launch options."""

    block_m: int  # query rows (node x head) per program
    block_n: int  # prefix K/V rows per loop step
    block_d: int  # head dim, padded to a power of two
    block_t: int  # tree rows of the tail: MAX_TREE_NODES, whatever N
    splits: int  # prefix chunks (grid axis 2 of the prefix kernel)
    split_rows: int  # rows per chunk, a multiple of block_n: chunk i is [i * split_rows, ...)
    prefix_warps: int
    prefix_stages: int
    tail_warps: int
    tail_stages: int


def attention_config(dtype: torch.dtype, D: int, N: int, S: int, *, num_splits: int | None = None) -> AttentionConfig:
    """The launcher's choices for N tree nodes of head dim D over a cache of S rows: a pure
    function of shapes and dtype (no tensors, no device), so precompile.py and the tests call it
    too. num_splits overrides the split count (tests: several splits on short caches).

    Nothing that orders a row's reduction depends on N. A row's result is a function of its q,
    the K/V rows and the tile shapes only: its scores, max, sum and P @ V are reductions within
    the row, and every row of a tile goes through the same instruction sequence, so which rows
    share a tile, how many M blocks run and where the row sits are invisible to it. The tile
    shapes do fix that sequence, though: on sm_90 BLOCK_M = 64 compiles to wgmma with whole rows
    per warp, BLOCK_M < 64 to mma.sync with a row's columns spread over the warps (its sum then
    crosses warps), and BLOCK_T sets the tail dot's shape. So BLOCK_M, BLOCK_N, BLOCK_T and the
    warps are fixed per (dtype, head dim), and the prefix chunks come from the S - N rows before
    the tree (the prefix, in the engine's layout): a decode (N = 1) and a 24-node verify over the
    same prefix reduce each row identically."""
    block_d = max(16, triton.next_power_of_2(D))
    block_n = 64 if block_d <= 128 else 32
    if dtype == torch.float32:
        # IEEE fp32 dots run on FMAs with both operands in registers: 32 rows x 8 warps keep the
        # prefix kernel spill-free on sm_90 (64 rows spill 15-30 KB per thread); the tail still
        # spills up to ~3 KB at D = 128 (profiling/sm90_compile.py reports it; fp32 is not gated).
        block_m, prefix_warps, tail_warps, stages = 32, 8, 8, 2  # fp32 tiles: 3 stages pass A100's smem
    else:
        # 64 rows: one wgmma row block, and the prefix is read once for up to 64 node x head rows.
        # 4 warps hold that for D = 64 (< 165 registers); for D = 128 the tail sits at the
        # 255-register cap with 4 (one edit from spilling): 8 warps bring both kernels under 190.
        block_m = 64 if block_d <= 128 else 32
        prefix_warps = tail_warps = 8 if block_d >= 128 else 4
        stages = 3
    rows = max(S - N, 0)  # rows before the tree: the prefix, in the engine's layout
    if num_splits:
        splits = num_splits
        split_rows = triton.cdiv(triton.cdiv(max(S, 1), splits), block_n) * block_n
    else:
        # Chunks of at least _MIN_SPLIT_ROWS rows, at most _MAX_SPLITS of them; the GPU is filled
        # by (request, KV head) x chunks, never by sizing chunks from N or the batch.
        split_rows = triton.cdiv(max(_MIN_SPLIT_ROWS, triton.cdiv(rows, _MAX_SPLITS)), block_n) * block_n
        splits = max(1, triton.cdiv(rows, split_rows))
    return AttentionConfig(
        block_m=block_m, block_n=block_n, block_d=block_d, block_t=MAX_TREE_NODES,
        splits=splits, split_rows=split_rows,
        prefix_warps=prefix_warps, prefix_stages=stages, tail_warps=tail_warps, tail_stages=stages,
    )


def _check(q, k_cache, v_cache, ancestors) -> None:
    if q.dim() != 4 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError("q must be [B, Hq, N, D] and k_cache, v_cache [B, Hkv, S, D] of one shape")
    B, Hq, N, D = q.shape
    _, Hkv, _, Dk = k_cache.shape
    if k_cache.shape[0] != B or Dk != D or Hq % Hkv:
        raise ValueError(f"q {tuple(q.shape)} does not fit the cache {tuple(k_cache.shape)}")
    if N > MAX_TREE_NODES:
        raise ValueError(f"{N} tree nodes: the ancestor bitmask holds at most {MAX_TREE_NODES}")
    if D > MAX_HEAD_DIM:
        raise ValueError(f"head dim {D} > {MAX_HEAD_DIM}: use tree_attention_torch")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or k_cache.dtype != q.dtype:
        raise ValueError(f"q and the cache must share one of fp32/fp16/bf16, got {q.dtype}, {k_cache.dtype}")
    if ancestors.shape != (B, N):
        raise ValueError(f"ancestors must be [B, N] = {(B, N)}, got {tuple(ancestors.shape)}")


def tree_attention_launches(q, k_cache, v_cache, prefix_len, tree_start, ancestors, n_nodes, scale=None, *,
                            num_splits=None) -> tuple[torch.Tensor, list[Launch]]:
    """(out, launches) of tree_attention_triton without running them (arguments as there):
    `out` is filled once every launch has run. Works on meta tensors (precompile.py)."""
    _check(q, k_cache, v_cache, ancestors)
    B, Hq, N, D = q.shape
    _, Hkv, S, _ = k_cache.shape
    # [B, N, Hq, D] in memory: the decoder's o_proj reads the heads of a node side by side, so its
    # transpose back is a view, not a copy per layer
    out = torch.empty(B, N, Hq, D, dtype=q.dtype, device=q.device).transpose(1, 2)
    if out.numel() == 0:
        return out, []
    dev = q.device
    prefix_len, tree_start, n_nodes = (t.to(device=dev, dtype=torch.int64).reshape(-1).contiguous()
                                       for t in (prefix_len, tree_start, n_nodes))
    ancestors = ancestors.to(device=dev, dtype=torch.int64).contiguous()

    G = Hq // Hkv
    M = N * G
    cfg = attention_config(q.dtype, D, N, S, num_splits=num_splits)
    m_blocks = triton.cdiv(M, cfg.block_m)
    o_part = torch.empty(B * Hkv, cfg.splits, M, D, dtype=torch.float32, device=dev)
    lse_part = torch.empty(B * Hkv, cfg.splits, M, dtype=torch.float32, device=dev)
    qk_scale = (1.0 / math.sqrt(D) if scale is None else float(scale)) * _LOG2E
    precision = "ieee" if q.dtype == torch.float32 else "tf32"  # tf32 is ignored for fp16/bf16
    upcast = q.dtype == torch.bfloat16 and _INTERPRETED
    strides = (*q.stride(), *k_cache.stride(), *v_cache.stride())
    blocks = dict(BLOCK_M=cfg.block_m, BLOCK_D=cfg.block_d, DOT_PRECISION=precision, UPCAST=upcast)
    prefix = Launch(
        _prefix_partial_kernel, (B * Hkv, m_blocks, cfg.splits),
        (q, k_cache, v_cache, prefix_len, o_part, lse_part, Hkv, G, N, D, cfg.split_rows, qk_scale, *strides),
        dict(blocks, BLOCK_N=cfg.block_n, num_warps=cfg.prefix_warps, num_stages=cfg.prefix_stages),
    )
    tail = Launch(
        _tail_merge_kernel, (B * Hkv, m_blocks),
        (q, k_cache, v_cache, out, tree_start, ancestors, n_nodes, o_part, lse_part,
         Hkv, G, N, D, S, cfg.splits, qk_scale, *strides, *out.stride()),
        dict(blocks, BLOCK_T=cfg.block_t, num_warps=cfg.tail_warps, num_stages=cfg.tail_stages),
    )
    return out, [prefix, tail]


def tree_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    prefix_len: torch.Tensor,
    tree_start: torch.Tensor,
    ancestors: torch.Tensor,
    n_nodes: torch.Tensor,
    scale: float | None = None,
    *,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Triton twin of tree_attention_torch (shapes there): q [B, Hq, N, D], k_cache/v_cache
    [B, Hkv, S, D], prefix_len/tree_start/n_nodes [B] int, ancestors [B, N] int64 bitmasks,
    scale (None: 1/sqrt(D)) -> [B, Hq, N, D] in q's dtype. N <= MAX_TREE_NODES; fp32, fp16 or
    bf16; any D <= MAX_HEAD_DIM (masked to a power-of-two block). num_splits overrides the prefix split count
    (tests use it to force several splits on short caches). Two launches, no host sync."""
    if triton is None:
        raise RuntimeError("tree_attention_triton needs triton; use tree_attention_torch")
    out, launches = tree_attention_launches(q, k_cache, v_cache, prefix_len, tree_start, ancestors, n_nodes,
                                            scale, num_splits=num_splits)
    for launch in launches:
        launch()
    return out
