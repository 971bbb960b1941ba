"""A model request resolved once: the one object every action takes.

The command line (arguments) and the app (form values) both turn what the user asked for into a
``ModelSpec``: the name resolved to a Table 7 profile or a timm backbone, the MSCSA settings checked
against ``MSCSAConfig``, the input size and task checked. Building, costing, labelling and caching then
read the spec instead of re-parsing names, and a spec is hashable, so the app's model store and the
cost cache key on it.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from torch import nn

from mscsa_lab.errors import UserError
from mscsa_lab.models.config import MSCSAConfig

__all__ = ["ModelSpec", "SpecError", "TASKS", "SETTING_NAMES", "frozen_items"]

TASKS = ("classification", "dense", "segmentation")
SETTING_NAMES = tuple(f.name for f in dataclasses.fields(MSCSAConfig) if f.name != "extra")
# How a changed setting reads in a label ("resnet18 (depth 2, squeeze 1/2)").
_SHORT = {"num_heads": "heads", "key_dim": "d", "mlp_ratio": "mlp", "squeeze_ratio": "squeeze",
          "use_pcp": "PCP", "use_intra_ffn": "Intra-FFN", "use_msp": "MSP"}


class SpecError(UserError, ValueError):
    """A model request that names nothing buildable, or asks for an impossible task or size."""


def frozen_items(mapping: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> tuple[tuple[str, Any], ...]:
    """Sorted (key, value) pairs with lists turned into tuples, so a mapping can be part of a hash key."""
    items = dict(mapping or {}).items()

    def freeze(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(freeze(v) for v in value)
        if isinstance(value, dict):
            return frozen_items(value)
        return value

    return tuple(sorted((str(key), freeze(value)) for key, value in items))


@dataclass(frozen=True)
class ModelSpec:
    """What to build: ``profile`` (a Table 7 row, for its MSCSA settings) and/or ``backbone`` (a timm
    model), the MSCSA ``settings`` changed from the profile's, the task, input size, classes and weights.
    Make one with ``ModelSpec.resolve``; fields are plain values, so a spec is hashable and picklable."""

    name: str  # what the results are called before settings: the profile's name or the backbone's
    profile: str | None
    backbone: str
    task: str = "classification"
    input_size: tuple[int, int] = (224, 224)
    num_classes: int = 1000
    settings: tuple[tuple[str, Any], ...] = ()
    pretrained: bool = False
    pretrained_file: str | None = None
    backbone_kwargs: tuple[tuple[str, Any], ...] = ()

    # ------------------------------------------------------------------ making one
    @classmethod
    def resolve(cls, name: str | None = None, *, backbone: str | None = None, task: str = "classification",
                input_size: Any = (224, 224), num_classes: int | None = None,
                settings: Mapping[str, Any] | None = None, pretrained: bool = False,
                pretrained_file: str | None = None, backbone_kwargs: Mapping[str, Any] | None = None) -> "ModelSpec":
        """``name``: a Table 7 profile or any timm backbone name (``resolve_name`` decides); ``backbone``:
        a timm backbone that replaces the profile's (the profile then gives only the MSCSA settings).
        Everything is checked here, before any model is built."""
        from mscsa_lab.registry import SEGMENTATION, parse_input_size

        name = (name or "").strip() or None
        backbone = (backbone or "").strip() or None
        if name is None and backbone is None:
            raise SpecError("name a Table 7 profile (e.g. pvt_v2_b1) or a timm backbone (e.g. resnet18)")
        if task not in TASKS:
            raise SpecError(f"task {task!r} is unknown: choose one of {', '.join(TASKS)}")
        if not isinstance(input_size, (tuple, list)) or len(input_size) != 2:
            raise SpecError(f"input size must be (height, width), got {input_size!r}")
        size = parse_input_size(*input_size)
        profile = None
        if name is not None:
            label, profile = _resolve(name)
            if profile is None and backbone is None:
                backbone = label
            elif profile is None:
                raise SpecError(f"{name!r} is a timm backbone, not a profile: give one backbone name")
        if profile is not None:
            profile.require_available()
            backbone = backbone or profile.backbone
        elif not _is_timm_model(backbone):
            raise SpecError(_unknown(backbone))
        unknown = sorted(set(settings or {}) - set(SETTING_NAMES))
        if unknown:
            raise SpecError(f"unknown MSCSA setting(s) {unknown}: the settings are {', '.join(SETTING_NAMES)} "
                            "(input size, task, batch... have their own options)")
        base = profile.config if profile is not None else MSCSAConfig()
        base.replace(**dict(settings or {}))  # validates every value now, with ConfigError's message
        if num_classes is None:
            num_classes = 150 if task == SEGMENTATION else 1000
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 0 <= num_classes <= 100_000:
            raise SpecError(f"number of classes must be a whole number from 0 to 100000, got {num_classes!r}")
        if task == SEGMENTATION and (profile is None or profile.attach != "replace_sase"):
            raise SpecError("task 'segmentation' (the paper's Table 3) exists only for the TopFormer profiles "
                            "topformer_tiny and topformer_base; use task 'dense' for other backbones")
        label = profile.name if profile is not None and backbone == profile.backbone else backbone
        if profile is not None and backbone != profile.backbone:
            label = f"{backbone} ({profile.name} settings)"
        return cls(name=label, profile=profile.name if profile is not None else None, backbone=backbone,
                   task=task, input_size=size, num_classes=num_classes, settings=frozen_items(settings),
                   pretrained=bool(pretrained), pretrained_file=str(pretrained_file) if pretrained_file else None,
                   backbone_kwargs=frozen_items(backbone_kwargs))

    def replace(self, **changes: Any) -> "ModelSpec":
        """A copy with some fields changed, checked again (e.g. ``spec.replace(task="classification")``)."""
        fields = {**dataclasses.asdict(self), **changes}
        return ModelSpec.resolve(fields["profile"] or fields["backbone"],
                                 backbone=fields["backbone"] if fields["profile"] else None,
                                 task=fields["task"], input_size=fields["input_size"],
                                 num_classes=fields["num_classes"], settings=dict(fields["settings"]),
                                 pretrained=fields["pretrained"], pretrained_file=fields["pretrained_file"],
                                 backbone_kwargs=dict(fields["backbone_kwargs"]))

    # ------------------------------------------------------------------ reading it
    @property
    def settings_dict(self) -> dict[str, Any]:
        return dict(self.settings)

    @property
    def config(self) -> MSCSAConfig:
        from mscsa_lab.presets import load_profile

        base = load_profile(self.profile).config if self.profile else MSCSAConfig()
        return base.replace(**self.settings_dict)

    @property
    def modified(self) -> bool:
        """True when the MSCSA settings differ from the profile's (paper figures then do not apply)."""
        if not self.settings:
            return False
        from mscsa_lab.presets import load_profile

        base = load_profile(self.profile).config if self.profile else MSCSAConfig()
        return self.config.to_dict() != base.to_dict()

    @property
    def label(self) -> str:
        """What results of this model are called: the name, plus each setting changed from the profile."""
        from mscsa_lab.presets import load_profile

        base = load_profile(self.profile).config if self.profile else MSCSAConfig()
        changed = []
        given = self.settings_dict
        for key in SETTING_NAMES:  # in the configuration's own order: depth, heads, d, MLP, squeeze...
            if key not in given or getattr(base, key) == getattr(self.config, key):
                continue
            value = given[key]
            short = _SHORT.get(key, key)
            if isinstance(value, bool):
                changed.append(short if value else f"no {short}")
            else:
                changed.append(f"{short} {value}")
        return self.name + (f" ({', '.join(changed)})" if changed else "")

    @property
    def size_text(self) -> str:
        return f"{self.input_size[0]}x{self.input_size[1]}"

    def to_dict(self) -> dict[str, Any]:
        """For result metadata: what was built, in plain JSON values."""
        return dict(model=self.label, profile=self.profile, backbone=self.backbone, task=self.task,
                    input_size=list(self.input_size), num_classes=self.num_classes, settings=self.settings_dict,
                    pretrained=self.pretrained, pretrained_file=self.pretrained_file)

    # ------------------------------------------------------------------ building it
    def create_kwargs(self) -> dict[str, Any]:
        return dict(backbone=self.backbone, task=self.task,
                    num_classes=self.num_classes, img_size=self.input_size,
                    backbone_kwargs=dict(self.backbone_kwargs) or None, **self.settings_dict)

    def build(self) -> nn.Module:
        """The model, in eval mode, with the requested weights. Every action costs the spec first (``guard``:
        weights and activations), so the library's own weights-only check is not run again here; call
        ``guard(spec)`` before building a spec of your own."""
        from mscsa_lab.registry import create_mscsa_model

        return create_mscsa_model(self.profile, pretrained=self.pretrained, pretrained_file=self.pretrained_file,
                                  check_memory=False, **self.create_kwargs()).eval()

    def meta(self) -> nn.Module:
        """The model on PyTorch's meta device: shapes without weights or memory, for costing."""
        from mscsa_lab.analysis.cost import meta_model

        return meta_model(self.profile, **self.create_kwargs())

    def estimate(self, batch: int = 1, training: bool = False, keeps_activations: bool = False,
                 max_params: int | None = None):
        """The ``analysis.cost.CostEstimate`` of running this model at ``batch`` (meta device, cached).
        A model above ``max_params`` parameters (a limit that refuses it anyway) is not traced: its memory
        is unknown (NaN)."""
        from mscsa_lab.analysis.cost import cost_at_batch, unit_cost

        spec = self.without_weights()
        if max_params is not None and _parameter_count(spec) > max_params:  # refused on its count alone
            unit = unit_cost(_meta_model(spec), label=spec.label, input_size=spec.input_size, training=bool(training),
                             trace_params=int(max_params))
        else:
            unit = _unit_cost(spec, bool(training))
        return cost_at_batch(unit, batch, keeps_activations)

    def without_weights(self) -> "ModelSpec":
        """The same architecture with no weight source (costing needs no weights)."""
        if not self.pretrained and self.pretrained_file is None:
            return self
        return dataclasses.replace(self, pretrained=False, pretrained_file=None)


