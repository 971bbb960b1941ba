"""Saliency: per-scale maps of one CSA layer's keys and values (the paper's Fig. 1b) for one image."""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from mscsa_lab.errors import UserError
from mscsa_lab.workflows.result import ActionResult
from mscsa_lab.workflows.sources import LoadedModel

__all__ = ["saliency_action", "resolve_target", "TargetError"]


class TargetError(UserError, ValueError):
    """A target class that is neither a class name of the model nor an index."""


def resolve_target(target: Any, class_names: Sequence[str]) -> int | None:
    """None for the predicted class ("top-1" or blank), else the index of a class name or number."""
    if target is None or (isinstance(target, str) and target.strip() in ("", "top-1")):
        return None
    text = str(target).strip()
    if text in class_names:
        return list(class_names).index(text)
    if text.lstrip("-").isdigit():
        return int(text)
    shown = ", ".join(list(class_names)[:10]) + ("..." if len(class_names) > 10 else "")
    raise TargetError(f"target class {text!r} is neither a class name ({shown}) nor an index")


def _grid_query(model: Any, size: tuple[int, int], query: tuple[int, int]) -> tuple[int, int]:
    """A pixel (x, y) of the model's input as a (row, col) cell of its MSCSA grid."""
    grid_h, grid_w = model.summary(size)["mscsa_grid"]
    x, y = query
    return min(grid_h - 1, max(0, int(y * grid_h / size[0]))), min(grid_w - 1, max(0, int(x * grid_w / size[1])))


def saliency_action(image: Any, loaded: LoadedModel, *, method: str = "gradxact",
                    kinds: Sequence[str] = ("key", "value"), block: int = 0, layer: int = 1, target: Any = None,
                    query: tuple[int, int] | None = None, fit: str = "pad", cmap: str = "inferno") -> ActionResult:
    """Maps of ``loaded``'s model for ``image`` (a path, array or PIL image). ``query``: a pixel (x, y) of
    the model's input whose attention over each scale is shown (the ``query`` method)."""
    from mscsa_lab.explain.render import attention_mass_chart, head_grid, saliency_grid
    from mscsa_lab.explain.saliency import compute_saliency
    from mscsa_lab.io.images import prepare_image

    started = time.perf_counter()
    if image is None or (isinstance(image, str) and not image):
        raise TargetError("upload an image or pick a sample first")
    size = loaded.input_size
    prepared = prepare_image(image, size, fit=fit, **loaded.preprocessing)
    target_index = resolve_target(target, loaded.class_names)
    grid_query = None
    if query is not None:
        grid_query = _grid_query(loaded.model, size, query)
        method = "query"
    kinds = ["attention"] if method in ("attention", "query") else list(kinds or ["key"])
    results = [compute_saliency(loaded.model, prepared.tensor, method, kind if kind != "attention" else "key",
                                int(block), int(layer), target_index, grid_query) for kind in kinds]
    first = results[0]
    probabilities = first.probabilities
    if probabilities is not None and not np.isfinite(probabilities).all():
        raise TargetError(f"{loaded.weights.removeprefix('Weights: ').rstrip('.')} gives outputs that are not "
                          "numbers (NaN or infinity): these weights are broken (a diverged training run or a "
                          "damaged file)")
    classes = loaded.class_names
    top = np.argsort(probabilities)[::-1][:3] if probabilities is not None else []
    prediction = ", ".join(f"{classes[i] if i < len(classes) else i}: {probabilities[i]:.1%}" for i in top)
    figures = {"grid": saliency_grid(prepared.display, results, cmap, class_names=classes)}
    if first.mass_shares is not None:
        figures["mass"] = attention_mass_chart(first)
    if first.head_maps is not None:
        figures["heads"] = head_grid(prepared.display, first, cmap)
    seconds = time.perf_counter() - started
    return ActionResult(
        title=f"saliency-{method} of {loaded.name} ({size[0]}x{size[1]})",
        figures=figures,
        summary=f"{loaded.weights}\n\nPrediction: {prediction}" if prediction else loaded.weights,
        data={"results": results, "prediction": prediction, "seconds": seconds, "display": prepared.display},
    )
