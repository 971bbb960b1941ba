"""Ready MSCSA profiles: one TOML file per row of the paper's Table 7, in ``profiles/``.

A profile names the backbone, how MSCSA attaches to it, the MSCSA hyper-parameters and, where the
paper reports them, its Table 6 figures (so comparisons can put the paper beside our numbers).
Users can load their own TOML files of the same form with ``load_profile_file``.
"""
from __future__ import annotations

import dataclasses
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm

from mscsa_lab.errors import UserError
from mscsa_lab.io.guarded import InputFileError, read_toml, shown_name
from mscsa_lab.io.schema import Field, boolean, check, integer, number, one_of, table, text
from mscsa_lab.models.config import ConfigError, MSCSAConfig
from mscsa_lab.paths import PROFILES_DIR

__all__ = [
    "Profile",
    "ProfileError",
    "ProfileUnavailable",
    "ProfileWarning",
    "SkippedProfile",
    "PROFILES_DIR",
    "list_profiles",
    "load_profile",
    "load_profile_file",
    "profile_names",
    "skipped_profiles",
]

ATTACH_MODES = ("parallel", "replace_sase", "replace_parallel_blocks")
# Table 6 (ImageNet-1k, 224x224) figures, and Table 3's segmentation FLOPs (ADE20K, 512x512; TopFormer).
PAPER_KEYS = ("flops_g", "flops_mscsa_g", "fps", "fps_mscsa", "top1", "top1_mscsa", "seg_flops_g", "seg_flops_mscsa_g")
MAX_PROFILE_BYTES = 256 * 1024  # the bundled profiles are about 1 KB
MAX_PROFILE_FILES = 1000  # a profiles folder holding more is read up to this many files
# The squeeze conv narrows each stage (Ci -> round(Ci * ratio)); MSCSAConfig allows up to 4 for
# experiments, a profile (a reference configuration) does not widen.
MAX_PROFILE_SQUEEZE = 1.0


class ProfileError(UserError, ValueError):
    """A profile that does not exist or whose file is malformed."""


class ProfileUnavailable(ProfileError):
    """A Table 7 row whose backbone this installation cannot build yet."""


class ProfileWarning(UserWarning):
    """A file in the profiles folder that was skipped; the message says which and why."""


def _mscsa_schema() -> Field:
    """The [mscsa] table: each MSCSAConfig field with its type (the ranges are MSCSAConfig's own)."""
    whole = ("pool_stride", "dense_pool_stride", "depth", "num_heads", "key_dim")
    flags = ("use_pcp", "use_intra_ffn", "use_msp")
    names = ("act_layer", "downsample", "attn_impl", "fusion_order", "upsample_mode", "weight_init")
    fields: dict[str, Field] = {}
    for item in dataclasses.fields(MSCSAConfig):
        if item.name == "extra":
            continue
        if item.name in whole:
            fields[item.name] = integer()
        elif item.name in flags:
            fields[item.name] = boolean()
        elif item.name in names:
            fields[item.name] = text(length=(1, 64))
        elif item.name == "squeeze_ratio":
            fields[item.name] = one_of(number(), text(length=(0, 32)),
                                       what="a number, a fraction string such as \"5/8\" or \"none\"")
        else:
            fields[item.name] = one_of(number(), text(length=(0, 64)), boolean(), what="a number")
    return table(fields, closed=True, what="a [mscsa] table of settings")


PROFILE_SCHEMA = table({
    "name": text(required=True, length=(1, 64)),
    "title": text(length=(1, 200)),
    "backbone": text(required=True, length=(1, 200)),
    "baseline": text(length=(0, 200)),
    "model_name": text(length=(1, 200)),
    "attach": text(choices=ATTACH_MODES),
    "unavailable_reason": text(length=(0, 2000)),
    "mscsa": _mscsa_schema(),
    "paper": table({key: number(low=0) for key in PAPER_KEYS}, closed=True,
                   what="a [paper] table of numbers (the paper's figures)"),
}, closed=True)


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
    where = f"profile file {shown_name(path)}" if path else "profile"
    data = check(data, PROFILE_SCHEMA, where, ProfileError)
    try:
        config = MSCSAConfig.from_dict(data.get("mscsa", {}))
    except (ConfigError, TypeError) as error:
        raise ProfileError(f"{where} ({data['name']!r}): {error}") from None
    if config.squeeze_ratio is not None and config.squeeze_ratio > MAX_PROFILE_SQUEEZE:
        raise ProfileError(f"{where} ({data['name']!r}): squeeze_ratio={config.squeeze_ratio:g} is out of range for "
                           f"a profile: the squeeze conv narrows each stage, choose a value in (0, "
                           f"{MAX_PROFILE_SQUEEZE:g}] or \"none\"")
    return Profile(
        name=data["name"],
        title=data.get("title", data["name"]),
        backbone=data["backbone"],
        model_name=data.get("model_name", f"{data['backbone']}_mscsa"),
        attach=data.get("attach", "parallel"),
        config=config,
        paper={k: float(v) for k, v in data.get("paper", {}).items()},
        unavailable_reason=data.get("unavailable_reason", ""),
        path=path,
        baseline=data.get("baseline", ""),
    )


def load_profile_file(path: str | Path) -> Profile:
    """Read one profile TOML file (ours or a user's); anything wrong with it is a ``ProfileError``
    naming the file and the field (a folder, a FIFO, /dev/zero, a huge or deeply nested file included)."""
    data = read_toml(path, MAX_PROFILE_BYTES, what="profile file", error=ProfileError)
    return _parse(data, Path(path))


