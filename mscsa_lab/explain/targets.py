"""What a map explains: a class given by index or name, or any score computed from the logits,
and the class names that make predictions readable ("pineapple", not "class 953").

A target is resolved once per image into a :class:`ResolvedTarget` whose ``score`` turns a batch of
logits into one number per image; the gradient methods differentiate it and the faithfulness
curves read it on perturbed copies of the image.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch

from mscsa_lab.errors import UserError

__all__ = ["SaliencyError", "TargetError", "TargetLike", "ResolvedTarget", "resolve_target", "class_names_for", "imagenet_class_names"]

TargetLike = Union[int, str, Callable[[torch.Tensor], torch.Tensor], None]


class SaliencyError(UserError, ValueError):
    """A saliency request that cannot be served (wrong layer, method, target...)."""


class TargetError(SaliencyError):
    """A target that names no class of the model, or a score function that does not give a score."""


@dataclass(frozen=True)
class ResolvedTarget:
    """``index``: the class (None for a custom score); ``label``: how figures name it;
    ``function``: logits (B x classes) -> B scores, the quantity the gradients explain."""

    index: int | None
    label: str
    function: Callable[[torch.Tensor], torch.Tensor]

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """One score per image of the batch (checked, so a bad callable fails with a message)."""
        value = self.function(logits)
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value, dtype=logits.dtype)
        if value.numel() != logits.shape[0]:
            raise TargetError(f"the target function returned {tuple(value.shape)} for {logits.shape[0]} image(s): "
                              "it must give one score per image (a tensor of shape [batch] or a scalar for one image)")
        return value.reshape(logits.shape[0])

    def faithfulness_score(self, logits: torch.Tensor) -> torch.Tensor:
        """The class probability (as RISE scores deletion and insertion), or the custom score itself."""
        if self.index is not None:
            return logits.softmax(-1)[:, self.index]
        return self.score(logits)


def _class_score(index: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def score(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, index]

    return score


def resolve_target(target: TargetLike, logits: torch.Tensor, class_names: Sequence[str] | None = None) -> ResolvedTarget:
    """``None``: the top-1 class of ``logits`` (1 x classes); an int or a numeric string: that class;
    any other string: the class of that name (case ignored); a callable: ``callable(logits)`` is the score."""
    num_classes = int(logits.shape[-1])
    names = list(class_names) if class_names is not None else None

    def label_of(index: int) -> str:
        return names[index] if names is not None and index < len(names) else f"class {index}"

    if target is None:
        index = int(logits[0].argmax())
        return ResolvedTarget(index, label_of(index), _class_score(index))
    if callable(target):
        return ResolvedTarget(None, getattr(target, "__name__", "custom score").strip("<>") or "custom score", target)
    if isinstance(target, bool):
        raise TargetError(f"target={target!r} is not a class: give an index, a class name or a callable")
    if isinstance(target, str):
        text = target.strip()
        if text.lstrip("-").isdigit():
            target = int(text)
        else:
            return _by_name(text, names, label_of)
    if isinstance(target, (int, np.integer)):
        index = int(target)
        if not 0 <= index < num_classes:
            raise TargetError(f"target class {index} does not exist: choose 0..{num_classes - 1}")
        return ResolvedTarget(index, label_of(index), _class_score(index))
    raise TargetError(f"target={target!r} ({type(target).__name__}) is not a class index, a class name or a callable")


def _by_name(text: str, names: list[str] | None, label_of: Callable[[int], str]) -> ResolvedTarget:
    if not names:
        raise TargetError(f"target class {text!r} is a name, but this model has no class names: give an index")
    lowered = [name.lower() for name in names]
    if text.lower() in lowered:
        index = lowered.index(text.lower())
        return ResolvedTarget(index, label_of(index), _class_score(index))
    close = difflib.get_close_matches(text.lower(), lowered, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(names[lowered.index(c)]) for c in close)}?" if close else \
        f"; the classes are {', '.join(names[:10])}{'...' if len(names) > 10 else ''}"
    raise TargetError(f"target class {text!r} is not one of this model's {len(names)} class names{hint}")


def imagenet_class_names(num_classes: int = 1000) -> list[str] | None:
    """Short readable names of an ImageNet head (timm's bundled synset lists; nothing is downloaded):
    each class's first synonym, with the index added where two classes share it ("crane (134)")."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is None:
        return None
    descriptions = ImageNetInfo(subset).label_descriptions()
    first = [text.split(",")[0].strip() for text in descriptions]
    counts: dict[str, int] = {}
    for name in first:
        counts[name] = counts.get(name, 0) + 1
    return [name if counts[name] == 1 else f"{name} ({index})" for index, name in enumerate(first)]


def class_names_for(model: Any, meta: dict | None = None) -> list[str] | None:
    """The names a model's classes go by: a trained run's (or the demo model's) own ``classes``,
    ImageNet's for a 1000-class (or other ImageNet-subset) head, else ``class 0``, ``class 1``...;
    None for a model without classes (dense)."""
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if meta and meta.get("classes"):
        names = [str(name) for name in meta["classes"]]
        if num_classes and len(names) != num_classes:
            raise TargetError(f"the metadata names {len(names)} classes but the model has {num_classes}: "
                              "is it the model.json of this run?")
        return names
    if not num_classes:
        return None
    return imagenet_class_names(num_classes) or [f"class {i}" for i in range(num_classes)]
