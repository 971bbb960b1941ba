"""pytest plugin that runs timm's own ``tests/test_models.py`` over the ``*_mscsa`` models only.

Loaded by ``scripts/run_timm_model_tests.py`` (never collected by the project's own suite: the file
is not named ``test_*`` or ``conftest``). Importing ``mscsa_lab`` registers the models; every
``timm.list_models`` call the test module makes while it is collected then returns only ``*_mscsa``
names, with all of timm's other filters (``exclude_filters``, ``pretrained``, ``name_matches_cfg``...)
applied unchanged. A ``module=`` filter is dropped: our models are registered from
``mscsa_lab.registry``, not from the timm modules the test lists, and every ``*_mscsa`` model
implements ``forward_intermediates`` and the feature getter that filter selects for. Tests whose
parameters name no ``*_mscsa`` model (timm's checks of its own models) are deselected, and every kept
test gets the ``timm_suite`` marker.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import pytest

SUFFIX = "_mscsa"
# Markers timm's pyproject.toml declares (the test module uses them; we do not read timm's config).
TIMM_MARKERS = ("base", "forward", "backward", "cfg", "cfg_nonstd", "torchscript", "features", "fxforward",
                "fxbackward")


def narrowed(list_models: Callable[..., list[str]]) -> Callable[..., list[str]]:
    """``list_models`` restricted to the ``*_mscsa`` names (``module=`` ignored, see the module docstring)."""

    def list_mscsa_models(filter: Any = "", module: Any = "", *args: Any, **kwargs: Any) -> list[str]:
        return [name for name in list_models(filter, "", *args, **kwargs) if name.endswith(SUFFIX)]

    list_mscsa_models.__wrapped__ = list_models  # type: ignore[attr-defined]
    return list_mscsa_models


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Imported here, once pytest has set up its plugins: timm's hub client imports anyio, itself a
    # pytest plugin, which pytest wants to see first.
    import timm
    import timm.models

    import mscsa_lab  # noqa: F401 - registers the *_mscsa models with timm

    for name in TIMM_MARKERS:
        config.addinivalue_line("markers", f"{name}: timm's marker")
    config.addinivalue_line("markers", "timm_suite: timm's own tests/test_models.py over the *_mscsa models")
    if not config.pluginmanager.hasplugin("timeout"):
        config.addinivalue_line("markers", "timeout(seconds): pytest-timeout's marker (plugin not installed)")
    original = timm.list_models
    timm.list_models = timm.models.list_models = narrowed(original)

    def restore() -> None:
        timm.list_models = timm.models.list_models = original

    config.add_cleanup(restore)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if str(params.get("model_name", "")).endswith(SUFFIX):
            item.add_marker(pytest.mark.timm_suite)
            kept.append(item)
        else:
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
