"""The teacher of a distillation run: a timm backbone with its own trained classifier, and the
names of its classes.

Weights come from timm's download path (``pretrained=True``: the Hugging Face or torch hub cache,
else a download, failing within seconds offline) or from a weights file (``pretrained_file``:
safetensors, or a ``.pth`` read with ``weights_only=True``) holding the whole model, classifier
included. The number of classes is read from the file's classifier.

Class names, first found wins:

1. ``classes_file``: a JSON file given with the run (``teacher_classes`` in ``TrainConfig``);
2. beside the weights file: ``<weights stem>.json``, ``classes.json``, ``config.json`` (the
   layout of a timm model on the Hugging Face hub), ``model.json`` (an mscsa_lab run);
3. ImageNet-1k names from timm's own ImageNet info (``timm.data.ImageNetInfo``) when the head has
   1000 classes (or the ImageNet subset timm infers for the weights, e.g. 11821 for ImageNet-12k);
4. otherwise ``class 0`` ... ``class N-1`` (the run notes it).

A JSON file holds a list of names, or an object with one under ``classes``, ``label_names`` or
``pretrained_cfg.label_names``; it must name exactly as many classes as the classifier has.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mscsa_lab.train.config import TrainingInputError

__all__ = ["Teacher", "load_teacher", "read_class_names", "imagenet_class_names", "teacher_class_count",
           "CLASS_FILE_NAMES"]

CLASS_FILE_NAMES = ("classes.json", "config.json", "model.json")
MAX_CLASS_FILE_BYTES = 16 * 2**20  # ImageNet-21k's names take about 1 MB


@dataclass
class Teacher:
    model: nn.Module  # the timm model with its classifier, eval mode, no gradients
    classes: list[str]
    classes_source: str  # where the names came from: a file path, "imagenet-1k"..., or "generic"
    weights: str  # "pretrained (timm)" or the weights file
    notes: list[str] = field(default_factory=list)

    def describe(self, backbone: str) -> dict[str, Any]:
        return {"backbone": backbone, "weights": self.weights, "num_classes": len(self.classes),
                "classes_source": self.classes_source}


def imagenet_class_names(subset: str = "imagenet-1k") -> list[str]:
    """Readable names of an ImageNet subset in class-index order (``"tabby, tabby cat"``) from
    timm's ImageNet info; names that occur twice get their WordNet id added (ImageNet-1k has two
    'crane's and two 'maillot's), so every name is unique."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo(subset)
    names = [info.index_to_description(i) for i in range(info.num_classes())]
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [f"{name} ({info.index_to_label_name(i)})" if counts[name] > 1 else name for i, name in enumerate(names)]


def read_class_names(path: str | Path, num_classes: int | None = None) -> list[str]:
    """Class names from a JSON file (see the module's docstring for the layouts)."""
    from mscsa_lab.io.guarded import parse_json, read_bytes, shown_name

    path = Path(path)
    raw = read_bytes(path, MAX_CLASS_FILE_BYTES, what="class names file", error=TrainingInputError)
    try:
        data = parse_json(raw, "the file", error=TrainingInputError)
    except TrainingInputError as error:
        raise TrainingInputError(f"class names file {shown_name(path)} is not readable JSON ({error})") from None
    names = data
    if isinstance(data, dict):
        names = data.get("classes") or data.get("label_names") or (data.get("pretrained_cfg") or {}).get("label_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise TrainingInputError(f"{str(path)!r} holds no class names: write a JSON list of names, or an object with "
                                 f"a 'classes' list")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise TrainingInputError(f"{str(path)!r} names some classes twice ({', '.join(twice[:5])}): names must differ")
    if num_classes is not None and len(names) != num_classes:
        raise TrainingInputError(f"{str(path)!r} names {len(names)} classes but the teacher's classifier has "
                                 f"{num_classes}: give a file with one name per class, in the classifier's order")
    return names


def _classifier_rows(state: dict[str, torch.Tensor], classifier: str | list | tuple | None, backbone: str) -> int:
    """The number of classes of a saved classifier (rows of its weight)."""
    names = [classifier] if isinstance(classifier, str) else list(classifier or [])
    for name in names:
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.ndim >= 2:
            return int(weight.shape[0])
    expected = ", ".join(f"{n}.weight" for n in names) or "(timm names no classifier for it)"
    raise TrainingInputError(
        f"the weights file holds no classifier of {backbone!r} (looked for {expected}): distillation needs the "
        f"whole trained model, head included. Save it with safetensors.torch.save_file(model.state_dict(), path) "
        f"from the timm model, not from features_only or a backbone without its head")


def _find_class_file(weights_file: Path) -> Path | None:
    for candidate in (weights_file.with_suffix(".json"), *(weights_file.parent / n for n in CLASS_FILE_NAMES)):
        if candidate.is_file():
            return candidate
    return None


