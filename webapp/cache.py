"""Built models kept between requests, bounded by the memory their weights take, not by a count.

Four cached ResNet-18s take 200 MB; four ConvNeXt-XL ones take 5 GB. The cache holds the most
recently used models whose parameters and buffers together fit ``budget_bytes`` and evicts the least
recently used first; a model larger than the whole budget is built for its request and not kept.
Requests never use a cached model itself (they work on a copy), so eviction never pulls a model
from under a running request.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch
from torch import nn

__all__ = ["ModelCache", "model_bytes"]


def model_bytes(value: Any) -> int:
    """Bytes of the parameters and buffers of the modules in ``value`` (a module or a tuple holding one)."""
    modules = [value] if isinstance(value, nn.Module) else [v for v in value if isinstance(v, nn.Module)] \
        if isinstance(value, (tuple, list)) else []
    total = 0
    for module in modules:
        tensors = list(module.parameters()) + list(module.buffers())
        total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return total


class ModelCache:
    """A least-recently-used cache of built models whose total size stays within ``budget_bytes``."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = int(budget_bytes)
        self._items: "OrderedDict[Hashable, tuple[Any, int]]" = OrderedDict()
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._items.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        value = build()  # outside the lock: building takes seconds and other requests go on
        size = model_bytes(value)
        if size > self.budget_bytes:
            return value
        with self._lock:
            self._items[key] = (value, size)
            self._items.move_to_end(key)
            used = sum(s for _, s in self._items.values())
            while used > self.budget_bytes:
                used -= self._items.popitem(last=False)[1][1]
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
