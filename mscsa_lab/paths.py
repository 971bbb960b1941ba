"""Where the bundled files are: ``profiles/`` (Table 7 presets) and ``assets/`` (demo model, sample
images), whether the package runs from a checkout (or an editable install) or was installed with pip.

In a checkout they sit beside the package; a built package carries them inside itself as
``mscsa_lab/_profiles`` and ``mscsa_lab/_assets`` (see ``pyproject.toml``).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["PROFILES_DIR", "ASSETS_DIR", "bundled_dir"]

_PACKAGE = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    """The folder ``name`` ("profiles" or "assets") of this installation."""
    checkout = _PACKAGE.parent / name
    installed = _PACKAGE / f"_{name}"
    return installed if installed.is_dir() and not checkout.is_dir() else checkout


PROFILES_DIR = bundled_dir("profiles")
ASSETS_DIR = bundled_dir("assets")
