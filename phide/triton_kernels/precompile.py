"""Every Triton kernel variant the engine launches for a model, compiled before any request.

Triton compiles a kernel on its first launch with new constexprs, launch options or argument
specialisation; inside a request that is a stall of seconds. `kernel_variants` lists the launches
the engine makes for one model's shapes (one per distinct compiled kernel), each built by the
launcher's own selection and argument code (`*_launches`, `*_config` in the kernel files), so
nothing here restates a block size. Two users share that list:

- `precompile(...)` at engine load, on the GPU: runs each variant once on zero tensors, which
  compiles it (or loads it from Triton's on-disk cache) and loads the module.
- profiling/sm90_compile.py, on a machine without a GPU: `compile_offline` compiles each variant
  for sm_90a and reads registers, spills and shared memory (CI fails on half-precision spills).

What makes one list enough: per-call sizes that vary inside a request (tree nodes N, cache length,
split count, path width) are `do_not_specialize` kernel arguments, and the block sizes the
launchers derive from them are enumerated here over every N <= max_tree_nodes. What stays
specialised is fixed per model (head dim, heads, vocabulary: strides divisible by 16 when the head
dim and vocabulary are, which the shapes below reproduce) plus pointer alignment (16 bytes: every
tensor the engine passes starts at an aligned offset, as the meta tensors used here do).
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass, field

import torch

from phide.formats import MAX_TREE_NODES

try:  # guarded: `import phide` (and this module) must work on machines without triton
    import triton
except ImportError:  # pragma: no cover - exercised only on triton-less installs
    triton = None

__all__ = ["Variant", "compile_offline", "kernel_variants", "precompile"]

_ENGINE_LOGITS = torch.float32  # LlamaModel.logits and the draft adapter return float32


@dataclass(frozen=True)
class Variant:
    """One launcher call whose launches compile to one set of kernels: `op` names the launcher,
    `dtype` its data (q and the cache, or the logits), `shape` the sizes `inputs` builds tensors
    of, `config` the launcher's selection for them (for display)."""

    op: str  # "tree_attention" | "tree_topk" | "gumbel_choices" | "kv_commit" | "rms_norm" | "rope_kv_write"
    dtype: torch.dtype
    shape: dict = field(hash=False)
    config: tuple = field(hash=False)
    covers: list = field(default_factory=list, hash=False, compare=False)  # N (or W) values it serves

    def inputs(self, device="meta") -> dict:
        """The launcher's keyword arguments, laid out as the engine lays them out (strides
        included); zeros on a real device, storage-less on "meta"."""
        return _INPUTS[self.op](torch.device(device), self.dtype, **self.shape)

    def launches(self, device="meta") -> list:
        """The `Launch`es the launcher makes for these inputs (nothing runs)."""
        return _launches(self.op, self.inputs(device))

    def run(self, device) -> None:
        """Run the launcher once on `inputs(device)`: compiles (or loads) every launch it makes."""
        for launch in self.launches(device):
            launch()


