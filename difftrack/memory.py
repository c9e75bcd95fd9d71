"""The memory a computation needs, followed op by op: works under PyTorch's ``FakeTensorMode`` too, so that
checkpoints too large for the machine can be measured from their configs (shapes and dtypes, no storage).

The figures are live tensor bytes: what an allocator must at least hold, without its caching and
fragmentation or any kernel workspace.
"""

from __future__ import annotations

import weakref

import torch


def module_bytes(module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


class PeakLiveBytes:
    """Follows every tensor storage that ops output while active and the moment each is freed: ``peak``
    is the most bytes alive at once. The storages of ``existing`` (the weights; an op such as a transpose
    may return a view of them) are not counted."""

    def __init__(self, existing=()):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self
        self.live = self.peak = 0
        self._refs = {}
        self._existing = {id(t.untyped_storage()) for t in existing}

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in torch.utils._pytree.tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        tracker._follow(t.untyped_storage())
                return out

        self.mode = Mode()

    def _follow(self, storage) -> None:
        key = id(storage)
        if key in self._refs or key in self._existing:
            return
        size = storage.nbytes()

        def freed(_ref, key=key, size=size):
            self._refs.pop(key, None)
            self.live -= size

        self._refs[key] = weakref.ref(storage, freed)
        self.live += size
        self.peak = max(self.peak, self.live)


def peak_bytes(modules, fn):
    """Run ``fn``; (peak bytes alive: the modules' weights plus the stage's tensors at their peak, weights)."""
    tracker = PeakLiveBytes([t for m in modules for t in list(m.parameters()) + list(m.buffers())])
    with tracker.mode, torch.no_grad():
        fn()
    weights = sum(module_bytes(m) for m in modules)
    return weights + tracker.peak, weights
