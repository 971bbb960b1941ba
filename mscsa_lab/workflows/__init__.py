"""One function per user action, shared by the command line and the app.

Each action takes a resolved request (a ``ModelSpec`` for model actions) and plain options, costs the
request against the limits before any work, and returns an ``ActionResult`` (tables, figures, summary,
notes, warnings) that the CLI prints and the app shows. Neither surface chains library calls itself.

- ``spec``: ``ModelSpec``, a model request resolved once (name, settings, task, size, weights);
- ``limits``: what one request may ask for (``ResourceLimits``, ``guard``);
- ``store``: built models kept between the app's requests (each request gets its own copy);
- ``result``: ``ActionResult`` and its files;
- ``build``, ``profiling`` (profile, latency), ``timing`` (benchmark), ``comparing`` (compare, budget,
  profiles, export), ``sources`` + ``explaining`` (saliency, explain), ``training`` (train, evaluate, ablate),
  ``exporting`` (a model as ONNX / TorchScript / torch.export files).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelSpec": "spec", "SpecError": "spec",
    "ResourceLimits": "limits", "ResourceError": "limits", "DEFAULT_LIMITS": "limits", "NO_LIMITS": "limits",
    "guard": "limits",
    "ModelStore": "store", "ActionResult": "result",
    "build_action": "build", "profile_action": "profiling", "latency_action": "profiling",
    "benchmark_action": "timing", "compare_action": "comparing", "budget_action": "comparing",
    "profiles_action": "comparing", "export_table_action": "comparing",
    "saliency_action": "explaining", "explain_action": "explaining", "explain_model": "explaining",
    "demo_model": "sources", "trained_model": "sources", "spec_model": "sources",
    "export_action": "exporting",
    "train_action": "training", "evaluate_action": "training", "ablate_action": "training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # imports on demand: the CLI's --help loads none of the actions
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