def kernel_variants(dtype: torch.dtype, head_dim: int, n_heads: int, n_kv_heads: int, vocab: int,
                    max_tree_nodes: int = MAX_TREE_NODES, *, topk: int | tuple[int, ...] = 4,
                    draft_vocab: int | None = None, shared_vocab: int | None = None, head: bool = False,
                    logits_dtype: torch.dtype = _ENGINE_LOGITS, prefix_len: int = 2048,
                    decoders: tuple[tuple[int, int, int, int], ...] = ()) -> list[Variant]:
    """The launcher calls that cover every kernel variant the engine launches for one model.

    dtype, head_dim, n_heads, n_kv_heads: the target's KV cache and attention (tree attention and
    the KV commit); vocab: the target's (Gumbel choices); draft_vocab (default vocab): the
    draft's, whose logits cut to the shared vocabulary feed the tree top-k with `topk` children
    (a tuple for several, e.g. (4, 1): a cross-vocabulary draft grows chains); head: an EAGLE
    head drafts too, its logits over the target's whole vocabulary feeding the same top-k;
    max_tree_nodes: the largest tree verified; prefix_len: the prefix the tree attention cases
    use (any length compiles the same kernels); decoders: (hidden, heads, kv heads, head dim) of
    every decoder the engine runs in `dtype` (target, draft, head), whose norms and RoPE /
    KV-write kernels are built per shape."""
    from phide.triton_kernels.gumbel_verify import gumbel_config
    from phide.triton_kernels.kv_commit import MAX_PATH, commit_config
    from phide.triton_kernels.rms_norm import norm_config
    from phide.triton_kernels.rope_kv_write import rope_config
    from phide.triton_kernels.tree_attention import MAX_HEAD_DIM, attention_config
    from phide.triton_kernels.tree_topk import MAX_K, topk_config

    draft_vocab = vocab if draft_vocab is None else draft_vocab
    shared = shared_vocab or min(vocab, draft_vocab)
    variants, seen = [], {}

    def add(op, dt, shape, config, size=None):
        if (op, dt, config) not in seen:
            seen[op, dt, config] = Variant(op, dt, shape, config)
            variants.append(seen[op, dt, config])
        if size is not None:
            seen[op, dt, config].covers.append(size)

    if head_dim <= MAX_HEAD_DIM:
        for n in range(1, min(max_tree_nodes, MAX_TREE_NODES) + 1):
            cfg = attention_config(dtype, head_dim, n, prefix_len + n)
            # The split count and rows are runtime arguments: they do not make another kernel.
            add("tree_attention", dtype, dict(B=1, Hq=n_heads, Hkv=n_kv_heads, N=n, D=head_dim, prefix=prefix_len),
                cfg._replace(splits=0, split_rows=0), n)
    # (columns, row stride) of the logits the top-k reads: the draft's cut to the shared vocabulary,
    # the head's over the target's
    sources = sorted({(shared, draft_vocab)} | ({(vocab, vocab)} if head else set()))
    for k in sorted({topk} if isinstance(topk, int) else set(topk)):
        for cols, stride in sources:
            kk = min(k, cols, MAX_K)
            add("tree_topk", logits_dtype, dict(R=kk, V=cols, row_stride=stride, k=kk), (kk, cols, stride, topk_config(cols, kk)))
    for greedy in (True, False):
        add("gumbel_choices", logits_dtype, dict(N=max_tree_nodes, V=vocab, greedy=greedy),
            (greedy, gumbel_config(vocab)))
    # the target's commit, and the draft's (its own head dim: `decoders`)
    for dim in sorted({head_dim} | {d for *_, d in decoders}):
        for w in range(2, min(max_tree_nodes, MAX_PATH) + 1):  # a one-node path moves nothing
            add("kv_commit", dtype, dict(H=n_kv_heads, W=w, D=dim), commit_config(w, dim), w)
    for hidden, heads, kv_heads, dim in sorted(set(decoders)):
        for residual in (False, True):  # the first layer's norm and the final one; the fused add
            add("rms_norm", dtype, dict(R=2, H=hidden, residual=residual), (hidden, residual, norm_config(hidden)))
        add("rope_kv_write", dtype, dict(T=2, Hq=heads, Hkv=kv_heads, D=dim),
            (heads, kv_heads, dim, rope_config(heads + 2 * kv_heads, dim)))
    return variants


def precompile(device, dtype: torch.dtype, head_dim: int, n_heads: int, n_kv_heads: int, vocab: int,
               max_tree_nodes: int = MAX_TREE_NODES, **kwargs) -> list[Variant]:
    """Compile (or load from Triton's cache) and load every kernel variant the engine will launch
    for this model, so no request ever waits for a compile. Call it at load time, once per
    device the model runs on, before serving, e.g. for the target:

        from phide.triton_kernels.precompile import precompile
        cfg = target.cfg
        precompile(target.device, cache_dtype, cfg.head_dim, cfg.num_attention_heads,
                   cfg.num_key_value_heads, cfg.vocab_size, max_tree_nodes=64,
                   topk=spec.topk, draft_vocab=draft.cfg.vocab_size)

    kwargs as `kernel_variants` (topk, draft_vocab, shared_vocab, head, logits_dtype, prefix_len). On CUDA each
    variant runs once on zero tensors (tens of MB for a 7B model, freed on return; synchronised
    before returning), taking seconds per kernel on a cold Triton cache and well under a second
    on a warm one; elsewhere (a CPU, the interpreter, no triton) nothing runs. Returns the
    variants either way."""
    variants = kernel_variants(dtype, head_dim, n_heads, n_kv_heads, vocab, max_tree_nodes, **kwargs)
    device = torch.device(device)
    if device.type != "cuda" or triton is None or not _compiles():
        return variants
    with torch.cuda.device(device):
        for variant in variants:
            variant.run(device)
        torch.cuda.synchronize(device)
    return variants


