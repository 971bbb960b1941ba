"""What every exported number carries with it: how and where it was measured."""
from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata as _pkg
from typing import Any

import torch

__all__ = ["run_metadata", "device_description"]

_LIBRARIES = ("torch", "torchvision", "timm", "fvcore", "gradio", "captum", "pandas")


def device_description(device: str | torch.device = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _version(name: str) -> str:
    try:
        return _pkg.version(name)
    except _pkg.PackageNotFoundError:
        return "not installed"


def run_metadata(**facts: Any) -> dict[str, Any]:
    """Library versions, device, date, plus the given facts (input size, batch, convention...)."""
    from mscsa_lab import __version__

    data: dict[str, Any] = dict(facts)
    data.setdefault("device", device_description(facts.get("device_type", "cpu")))
    data.pop("device_type", None)
    data["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    data["python"] = platform.python_version()
    data["libraries"] = {"mscsa_lab": __version__, **{name: _version(name) for name in _LIBRARIES}}
    return data
