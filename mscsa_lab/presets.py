"""Ready MSCSA profiles: one TOML file per row of the paper's Table 7, in ``profiles/``.

A profile names the backbone, how MSCSA attaches to it, the MSCSA hyper-parameters and, where the
paper reports them, its Table 6 figures (so comparisons can put the paper beside our numbers).
Users can load their own TOML files of the same form with ``load_profile_file``.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm

from mscsa_lab.models.config import ConfigError, MSCSAConfig
from mscsa_lab.paths import PROFILES_DIR
from mscsa_lab.errors import UserError

__all__ = [
    "Profile",
    "ProfileError",
    "ProfileUnavailable",
    "PROFILES_DIR",
    "list_profiles",
    "load_profile",
    "load_profile_file",
    "profile_names",
]

ATTACH_MODES = ("parallel", "replace_sase", "replace_parallel_blocks")
# Table 6 (ImageNet-1k, 224x224) figures, and Table 3's segmentation FLOPs (ADE20K, 512x512; TopFormer).
PAPER_KEYS = ("flops_g", "flops_mscsa_g", "fps", "fps_mscsa", "top1", "top1_mscsa", "seg_flops_g", "seg_flops_mscsa_g")
_TOP_LEVEL_KEYS = {"name", "title", "backbone", "baseline", "model_name", "attach", "unavailable_reason", "mscsa",
                   "paper"}


class ProfileError(UserError, ValueError):
    """A profile that does not exist or whose file is malformed."""


class ProfileUnavailable(ProfileError):
    """A Table 7 row whose backbone this installation cannot build yet."""


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    backbone: str  # the timm model whose four stage maps feed MSCSA (features_only)
    model_name: str
    attach: str
    config: MSCSAConfig
    paper: dict[str, float] = field(default_factory=dict)
    unavailable_reason: str = ""
    path: Path | None = None
    baseline: str = ""  # the unmodified timm model for comparisons (default: the backbone)

    @property
    def baseline_model(self) -> str:
        return self.baseline or self.backbone

    @property
    def available(self) -> bool:
        """True when this installation can build the profile: timm knows its backbone (and, for the
        replacement modes, its registered ``*_mscsa`` model). Importing ``mscsa_lab`` registers both."""
        if not timm.is_model(self.backbone):
            return False
        return self.attach == "parallel" or timm.is_model(self.model_name)

    def require_available(self) -> "Profile":
        if not self.available:
            reason = self.unavailable_reason or f"model {self.model_name!r} is not registered"
            raise ProfileUnavailable(f"profile {self.name!r} ({self.title}) cannot be built here: {reason}")
        return self


def _parse(data: dict[str, Any], path: Path | None) -> Profile:
    where = f" in {path}" if path else ""
    unknown = set(data) - _TOP_LEVEL_KEYS
    if unknown:
        raise ProfileError(f"unknown key(s) {sorted(unknown)}{where}; known: {sorted(_TOP_LEVEL_KEYS)}")
    for key in ("name", "backbone"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ProfileError(f"profile{where} needs a non-empty string '{key}'")
    attach = data.get("attach", "parallel")
    if attach not in ATTACH_MODES:
        raise ProfileError(f"attach={attach!r}{where} is unknown: choose one of {list(ATTACH_MODES)}")
    mscsa = data.get("mscsa", {})
    if not isinstance(mscsa, dict):
        raise ProfileError(f"[mscsa]{where} must be a table of settings")
    try:
        config = MSCSAConfig.from_dict(mscsa)
    except (ConfigError, TypeError) as error:
        raise ProfileError(f"profile {data['name']!r}{where}: {error}") from error
    paper = data.get("paper", {})
    bad = [k for k, v in paper.items() if k not in PAPER_KEYS or not isinstance(v, (int, float))]
    if bad:
        raise ProfileError(f"[paper]{where} has unknown or non-numeric entries {bad}; known: {list(PAPER_KEYS)}")
    return Profile(
        name=data["name"],
        title=data.get("title", data["name"]),
        backbone=data["backbone"],
        model_name=data.get("model_name", f"{data['backbone']}_mscsa"),
        attach=attach,
        config=config,
        paper={k: float(v) for k, v in paper.items()},
        unavailable_reason=data.get("unavailable_reason", ""),
        path=path,
        baseline=data.get("baseline", ""),
    )


def load_profile_file(path: str | Path) -> Profile:
    """Read one profile TOML file (ours or a user's)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ProfileError(f"profile file {str(path)!r} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ProfileError(f"profile file {str(path)!r} is not valid TOML: {error}") from None
    return _parse(data, path)


def list_profiles() -> list[Profile]:
    """All bundled profiles, in the order of the paper's Table 7."""
    profiles = [load_profile_file(p) for p in sorted(PROFILES_DIR.glob("*.toml"))]
    order = [
        "topformer_tiny", "topformer_base", "coat_tiny", "coat_small", "resnet18", "resnet50",
        "pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "p2t_tiny", "shunted_tiny", "swin_tiny", "convnext_tiny",
    ]
    return sorted(profiles, key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))


def profile_names() -> list[str]:
    return [p.name for p in list_profiles()]


def load_profile(name: str) -> Profile:
    """A bundled profile by its name, its backbone name or its model name (``resnet50_mscsa``)."""
    if not isinstance(name, str):
        raise ProfileError(f"profile name must be a string, got {name!r}")
    key = name.strip()
    for profile in list_profiles():
        if key in (profile.name, profile.backbone, profile.model_name, profile.title):
            return profile
    raise ProfileError(f"unknown profile {name!r}; available: {', '.join(profile_names())}")