def _compiles() -> bool:
    """Whether kernels here are compiled (JITFunction), not run by the interpreter."""
    from phide.triton_kernels.tree_attention import _prefix_partial_kernel

    return isinstance(_prefix_partial_kernel, triton.runtime.JITFunction)


# ---------------------------------------------------------------------------------------------
# Inputs per launcher, laid out as the engine passes them.


def _attention_inputs(dev, dtype, B, Hq, Hkv, N, D, prefix):
    S = prefix + N
    rows = S + MAX_TREE_NODES  # the layer's cache holds more rows than the verify reads
    zeros = dict(device=dev, dtype=dtype)
    # LlamaAttention: q is [B, T, H, D] transposed; the cache is sliced to kv_len rows.
    chain = [(1 << (j + 1)) - 1 for j in range(N)]  # node j's ancestors: 0 .. j
    chain = [bits - (1 << 64) if bits >> 63 else bits for bits in chain]  # as int64: bit 63 is the sign
    return dict(
        q=torch.zeros(B, N, Hq, D, **zeros).transpose(1, 2),
        k_cache=torch.zeros(B, Hkv, rows, D, **zeros)[:, :, :S],
        v_cache=torch.zeros(B, Hkv, rows, D, **zeros)[:, :, :S],
        prefix_len=torch.full((B,), prefix, dtype=torch.int64, device=dev),
        tree_start=torch.full((B,), prefix, dtype=torch.int64, device=dev),
        ancestors=torch.tensor([chain] * B, dtype=torch.int64).to(dev),
        n_nodes=torch.full((B,), N, dtype=torch.int64, device=dev),
    )


def _topk_inputs(dev, dtype, R, V, row_stride, k):
    # The draft's logits [R, draft vocab] cut to the shared vocabulary (a view).
    return dict(logits=torch.zeros(R, row_stride, device=dev, dtype=dtype)[:, :V],
                parent_scores=torch.zeros(R, device=dev), k=k)


def _gumbel_inputs(dev, dtype, N, V, greedy):
    return dict(logits=torch.zeros(N, V, device=dev, dtype=dtype), temperature=0.0 if greedy else 1.0, seed=0,
                positions=torch.arange(N, device=dev))


def _commit_inputs(dev, dtype, H, W, D):
    # KVCache: k, v [L, B, H, S, D]; one layer compiles the same kernel as all of them.
    S = 2 * MAX_TREE_NODES
    nodes = torch.arange(W, dtype=torch.int64).view(1, W)
    return dict(k_cache=torch.zeros(1, 1, H, S, D, device=dev, dtype=dtype),
                v_cache=torch.zeros(1, 1, H, S, D, device=dev, dtype=dtype),
                base=torch.zeros(1, dtype=torch.int64, device=dev), accept_nodes=nodes.to(dev),
                accept_len=torch.tensor([W - 1], device=dev))


def _norm_inputs(dev, dtype, R, H, residual):
    # The decoder's activations [B, T, H] (GEMM outputs: contiguous), the norm weight [H].
    zeros = dict(device=dev, dtype=dtype)
    return dict(x=torch.zeros(1, R, H, **zeros), weight=torch.zeros(H, **zeros), eps=1e-6,
                residual=torch.zeros(1, R, H, **zeros) if residual else None)


def _rope_inputs(dev, dtype, T, Hq, Hkv, D):
    # The fused q/k/v GEMM's output, the forward's RoPE tables, one layer of KVCache.k / .v
    # ([L, B, Hkv, S, D] indexed by layer) and the upload's cache rows.
    zeros = dict(device=dev, dtype=dtype)
    S = 2 * MAX_TREE_NODES
    return dict(qkv=torch.zeros(1, T, (Hq + 2 * Hkv) * D, **zeros), cos=torch.zeros(1, T, D, **zeros),
                sin=torch.zeros(1, T, D, **zeros), k_cache=torch.zeros(2, 1, Hkv, S, D, **zeros)[1],
                v_cache=torch.zeros(2, 1, Hkv, S, D, **zeros)[1],
                slots=torch.arange(T, dtype=torch.int64).view(1, T).to(dev), n_heads=Hq, n_kv_heads=Hkv)


_INPUTS = {"tree_attention": _attention_inputs, "tree_topk": _topk_inputs, "gumbel_choices": _gumbel_inputs,
           "kv_commit": _commit_inputs, "rms_norm": _norm_inputs, "rope_kv_write": _rope_inputs}