def _unknown(name: str) -> str:
    """What to say about a name that is neither a profile nor a timm model: close timm names, the profiles."""
    import timm

    from mscsa_lab.presets import list_profiles

    import difflib

    close = difflib.get_close_matches(str(name)[:200], timm.list_models(), n=8, cutoff=0.75)
    hint = f" Similar timm names: {', '.join(close)}." if close else ""
    return (f"unknown timm backbone {str(name)[:200]!r} (and no Table 7 profile has that name).{hint} "
            f"Profiles: {', '.join(p.name for p in list_profiles())}")


def _resolve(name: str):
    """(label, profile or None) of a profile or timm name, or the message for an unknown one."""
    from mscsa_lab.presets import ProfileError, profile_names
    from mscsa_lab.registry import resolve_name

    try:
        return resolve_name(name)
    except ProfileError:
        if name.strip() in profile_names():  # a profile that cannot be loaded: its own message says why
            raise
        raise SpecError(_unknown(name)) from None


def _is_timm_model(name: str | None) -> bool:
    import timm

    return bool(name) and timm.is_model(name)


@functools.lru_cache(maxsize=4)
def _meta_model(spec: ModelSpec) -> nn.Module:
    """``spec.meta()``, kept for the costing that follows a parameter count (only read: costing copies it)."""
    return spec.meta()


@functools.lru_cache(maxsize=64)
def _parameter_count(spec: ModelSpec) -> int:
    from mscsa_lab.analysis.known_costs import known_unit_cost

    known = known_unit_cost(spec, False)
    return known.params if known is not None else sum(p.numel() for p in _meta_model(spec).parameters())


@functools.lru_cache(maxsize=64)
def _unit_cost(spec: ModelSpec, training: bool):
    """The batch-1 cost of ``spec`` (weights left out), computed once per architecture and mode: every
    activation and saved tensor carries the batch dimension, so larger batches scale it."""
    from mscsa_lab.analysis.cost import unit_cost
    from mscsa_lab.analysis.known_costs import known_unit_cost

    known = known_unit_cost(spec, training)  # the shipped profiles at their own size: measured once, shipped
    if known is not None:
        return known
    return unit_cost(_meta_model(spec), label=spec.label, input_size=spec.input_size, training=training)