def load_teacher(backbone: str, pretrained: bool = False, pretrained_file: str | None = None,
                 classes_file: str | None = None, img_size: int | None = None,
                 backbone_kwargs: dict[str, Any] | None = None) -> Teacher:
    """The teacher model (eval mode, frozen) and its class names; see the module's docstring."""
    import timm

    from mscsa_lab.io.checkpoints import CheckpointError, read_state_dict
    from mscsa_lab.models.backbones import _resolve_pretrained, create_timm_model

    if not (pretrained or pretrained_file):
        raise TrainingInputError("distillation needs a trained teacher: give pretrained=True (timm's weights; "
                                 "--pretrained) or a weights file (pretrained_file; --pretrained-file)")
    if not isinstance(backbone, str) or not timm.is_model(backbone):
        raise TrainingInputError(f"the teacher {backbone!r} is not a timm model name")
    kwargs = dict(backbone_kwargs or {})
    notes: list[str] = []
    if pretrained_file:
        path = Path(pretrained_file)
        try:
            state = read_state_dict(path)
        except CheckpointError as error:
            raise TrainingInputError(f"teacher weights: {error}") from None
        cfg = timm.models.get_pretrained_cfg(backbone)
        classifier = cfg.classifier if cfg is not None else "fc"
        num_classes = _classifier_rows(state, classifier, backbone)
        model = create_timm_model(backbone, img_size, num_classes=num_classes, **kwargs)
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in state and state[k].shape != own[k].shape]
        if missing or wrong:
            detail = "; ".join(filter(None, [f"missing {', '.join(missing[:4])}" if missing else "",
                                             f"wrong shape {', '.join(wrong[:4])}" if wrong else ""]))
            raise TrainingInputError(f"{path.name} does not fit timm's {backbone!r} ({detail}): was it saved from "
                                     f"this backbone (with the same backbone arguments)?")
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items() if k in own})
        weights = str(path)
    else:
        weight_kwargs = _resolve_pretrained(backbone, True)  # fails within seconds when offline
        model = create_timm_model(backbone, img_size, **weight_kwargs, **kwargs)
        num_classes = int(model.num_classes)
        weights = "pretrained (timm)"
        path = None
    model.eval().requires_grad_(False)

    source_file = Path(classes_file) if classes_file else (_find_class_file(path) if path is not None else None)
    if classes_file and not source_file.is_file():
        raise TrainingInputError(f"class names file {classes_file!r} does not exist")
    if source_file is not None:
        return Teacher(model, read_class_names(source_file, num_classes), str(source_file), weights, notes)
    subset = _imagenet_subset(model, num_classes)
    if subset is not None:
        return Teacher(model, imagenet_class_names(subset), subset, weights, notes)
    notes.append(f"no class names for the teacher's {num_classes} classes (put a classes.json beside the weights "
                 f"file): they are called 'class 0'...'class {num_classes - 1}'")
    return Teacher(model, [f"class {i}" for i in range(num_classes)], "generic", weights, notes)


def _imagenet_subset(model: nn.Module, num_classes: int) -> str | None:
    """timm's ImageNet subset for the model's weights ('imagenet-1k' for 1000 classes...), or None."""
    from timm.data import infer_imagenet_subset

    if num_classes == 1000:
        return "imagenet-1k"
    try:
        subset = infer_imagenet_subset(model)
    except Exception:  # noqa: BLE001 - timm's inference reads optional config fields
        return None
    if subset:
        from timm.data import ImageNetInfo

        try:
            if ImageNetInfo(subset).num_classes() == num_classes:
                return subset
        except Exception:  # noqa: BLE001 - an unknown subset name
            return None
    return None


def teacher_class_count(backbone: str | None, pretrained_file: str | None = None,
                        classes_file: str | None = None) -> int | None:
    """How many classes the teacher's classifier has, without loading it (for costing a run before it
    starts): the class names file's length, the classifier's rows in a safetensors file's header, or
    timm's pretrained configuration; None when none of them tells (the run itself then finds out)."""
    import timm

    try:
        if classes_file:
            return len(read_class_names(classes_file))
        cfg = timm.models.get_pretrained_cfg(backbone) if backbone and timm.is_model(backbone) else None
        if pretrained_file and str(pretrained_file).endswith(".safetensors"):
            from safetensors import safe_open

            from mscsa_lab.io.checkpoints import MAX_CHECKPOINT_BYTES, CheckpointError
            from mscsa_lab.io.guarded import checked_file

            path = checked_file(pretrained_file, MAX_CHECKPOINT_BYTES, what="teacher weights", error=CheckpointError)
            names = [cfg.classifier] if cfg is not None and isinstance(cfg.classifier, str) else ["fc", "head.fc", "head"]
            with safe_open(str(path), "pt") as handle:
                keys = set(handle.keys())
                for name in names:
                    if f"{name}.weight" in keys:
                        return int(handle.get_slice(f"{name}.weight").get_shape()[0])
            return None
        if pretrained_file:
            return None
        return int(cfg.num_classes) if cfg is not None and cfg.num_classes else None
    except Exception:  # noqa: BLE001 - only an estimate: the run reads the teacher properly and says what is wrong
        return None
