"""Built models kept between requests (the app's), bounded by the memory their weights take, not by a count.

Four cached ResNet-18s take 200 MB; four ConvNeXt-XL ones take 5 GB. The cache holds the most
recently used models whose parameters and buffers together fit ``budget_bytes`` and evicts the least
recently used first; a model larger than the whole budget is built for its request and not kept.
Requests never use a cached model itself (they work on a copy), so eviction never pulls a model
from under a running request.
"""
from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, Iterator

import torch
from torch import nn

__all__ = ["ModelCache", "ModelStore", "model_bytes", "obtain_model", "read_model"]


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


class ModelStore:
    """Models by ``ModelSpec``: each request gets its own copy of the cached model (requests run at once,
    and saliency hooks or benchmarks change the model they use), built once per spec. ``store=None`` in
    an action means "build a fresh model" (the command line, which serves one request)."""

    def __init__(self, budget_bytes: int = 2 * 2**30) -> None:
        self.cache = ModelCache(budget_bytes)
        self._readers: dict[Hashable, threading.Lock] = {}
        self._readers_lock = threading.Lock()

    def cached(self, spec: Any) -> Any:
        """The shared model of ``spec`` (never to be changed by a request)."""
        return self.cache.get(("spec", spec), spec.build)

    @contextlib.contextmanager
    def reading(self, spec: Any) -> Iterator[Any]:
        """The shared model of ``spec`` for a request that only reads it (one eval-mode pass, its
        parameters): no copy, one such reader at a time per spec (a pass switches the model to eval mode
        and back, and hooks see every pass)."""
        with self._readers_lock:
            lock = self._readers.setdefault(("spec", spec), threading.Lock())
            if len(self._readers) > 256:  # specs come and go: forget the locks nobody holds
                for key in [k for k, held in self._readers.items() if not held.locked() and held is not lock]:
                    del self._readers[key]
        with lock:
            yield self.cached(spec)

    def copy_of(self, spec: Any) -> Any:
        import copy

        return copy.deepcopy(self.cached(spec))

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """Anything else worth keeping (the demo model, a trained run), under its own key."""
        return self.cache.get(key, build)


def obtain_model(spec: Any, store: "ModelStore | None" = None) -> Any:
    """A model of ``spec`` that the caller may change: a copy of the stored one, or a fresh build."""
    return store.copy_of(spec) if store is not None else spec.build()


@contextlib.contextmanager
def read_model(spec: Any, store: "ModelStore | None" = None) -> Iterator[Any]:
    """A model of ``spec`` that the caller only reads: the stored one itself (``ModelStore.reading``), or a
    fresh build."""
    if store is None:
        yield spec.build()
    else:
        with store.reading(spec) as model:
            yield model