def _launches(op: str, inputs: dict) -> list:
    if op == "tree_attention":
        from phide.triton_kernels.tree_attention import tree_attention_launches

        return tree_attention_launches(**inputs)[1]
    if op == "tree_topk":
        from phide.triton_kernels.tree_topk import tree_topk_launches

        return tree_topk_launches(**inputs)[3]
    if op == "gumbel_choices":
        from phide.triton_kernels.gumbel_verify import gumbel_choices_launches

        return gumbel_choices_launches(**inputs)[1]
    if op == "rms_norm":
        from phide.triton_kernels.rms_norm import rms_norm_launches

        return rms_norm_launches(**inputs)[2]
    if op == "rope_kv_write":
        from phide.triton_kernels.rope_kv_write import rope_kv_write_launches

        return rope_kv_write_launches(**inputs)[1]
    from phide.triton_kernels.kv_commit import kv_commit_launches

    return kv_commit_launches(**inputs)


# ---------------------------------------------------------------------------------------------
# Offline compilation (no GPU): what JITFunction.run does before a launch, for a named target.


def compile_key(launch, target) -> str:
    """The identity of the kernel `launch` compiles to on `target` (equal keys: one binary): the
    kernel, the specialisation Triton's own binder derives from the arguments (dtypes, 16-byte
    pointer alignment, integer divisibility), the constexprs and the compile options. Works on
    interpreted kernels too (TRITON_INTERPRET=1), so a test can key the launches a request makes
    on a CPU and compare them with the precompiled variants' keys."""
    _, options, (signature, constexprs, attrs) = _bind(launch, target)
    return f"{launch.name}-{signature}-{sorted(constexprs.items())}-{attrs}-{options.hash()}"


def compile_offline(launch, target) -> dict:
    """Compile `launch`'s kernel for `target` (a triton GPUTarget, e.g. GPUTarget("cuda", 90, 32))
    with the arguments' own specialisation, without a GPU (ptxas: Triton's bundled copy). Returns
    the ptxas resource figures: registers, spill_stores, spill_loads, stack (bytes per thread)
    and shared (bytes per program, from Triton's metadata). Needs TRITON_INTERPRET unset."""
    from triton import knobs

    src, options = _source(launch, target)
    log = io.StringIO()
    # ptxas prints its -v report only when asked and only when it runs: never a cache hit.
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = True
        compiled = triton.compile(src, target=target, options=options.__dict__)
    text = log.getvalue()

    def stat(pattern):
        m = re.search(pattern, text)
        if m is None:
            raise RuntimeError(f"no '{pattern}' in the ptxas report of {launch.name}:\n{text}")
        return int(m.group(1))

    return dict(registers=stat(r"Used (\d+) registers"), spill_stores=stat(r"(\d+) bytes spill stores"),
                spill_loads=stat(r"(\d+) bytes spill loads"), stack=stat(r"(\d+) bytes stack frame"),
                shared=int(compiled.metadata.shared))


def _jit(kernel):
    """The JITFunction of a kernel: itself, or one built from an interpreted kernel's function and
    decorator arguments (for its signature and binder only; it is never launched)."""
    from triton.runtime.jit import JITFunction

    if isinstance(kernel, JITFunction):
        return kernel
    fn = getattr(kernel, "fn", None)
    if fn is None:
        raise RuntimeError(f"{kernel!r} is not a Triton kernel")
    if kernel not in _JIT_OF:
        _JIT_OF[kernel] = JITFunction(fn, **{k: v for k, v in getattr(kernel, "kwargs", {}).items() if v is not None})
    return _JIT_OF[kernel]


_JIT_OF: dict = {}


def _bind(launch, target):
    """(kernel, options, (signature, constexprs, attrs)) as JITFunction.run derives them: Triton's
    own binder specialises the arguments, then its _pack_args splits signature/constexprs."""
    from triton import knobs
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = _jit(launch.kernel)
    backend = make_backend(target)
    kwargs = dict(launch.options, debug=kernel.debug or knobs.runtime.debug,
                  instrumentation_mode=knobs.compilation.instrumentation_mode)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return kernel, options, (signature, constexprs, attrs)


def _source(launch, target):
    """(ASTSource, options) of `launch` for `target`, as JITFunction.run builds them (meta tensors:
    aligned pointers)."""
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    if not isinstance(launch.kernel, JITFunction):
        raise RuntimeError("offline compilation needs compiled kernels: unset TRITON_INTERPRET before importing them")
    kernel, options, (signature, constexprs, attrs) = _bind(launch, target)
    return ASTSource(kernel, signature, constexprs, attrs), options
