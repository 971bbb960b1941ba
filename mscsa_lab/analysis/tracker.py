"""The one per-module measurement engine: which modules are running, and what each call received and gave.

Every per-component figure in the project (memory, bytes moved, latency, the shapes the diagram draws)
comes from one forward pass watched by a ``ModuleTracker``: forward pre/post hooks on the model's
modules keep the stack of running module paths (outermost first) and hand every call to the listeners
a measurement adds. Measurements then charge what they see (bytes saved for backward, an operator's
traffic, a timestamp) to the running paths, and ``components.component_total`` sums the per-path figures
into the rows of the tables with one rule. FLOPs come from fvcore (its own trace), per path as well, and
go through the same summing rule.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

__all__ = [
    "ModuleTracker",
    "example_input",
    "tensors_in",
    "tensor_bytes",
    "distinct_bytes",
    "storage_key_and_bytes",
    "per_module_path",
]

EnterListener = Callable[[str, nn.Module, tuple], None]
LeaveListener = Callable[[str, nn.Module, tuple, dict, Any], None]


class ModuleTracker:
    """Hooks on the modules of ``model`` (all of them, or only ``paths``) that keep ``running``, the
    paths of the modules being called now (outermost first), and call the listeners on every call.

    Use as a context manager: the hooks exist inside the ``with`` block only::

        with ModuleTracker(model) as tracker:
            tracker.on_leave.append(lambda path, module, args, kwargs, output: ...)
            model(x)
    """

    def __init__(self, model: nn.Module, paths: Iterable[str] | None = None) -> None:
        wanted = None if paths is None else set(paths)
        self.modules = [(path, module) for path, module in model.named_modules()
                        if wanted is None or path in wanted]
        self.running: list[str] = []
        self.on_enter: list[EnterListener] = []
        self.on_leave: list[LeaveListener] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "ModuleTracker":
        for path, module in self.modules:
            self._handles.append(module.register_forward_pre_hook(self._enter(path)))
            self._handles.append(module.register_forward_hook(self._leave(path), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.running.clear()

    def _enter(self, path: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            self.running.append(path)
            for listener in self.on_enter:
                listener(path, module, args)

        return hook

    def _leave(self, path: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            for listener in self.on_leave:
                listener(path, module, args, kwargs, output)
            if self.running and self.running[-1] == path:
                self.running.pop()

        return hook


def example_input(model: nn.Module, input_size: tuple[int, int], batch: int = 1, device: Any = None,
                  dtype: torch.dtype | None = None, random: bool = False) -> torch.Tensor:
    """An input batch for ``model`` with as many channels as it takes (``model.in_chans``, 3 without it),
    on the device and in the dtype of its parameters unless given."""
    like = next(model.parameters(), None)
    device = device if device is not None else (like.device if like is not None else "cpu")
    dtype = dtype if dtype is not None else (like.dtype if like is not None else torch.float32)
    shape = (int(batch), int(getattr(model, "in_chans", 3)), int(input_size[0]), int(input_size[1]))
    return torch.randn(shape, device=device, dtype=dtype) if random else torch.zeros(shape, device=device, dtype=dtype)


def tensors_in(value: Any) -> list[torch.Tensor]:
    """Every tensor inside a nested structure of tuples, lists and dicts."""
    leaves, _ = tree_flatten(value)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Logical bytes of a tensor (its elements, not its whole storage)."""
    return tensor.numel() * tensor.element_size()


def distinct_bytes(tensor: torch.Tensor) -> int:
    """Bytes of the distinct elements a kernel reads: a broadcast (stride-0) dimension is read once."""
    elements = 1
    for size, stride in zip(tensor.shape, tensor.stride()):
        if stride != 0:
            elements *= size
    return elements * tensor.element_size() if tensor.numel() else 0


def storage_key_and_bytes(tensor: torch.Tensor) -> tuple[int, int]:
    """(identity of the tensor's storage, bytes of that storage). Views share their base's storage,
    so the key tells when two tensors hold the same memory. The key is the address of the storage
    object (``_cdata``) rather than ``data_ptr()``, because every meta-device storage has data_ptr 0."""
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse, nested or opaque tensors have no plain storage
        return id(tensor), tensor.numel() * tensor.element_size()
    return storage._cdata, storage.nbytes()


def per_module_path(named: Iterable[tuple[str, torch.Tensor]], value: Callable[[torch.Tensor], int]) -> dict[str, int]:
    """``value`` of named tensors (parameters, buffers) summed under every module path prefix ("" is the
    whole model), the way fvcore's ``parameter_count`` sums counts, so residual rows can subtract children."""
    totals: dict[str, int] = defaultdict(int)
    for name, tensor in named:
        amount = value(tensor)
        parts = name.split(".")
        for depth in range(len(parts)):  # "", "a", "a.b", ... but not the tensor's own name
            totals[".".join(parts[:depth])] += amount
    return dict(totals)
