"""MSCSA Lab: build, profile, benchmark and inspect Multi-Stage Cross-Scale Attention.

Importing the package makes the ``<backbone>_mscsa`` models known to timm: at once when timm is
already imported, else the moment timm is (``import mscsa_lab, timm`` and ``import timm, mscsa_lab``
both work). Everything else loads on first use, so ``mscsa-lab --help`` starts as fast as PyTorch.

Layout: ``models`` (model code), ``presets`` (Table 7 profiles), ``registry`` (names -> models, timm
registrations), ``analysis`` (FLOPs, memory, comparisons, budget, diagram), ``bench`` (throughput and
latency), ``explain`` (saliency), ``io`` (images, checkpoints, tables, figures), ``data``, ``train``,
``workflows`` (one function per user action, shared by the CLI and the app), ``cli``.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
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
    """Waits for ``import timm`` and then imports ``mscsa_lab.registry``, whose ``@register_model``
    functions add the ``*_mscsa`` models, so that timm never exists without them in this process."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # find timm's own spec with the other finders
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        original = spec.loader

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec):  # noqa: ANN001 - importlib's protocol
                return original.create_module(spec)

            def exec_module(self, module):  # noqa: ANN001
                original.exec_module(module)
                importlib.import_module("mscsa_lab.registry")

        spec.loader = _Loader()
        return spec


if "timm" in sys.modules:
    importlib.import_module("mscsa_lab.registry")
elif not any(isinstance(finder, _RegisterWithTimm) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTimm())
