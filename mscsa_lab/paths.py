"""Where the bundled files are: ``profiles/`` (Table 7 presets) and ``assets/`` (demo model, sample
images), whether the package runs from a checkout or was installed with pip.

In a checkout they sit beside the package; an installed package carries them as the data packages
``mscsa_lab._profiles`` and ``mscsa_lab._assets`` (see ``pyproject.toml``).
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["PROFILES_DIR", "ASSETS_DIR", "bundled_dir"]


def bundled_dir(name: str) -> Path:
    """The folder ``name`` ("profiles" or "assets") of this installation."""
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    try:
        return Path(str(importlib.resources.files(f"mscsa_lab._{name}")))
    except ModuleNotFoundError:
        return checkout  # not bundled: callers report the missing files by name


PROFILES_DIR = bundled_dir("profiles")
ASSETS_DIR = bundled_dir("assets")
