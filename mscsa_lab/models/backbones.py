"""Four-stage feature extraction from timm backbones, and their pretrained weights.

MSCSA needs exactly the maps at strides 4, 8, 16 and 32 in NCHW. timm's ``features_only`` models
give more or other stages for some families (a ResNet's first feature is the stride-2 stem) and
NHWC maps for others (Swin); this module hides both.

Pretrained weights follow timm's normal path: weights already in the Hugging Face or torch hub
cache load from there without touching the network, others are downloaded by timm. When they are
neither cached nor downloadable (``HF_HUB_OFFLINE`` set, or the weight host cannot be reached) the
request stops within seconds with ``PretrainedWeightsUnavailable`` saying how to go on, instead of
waiting through the hub client's retries.
"""
from __future__ import annotations

import fnmatch
import os
import re
import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import group_parameters
from timm.models._features import FeatureDictNet, FeatureGetterNet
from torch import nn
from mscsa_lab.errors import UserError

__all__ = [
    "StageFeatures",
    "BackboneError",
    "PretrainedWeightsUnavailable",
    "find_local_weights",
    "create_timm_model",
    "MSCSA_STRIDES",
]

MSCSA_STRIDES = (4, 8, 16, 32)
# How long the reachability check of the weight host may take before "offline" is concluded.
REACH_TIMEOUT_S = 3.0
_WEIGHT_SOURCE_KEYS = ("file", "state_dict", "url", "hf_hub_id", "hf_hub_filename")
_HOW_TO_PROCEED = (
    "Run once with network access (timm caches the weights), pass pretrained_file='path/to/weights.safetensors' "
    "(the backbone's timm weights; also pretrained_cfg_overlay=dict(file=...)), or use pretrained=False for "
    "random initialisation."
)


class BackboneError(UserError, ValueError):
    """The backbone is unknown or cannot give the four stage maps MSCSA needs."""


class PretrainedWeightsUnavailable(UserError, RuntimeError):
    """``pretrained=True`` was asked for but the backbone's weights can be neither found nor downloaded."""


# --------------------------------------------------------------------------- timm construction
def create_timm_model(name: str, img_size: int | tuple[int, int] | None = None, **kwargs) -> nn.Module:
    """``timm.create_model`` with ``img_size`` and ``drop_path_rate`` passed only to models whose
    constructor takes them (Swin's windows are built for one input size; most models take any size
    and no ``img_size``; a few have no stochastic depth)."""
    optional = dict(img_size=img_size, drop_path_rate=kwargs.pop("drop_path_rate", None))
    optional = {key: value for key, value in optional.items() if value is not None}
    while True:
        try:
            return timm.create_model(name, **optional, **kwargs)
        except TypeError as error:
            rejected = [key for key in optional if key in str(error)]
            if not rejected:
                raise
            optional.pop(rejected[0])


def _reference_copy(name: str, **kwargs) -> nn.Module | None:
    """The model as timm builds it (no features_only, no weights), on the meta device: no memory,
    no initialisation cost. None when the model cannot be built that way."""
    try:
        with torch.device("meta"):
            return create_timm_model(name, **kwargs)
    except Exception:  # noqa: BLE001 - any failure means "no reference available"
        return None


# --------------------------------------------------------------------------- pretrained weights
def _weights_cfg(backbone: str) -> dict[str, Any] | None:
    """The timm pretrained config whose weights ``timm.create_model(backbone, pretrained=True)``
    loads. Entry points that build under another variant's config (the CoaT serial-block models
    load ``coat_tiny``'s weights) have no registered config of their own: ask a meta-device copy."""
    try:
        cfg = timm.models.get_pretrained_cfg(backbone)
    except Exception:  # noqa: BLE001 - timm raises several types for unknown names
        cfg = None
    if cfg is not None:
        return cfg.to_dict()
    model = _reference_copy(backbone)
    cfg = getattr(model, "pretrained_cfg", None)
    return dict(cfg) if cfg else None