@dataclass(frozen=True)
class SkippedProfile:
    """A file of the profiles folder that is not offered, and why (for listings and warnings)."""

    path: Path
    reason: str
    name: str = ""  # the name the file claims, when it could be read


_ORDER = ["topformer_tiny", "topformer_base", "coat_tiny", "coat_small", "resnet18", "resnet50", "pvt_v2_b0",
          "pvt_v2_b1", "pvt_v2_b2", "p2t_tiny", "shunted_tiny", "swin_tiny", "convnext_tiny"]
_cache: dict[Path, tuple[tuple, list[Profile], list[SkippedProfile]]] = {}
_cache_lock = threading.Lock()


def _signature(files: list[Path]) -> tuple:
    """What changes when a profile file is added, removed or edited (names, sizes, times)."""
    entries = []
    for path in files:
        try:
            info = path.stat()
            entries.append((path.name, info.st_mtime_ns, info.st_size, info.st_ino))
        except (OSError, RuntimeError):
            entries.append((path.name, None, None, None))
    return tuple(entries)


def _read_folder(folder: Path, files: list[Path]) -> tuple[list[Profile], list[SkippedProfile]]:
    """Every readable profile, one per name; the rest as ``SkippedProfile`` with a warning each.

    Two files claiming one name: the file named after it (``resnet18.toml`` for "resnet18") keeps
    it, else the first file in name order; the other is skipped. So a name always means one file,
    whichever path or order the folder is read in."""
    loaded: list[Profile] = []
    skipped: list[SkippedProfile] = []
    for path in files:
        try:
            data = read_toml(path, MAX_PROFILE_BYTES, root=folder, what="profile file", error=ProfileError)
        except (ProfileError, InputFileError) as error:
            skipped.append(SkippedProfile(path, str(error)))
            continue
        try:
            loaded.append(_parse(data, path))
        except ProfileError as error:
            claimed = data.get("name")
            skipped.append(SkippedProfile(path, str(error), claimed if isinstance(claimed, str) else ""))
    by_name: dict[str, list[Profile]] = {}
    for profile in loaded:
        by_name.setdefault(profile.name, []).append(profile)
    kept = []
    for name, group in by_name.items():
        group.sort(key=lambda p: (p.path.stem != name, p.path.name))
        kept.append(group[0])
        for other in group[1:]:
            skipped.append(SkippedProfile(other.path, f"profile file {shown_name(other.path.name)} is skipped: its "
                                          f"name {name!r} is already used by {group[0].path.name} (rename one of "
                                          "them)", name))
    kept.sort(key=lambda p: (_ORDER.index(p.name) if p.name in _ORDER else len(_ORDER), p.name))
    skipped.sort(key=lambda s: s.path.name)
    for item in skipped:
        warnings.warn(f"{item.reason}", ProfileWarning, stacklevel=4)
    return kept, skipped


def _scan(folder: Path | None) -> tuple[list[Profile], list[SkippedProfile]]:
    folder = Path(PROFILES_DIR if folder is None else folder)
    try:
        files = sorted(folder.glob("*.toml"))[:MAX_PROFILE_FILES]
    except OSError as error:
        warnings.warn(f"profiles folder {shown_name(folder)} cannot be listed: {error.strerror or error}",
                      ProfileWarning, stacklevel=3)
        return [], []
    signature = _signature(files)
    with _cache_lock:
        cached = _cache.get(folder)
        if cached is not None and cached[0] == signature:
            return cached[1], cached[2]
        profiles, skipped = _read_folder(folder, files)
        _cache[folder] = (signature, profiles, skipped)
        return profiles, skipped


def list_profiles(folder: str | Path | None = None) -> list[Profile]:
    """The usable profiles of ``folder`` (the bundled ``profiles/`` by default), in the order of the
    paper's Table 7. A malformed file never stops this (nor ``import mscsa_lab``): it is skipped with
    a ``ProfileWarning`` and listed by ``skipped_profiles``. Files are re-read only when they change."""
    return list(_scan(None if folder is None else Path(folder))[0])


def skipped_profiles(folder: str | Path | None = None) -> list[SkippedProfile]:
    """The files of ``folder`` that ``list_profiles`` leaves out, each with the reason."""
    return list(_scan(None if folder is None else Path(folder))[1])


def profile_names(folder: str | Path | None = None) -> list[str]:
    return [p.name for p in list_profiles(folder)]


def load_profile(name: str, folder: str | Path | None = None) -> Profile:
    """A profile of ``folder`` (the bundled ``profiles/`` by default) by its name, model name
    (``resnet50_mscsa``), backbone name or title, tried in that order over all profiles, so a name
    matches the same profile whatever the folder order. A skipped file's name says why it was skipped."""
    if not isinstance(name, str):
        raise ProfileError(f"profile name must be a string, got {type(name).__name__}")
    key = name.strip()
    profiles = list_profiles(folder)
    for attribute in ("name", "model_name", "backbone", "title"):
        for profile in profiles:
            if getattr(profile, attribute) == key:
                return profile
    for item in skipped_profiles(folder):
        if key and key in (item.name, item.path.stem):
            raise ProfileUnavailable(f"profile {shown_name(key)} is unavailable: {item.reason}")
    raise ProfileError(f"unknown profile {shown_name(name)}; available: {', '.join(p.name for p in profiles)}")
