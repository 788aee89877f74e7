"""Count the kernels a piece of code would launch on the GPU path, on any machine.

At batch 1 a 7B step is memory-bound on the device but host-bound in eager PyTorch when it launches
too many kernels (several µs of host time each). `LaunchCount` intercepts ATen dispatch (a
`TorchDispatchMode`) and counts every op that launches a kernel: composite ops are decomposed to
what they really dispatch, views, aliases and allocations launch nothing and are skipped. Each
phide op that is ONE kernel on the GPU path (`phide.ops.ONE_KERNEL_OPS`: a Triton or CUDA kernel
there, a torch twin of several ATen ops on a CPU) is counted once, whatever its twin dispatches,
so the count on a CPU is the GPU path's.

With `layers=` (a model's decoder layers) the count is split into what runs inside a decoder
layer's forward and the rest of the step (embedding, RoPE tables, LM head, choice, walk, commit,
transfers).

    with LaunchCount(layers=model.layers) as lc:
        runner.verify(tree, 0.0, 0, 0)
    lc.per_layer(), lc.total(), lc.by_op("layer")
"""

from __future__ import annotations

import collections
import contextlib
import functools

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that dispatch but launch no kernel: they make or rename tensors without touching memory.
_NO_KERNEL = {"detach", "detach_", "lift_fresh", "empty", "empty_strided", "empty_like", "alias",
              "_unsafe_view", "set_", "resize_", "_reshape_alias", "new_empty", "new_empty_strided"}


def _launches(func) -> bool:
    if func.is_view:
        return False
    return func._schema.name.split("::")[-1] not in _NO_KERNEL


def _composite(func) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd")


class _Mode(TorchDispatchMode):
    def __init__(self, counter: "LaunchCount"):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _composite(func):  # count what it decomposes to (linear -> t + mm, not "linear")
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        if self.counter._inside_op == 0 and _launches(func):
            self.counter._add(func._schema.name.split("::")[-1] + (
                "" if func._overloadname == "default" else "." + func._overloadname))
        return func(*args, **kwargs)


class LaunchCount(contextlib.AbstractContextManager):
    """Kernel launches of the code run inside the block, by op and by scope ("layer": inside a
    decoder layer's forward, "step": everything else)."""

    def __init__(self, layers=None):
        self.layers = list(layers) if layers is not None else []
        self.counts = {"layer": collections.Counter(), "step": collections.Counter()}
        self._depth_in_layer = 0
        self._inside_op = 0
        self._stack = contextlib.ExitStack()

    def _add(self, name: str) -> None:
        self.counts["layer" if self._depth_in_layer else "step"][name] += 1

    def __enter__(self):
        from phide import ops

        for name in ops.ONE_KERNEL_OPS:
            self._stack.enter_context(_patched(ops, name, self))
        self._stack.enter_context(_patched_decoder_ops(ops, self))
        for layer in self.layers:
            self._stack.enter_context(_layer_scope(layer, self))
        self._stack.enter_context(_Mode(self))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False

    # ------------------------------------------------------------------ readouts
    def total(self) -> int:
        return sum(self.counts["layer"].values()) + sum(self.counts["step"].values())

    def in_layers(self) -> int:
        return sum(self.counts["layer"].values())

    def per_layer(self, steps: int = 1) -> float:
        """Launches inside decoder layers per layer per step (`steps` steps counted)."""
        return self.in_layers() / max(len(self.layers), 1) / steps

    def by_op(self, scope: str | None = None) -> dict[str, int]:
        if scope is None:
            merged = self.counts["layer"] + self.counts["step"]
            return dict(merged.most_common())
        return dict(self.counts[scope].most_common())


def _counted(name: str, original, counter: LaunchCount):
    @functools.wraps(original)
    def one_kernel(*args, **kwargs):
        if counter._inside_op == 0:
            counter._add(f"phide.{name}")
        counter._inside_op += 1
        try:
            return original(*args, **kwargs)
        finally:
            counter._inside_op -= 1

    return one_kernel


@contextlib.contextmanager
def _patched(module, name: str, counter: LaunchCount):
    original = getattr(module, name)
    setattr(module, name, _counted(name, original, counter))
    try:
        yield
    finally:
        setattr(module, name, original)


@contextlib.contextmanager
def _patched_decoder_ops(module, counter: LaunchCount):
    """ops.decoder_ops hands a forward the implementations themselves: count those too."""
    original = module.decoder_ops

    def counted(*args, **kwargs):
        chosen = original(*args, **kwargs)
        return type(chosen)(*(_counted(name, fn, counter) for name, fn in zip(chosen._fields, chosen)))

    module.decoder_ops = counted
    try:
        yield
    finally:
        module.decoder_ops = original


@contextlib.contextmanager
def _layer_scope(layer: torch.nn.Module, counter: LaunchCount):
    def enter(*_):
        counter._depth_in_layer += 1

    def leave(*_):
        counter._depth_in_layer -= 1

    pre = layer.register_forward_pre_hook(enter)
    post = layer.register_forward_hook(leave)
    try:
        yield
    finally:
        pre.remove()
        post.remove()
