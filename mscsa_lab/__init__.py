"""MSCSA Lab: build, profile, benchmark and inspect Multi-Stage Cross-Scale Attention.

Importing the package makes the ``<backbone>_mscsa`` models known to timm: at once when timm is
already imported, else the moment timm is (``import mscsa_lab, timm`` and ``import timm, mscsa_lab``
both work; see ``_RegisterWithTimm``). Everything else loads on first use, so ``mscsa-lab --help``
starts as fast as PyTorch.

Layout: ``models`` (model code), ``presets`` (Table 7 profiles), ``registry`` (names -> models, timm
registrations), ``analysis`` (FLOPs, memory, comparisons, budget, diagram), ``bench`` (throughput and
latency), ``explain`` (saliency), ``io`` (images, checkpoints, tables, figures), ``data``, ``train``,
``workflows`` (one function per user action, shared by the CLI and the app), ``cli``.
"""
from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
from typing import Any

__version__ = "0.3.0"

_EXPORTS = {
    "MSCSA": "mscsa_lab.models", "MSCSANet": "mscsa_lab.models", "BackboneError": "mscsa_lab.models",
    "PretrainedWeightsUnavailable": "mscsa_lab.models",
    "ABLATION_PRESETS": "mscsa_lab.models.config", "ConfigError": "mscsa_lab.models.config",
    "MSCSAConfig": "mscsa_lab.models.config",
    "Profile": "mscsa_lab.presets", "ProfileError": "mscsa_lab.presets", "ProfileUnavailable": "mscsa_lab.presets",
    "list_profiles": "mscsa_lab.presets", "load_profile": "mscsa_lab.presets",
    "create_mscsa_model": "mscsa_lab.registry",
    "UserError": "mscsa_lab.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


class _RegisterWithTimm(importlib.abc.MetaPathFinder):
    """Makes ``mscsa_lab.registry`` (whose ``@register_model`` functions add the ``*_mscsa`` models) follow
    ``import timm`` in this process, so that timm never exists without them.

    The registry imports most of the package, so it must not be imported while a module of the package is
    half-way through its own import (``import mscsa_lab.presets`` imports timm at its top): this finder
    hands every ``mscsa_lab.*`` module a loader that counts the package's imports in progress, and the
    registry is imported when timm is loaded and none is in progress, or else as soon as the last ends."""

    _mscsa_lab = True  # its kind, also across a re-import of the package (a new class then)

    def __init__(self) -> None:
        self.depth = 0
        self.pending = False
        self.registered = False
        self.lock = threading.RLock()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if self.registered or not (fullname == "timm" or fullname.startswith("mscsa_lab.")):
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec") and not getattr(finder, "_mscsa_lab", False):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Counted(spec.loader, self, fullname == "timm")
        return spec

    def finished(self, was_timm: bool) -> None:
        with self.lock:
            if was_timm:
                self.pending = True
            if self.pending and self.depth == 0 and not self.registered:
                self.registered = True
                importlib.import_module("mscsa_lab.registry")


class _Counted(importlib.abc.Loader):
    """A module's own loader, with the package's imports in progress counted around it."""

    def __init__(self, loader: Any, registrar: _RegisterWithTimm, is_timm: bool) -> None:
        self._loader, self._registrar, self._is_timm = loader, registrar, is_timm

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, is_package...: the real loader's
        return getattr(self._loader, name)

    def create_module(self, spec):  # noqa: ANN001 - importlib's protocol
        return self._loader.create_module(spec)

    def exec_module(self, module):  # noqa: ANN001
        registrar = self._registrar
        counted = not self._is_timm
        if counted:
            with registrar.lock:
                registrar.depth += 1
        try:
            self._loader.exec_module(module)
        finally:
            if counted:
                with registrar.lock:
                    registrar.depth -= 1
        registrar.finished(self._is_timm)


if "timm" in sys.modules:
    importlib.import_module("mscsa_lab.registry")
else:  # one finder, also when the package is imported again (importlib.reload, or removed from sys.modules)
    sys.meta_path[:] = [finder for finder in sys.meta_path if not getattr(finder, "_mscsa_lab", False)]
    sys.meta_path.insert(0, _RegisterWithTimm())