def find_local_weights(backbone: str | dict[str, Any], cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The backbone's timm weights if they are already on disk (Hugging Face or torch hub cache,
    ``cache_dir`` when given, or the pretrained config's ``file``); never downloads. ``backbone``
    is a timm model name or a pretrained config (dict)."""
    cfg = _weights_cfg(backbone) if isinstance(backbone, str) else backbone
    if not cfg:
        return None
    if cfg.get("file") and Path(cfg["file"]).is_file():
        return Path(cfg["file"])
    if cfg.get("hf_hub_id"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub ships with timm
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo_id, _, revision = cfg["hf_hub_id"].partition("@")
            for filename in filter(None, (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin")):
                found = try_to_load_from_cache(repo_id=repo_id, filename=filename, revision=revision or None,
                                               cache_dir=None if cache_dir is None else str(cache_dir))
                if isinstance(found, str) and os.path.isfile(found):
                    return Path(found)
    url = cfg.get("url")
    if isinstance(url, str) and url:
        folder = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
        candidate = folder / os.path.basename(urllib.parse.urlsplit(url).path)
        if candidate.is_file():
            return candidate
    return None


def _hub_offline() -> bool:
    """Hugging Face's offline switch (``HF_HUB_OFFLINE``), read now rather than at import."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in ("1", "ON", "YES", "TRUE")
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return False
    return bool(constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE)


def _download_url(cfg: dict[str, Any]) -> str | None:
    """Where timm would download the weights from: the Hugging Face endpoint, else the config's url."""
    if cfg.get("hf_hub_id"):
        try:
            from huggingface_hub import constants
        except ImportError:  # pragma: no cover
            constants = None
        if constants is not None:
            return f"{constants.ENDPOINT.rstrip('/')}/{cfg['hf_hub_id'].partition('@')[0]}"
    url = cfg.get("url")
    return url if isinstance(url, str) and url else None


def _reachable(url: str, timeout: float = REACH_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the host serving ``url`` (or to the proxy for it) opens within
    ``timeout`` seconds, name lookup included. A quick check, so that a machine without network
    hears so at once rather than after the hub client's retries (tens of seconds)."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return False
    proxy = urllib.request.getproxies().get(parts.scheme) or urllib.request.getproxies().get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or host, proxy_parts.port or 80
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    # Name lookup has no timeout of its own; a daemon thread bounds the whole check.
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def _resolve_pretrained(
    backbone: str,
    pretrained: bool,
    pretrained_file: str | os.PathLike | None = None,
    weights_overlay: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """``timm.create_model`` keyword arguments that load the backbone's weights, or none.

    ``pretrained_file`` (or a ``file`` / ``state_dict`` in ``weights_overlay``) loads from there;
    otherwise cached weights load from the cache and missing ones are downloaded by timm, unless
    the machine is offline, which raises ``PretrainedWeightsUnavailable`` at once."""
    overlay = {key: value for key, value in (weights_overlay or {}).items() if key in _WEIGHT_SOURCE_KEYS}
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise PretrainedWeightsUnavailable(f"pretrained_file {str(path)!r} does not exist")
        return dict(pretrained=True, pretrained_cfg_overlay={**overlay, "file": str(path)})
    if not pretrained:
        return dict(pretrained=False)
    if overlay.get("state_dict") is not None or overlay.get("file"):
        if overlay.get("file") and not Path(overlay["file"]).is_file():
            raise PretrainedWeightsUnavailable(f"pretrained weights file {str(overlay['file'])!r} does not exist")
        return dict(pretrained=True, pretrained_cfg_overlay=overlay)
    cfg = {**(_weights_cfg(backbone) or {}), **overlay}
    if not (cfg.get("hf_hub_id") or cfg.get("url")):
        raise PretrainedWeightsUnavailable(
            f"no pretrained weights for backbone {backbone!r}: timm has none published for it. "
            f"Pass pretrained_file='path/to/weights.safetensors' or use pretrained=False for random initialisation."
        )
    local = find_local_weights(cfg, cache_dir)
    if local is not None:
        return dict(pretrained=True, pretrained_cfg_overlay={**overlay, "file": str(local)})
    source = _download_url(cfg)
    if _hub_offline():
        reason = "HF_HUB_OFFLINE is set, so nothing is downloaded"
    elif source is None or not _reachable(source):
        host = urllib.parse.urlsplit(source).hostname if source else "the weight host"
        reason = f"{host} cannot be reached (no network?)"
    else:
        kwargs: dict[str, Any] = dict(pretrained=True)
        if overlay:
            kwargs["pretrained_cfg_overlay"] = overlay
        if cache_dir is not None:
            kwargs["cache_dir"] = cache_dir
        return kwargs
    raise PretrainedWeightsUnavailable(
        f"no pretrained weights for backbone {backbone!r} on this machine (looked in the Hugging Face and torch "
        f"hub caches) and they cannot be downloaded: {reason}. {_HOW_TO_PROCEED}"
    )


# --------------------------------------------------------------------------- the four stages
def flattened_name(name: str) -> str:
    """A parameter name as timm's FeatureListNet spells it: the first level of Sequential
    containers flattened into the model (``stages.0.x`` -> ``stages_0.x``)."""
    return re.sub(r"^([^.]+)\.(\d+)\.", r"\1_\2.", name)


class StageFeatures(nn.Module):
    """A timm backbone returning its four stage maps at strides 4..32, always NCHW.

    ``channels`` and ``strides`` describe those maps; ``stage_indices`` picks them out of timm's
    feature list (for a ResNet that skips the stride-2 stem). ``stage_modules`` are the paths
    (inside this module) of the modules producing them.
    """

    def __init__(
        self,
        backbone: str,
        pretrained: bool = False,
        pretrained_file: str | os.PathLike | None = None,
        img_size: int | tuple[int, int] | None = None,
        *,
        weights_overlay: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,
        **backbone_kwargs,
    ) -> None:
        """``img_size`` and ``drop_path_rate`` (in ``backbone_kwargs``) are passed to backbones
        whose constructor takes them and ignored by the others. ``weights_overlay`` holds weight
        source keys of timm's pretrained config (``file``, ``url``, ``hf_hub_id``...)."""
        super().__init__()
        if not isinstance(backbone, str) or not backbone:
            raise BackboneError(f"backbone must be a timm model name, got {backbone!r}")
        if not timm.is_model(backbone):
            close = timm.list_models(f"*{backbone.split('_')[0]}*")[:8] if backbone.split("_")[0] else []
            hint = f" Similar names: {', '.join(close)}." if close else ""
            raise BackboneError(f"unknown timm backbone {backbone!r}.{hint}")
        weight_kwargs = _resolve_pretrained(backbone, pretrained, pretrained_file, weights_overlay, cache_dir)
        try:
            model = create_timm_model(backbone, img_size, features_only=True, **weight_kwargs, **backbone_kwargs)
        except Exception as error:  # noqa: BLE001 - timm and the hub client raise many types
            if weight_kwargs.get("pretrained"):
                raise PretrainedWeightsUnavailable(
                    f"could not load pretrained weights for backbone {backbone!r}: {error}. {_HOW_TO_PROCEED}"
                ) from error
            if not isinstance(error, (RuntimeError, ValueError, TypeError, AssertionError, KeyError)):
                raise
            raise BackboneError(
                f"timm backbone {backbone!r} cannot give feature maps (features_only): {error}"
            ) from error
        reductions = list(model.feature_info.reduction())
        missing = [s for s in MSCSA_STRIDES if s not in reductions]
        if missing:
            raise BackboneError(
                f"backbone {backbone!r} has feature maps at strides {reductions}; MSCSA needs "
                f"four stages at strides {list(MSCSA_STRIDES)} (missing {missing})"
            )
        # The last map of each stride is that stage's output.
        self.stage_indices = [max(i for i, r in enumerate(reductions) if r == s) for s in MSCSA_STRIDES]
        all_channels = list(model.feature_info.channels())
        self.channels = [all_channels[i] for i in self.stage_indices]
        self.strides = list(MSCSA_STRIDES)
        self.nhwc = str(getattr(model, "output_fmt", "NCHW")).upper().endswith("NHWC")
        self.name = backbone
        self.grad_checkpointing = False
        # What rebuilds the backbone as timm's own model (for its parameter names), minus the weights.
        self._timm_kwargs = dict(img_size=img_size, **backbone_kwargs)
        self.model = model
        existing = dict(self.named_modules())
        names = model.feature_info.module_name()
        self.stage_modules: list[str | None] = []
        for index in self.stage_indices:
            # FeatureListNet flattens names (stages.0 -> stages_0); FeatureGetterNet keeps them under model.
            name = names[index]
            candidates = (f"model.{name.replace('.', '_')}", f"model.{name}", f"model.model.{name}")
            self.stage_modules.append(next((c for c in candidates if c in existing), None))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.model(x)
        # timm's feature wrappers return a list; TorchScript types the feature getter's output as
        # forward_intermediates' (list or tuple) until told.
        assert isinstance(features, list)
        stages = [features[i] for i in self.stage_indices]
        if self.nhwc:
            stages = [f.permute(0, 3, 1, 2).contiguous() for f in stages]
        return stages

    def prune(self, last_stage: int) -> None:
        """Drop everything after stage ``last_stage`` (0..3): ``forward`` then returns the maps of
        stages 0..last_stage and no parameter of a later stage remains (nothing left unused)."""
        if not 0 <= last_stage < len(self.stage_indices):
            raise ValueError(f"last_stage={last_stage} is not one of the {len(self.stage_indices)} kept stages")
        last_feature = self.stage_indices[last_stage]
        if isinstance(self.model, FeatureGetterNet):
            kept = list(self.model.out_indices)[: last_feature + 1]
            inner = self.model.model
            if not hasattr(inner, "prune_intermediate_layers"):
                raise BackboneError(f"backbone {self.name!r} cannot be pruned: it has no prune_intermediate_layers")
            self.model.out_indices = inner.prune_intermediate_layers(kept, prune_norm=not self.model.norm)
        elif isinstance(self.model, FeatureDictNet):  # FeatureListNet: its modules in the order they run
            returned = [name for name in self.model.keys() if name in self.model.return_layers]
            names = list(self.model.keys())
            for name in names[names.index(returned[last_feature]) + 1:]:
                del self.model[name]
                self.model.return_layers.pop(name, None)
        else:
            raise BackboneError(f"backbone {self.name!r} ({type(self.model).__name__}) cannot be pruned")
        for attribute in ("stage_indices", "channels", "strides", "stage_modules"):
            setattr(self, attribute, getattr(self, attribute)[: last_stage + 1])

    # ------------------------------------------------------------------ timm's training contract
    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        """Checkpoint the backbone's stages where timm supports it; returns whether it does."""
        for target in (self.model, getattr(self.model, "model", None)):
            if target is not None and hasattr(target, "set_grad_checkpointing"):
                try:
                    target.set_grad_checkpointing(enable)
                except (AssertionError, NotImplementedError, TypeError):  # e.g. CoaT: "not supported"
                    return False
                self.grad_checkpointing = enable
                return True
        return False

    def reference_model(self) -> tuple[nn.Module, str] | None:
        """(the backbone as timm builds it without features_only, the prefix its parameter names
        take inside this module). timm's ``no_weight_decay`` and ``group_matcher`` are written for
        those names. FeatureGetterNet keeps that model; for the other wrappers a meta-device copy
        stands in (no memory, no weights)."""
        inner = getattr(self.model, "model", None)
        if isinstance(self.model, FeatureGetterNet) and isinstance(inner, nn.Module):
            return inner, "model.model."
        copy = _reference_copy(self.name, **self._timm_kwargs)
        return None if copy is None else (copy, "model.")

    def _own_names(self, reference: nn.Module, prefix: str) -> dict[str, str]:
        """Reference parameter name -> the same parameter's name in this module (absent when
        features_only pruned it)."""
        own = {name for name, _ in self.named_parameters()}
        mapping = {}
        for name, _ in reference.named_parameters():
            for candidate in (prefix + name, prefix + flattened_name(name)):
                if candidate in own:
                    mapping[name] = candidate
                    break
        return mapping

    def no_weight_decay(self) -> set[str]:
        """The backbone's own ``no_weight_decay()`` (and ``no_weight_decay_keywords()``) as names
        of this module's parameters."""
        found = self.reference_model()
        if found is None:
            return set()
        reference, prefix = found
        patterns = set(reference.no_weight_decay()) if hasattr(reference, "no_weight_decay") else set()
        keywords = set(getattr(reference, "no_weight_decay_keywords", set)())
        mapping = self._own_names(reference, prefix)
        return {
            own for name, own in mapping.items()
            if any(fnmatch.fnmatchcase(name, p) for p in patterns) or any(k in name for k in keywords)
        }

    def parameter_groups(self, coarse: bool = False) -> list[list[str]]:
        """This module's parameter names in the backbone's own layer groups, first to last (its
        timm ``group_matcher``); without one, the stem then one group per stage."""
        own = [name for name, _ in self.named_parameters()]
        groups: list[list[str]] = []
        found = self.reference_model()
        if found is not None and hasattr(found[0], "group_matcher"):
            reference, prefix = found
            mapping = self._own_names(reference, prefix)
            layers = group_parameters(reference, reference.group_matcher(coarse=coarse))
            groups = [[mapping[n] for n in layers[k] if n in mapping] for k in sorted(layers)]
        else:
            stage_of = lambda name: next(  # noqa: E731
                (i for i, m in enumerate(self.stage_modules) if m and name.startswith(m + ".")), -1
            )
            groups = [[n for n in own if stage_of(n) == i] for i in range(-1, len(self.stage_modules))]
        grouped = {n for group in groups for n in group}
        if len(grouped) < len(own):  # parameters the backbone's matcher does not know: the last stage
            groups.append([n for n in own if n not in grouped])
        return [group for group in groups if group]
