"""Explaining: per-scale maps of one CSA layer's keys and values (the paper's Fig. 1b).

- ``saliency_action``: one image in the app. One shared pass (one forward, one backward) gives the maps
  of keys and values together (``explain.methods.attribute_all``); predictions and targets go by class
  name (ImageNet's for ImageNet heads, a run's own); the maps are drawn smoothly over the original
  picture with the padding left out; deletion/insertion faithfulness with random and centre baselines;
  a click on the large input view becomes a query position, or a message when it misses the picture.
- ``explain_action``: a set of images on the command line (``mscsa-lab explain``): per image an overlay
  grid, the raw maps and a JSON (``explain.batch.explain_images``), the Fig. 1b figure for the set.
- ``explain_model``: the model an explain request names (``demo``, a trained run, or a profile/backbone
  with an optional checkpoint), loaded through ``sources`` as the app loads it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mscsa_lab.explain.targets import SaliencyError, TargetError
from mscsa_lab.workflows.result import ActionResult
from mscsa_lab.workflows.sources import LoadedModel, SourceError

__all__ = ["saliency_action", "explain_action", "explain_model", "preview_view", "target_request", "TargetError",
           "APP_STEPS", "EXPLAIN_STEPS"]

APP_STEPS = 8  # points per deletion/insertion curve in the page (each point is a batch of forwards)
EXPLAIN_STEPS = 16  # the command's default: finer curves, for figures
KIND_ORDER = ("key", "value")


def target_request(target: Any) -> Any:
    """The target as the methods take it: None for the predicted class ("top-1", "predicted" or blank), a
    stripped string (a class name or an index) otherwise; numbers and callables pass unchanged."""
    if target is None:
        return None
    if isinstance(target, str):
        text = target.strip()
        return None if text.lower() in ("", "top-1", "top1", "predicted") else text
    if isinstance(target, float) and target.is_integer():
        return int(target)
    return target


def _load_picture(image: Any):
    from mscsa_lab.io.images import load_image

    if image is None or (isinstance(image, str) and not image):
        raise SaliencyError("upload an image or pick a sample first")
    return load_image(image)


def preview_view(image: Any, input_size: Sequence[int], fit: str = "pad", side: int | None = None) -> np.ndarray | None:
    """The input view the page shows and takes clicks on (see ``saliency_views.input_view``); None
    before an upload. Only the picture is involved: no model, no normalisation."""
    from mscsa_lab.io.images import prepare_image
    from mscsa_lab.workflows.saliency_views import VIEW_SIDE, input_view

    if image is None or (isinstance(image, str) and not image):
        return None
    picture = _load_picture(image)
    prepared = prepare_image(picture, tuple(int(v) for v in input_size), fit=fit)
    return input_view(prepared, picture, side or VIEW_SIDE)


def _prediction(probabilities: np.ndarray, names: Sequence[str] | None, weights: str) -> str:
    if not np.isfinite(probabilities).all():
        raise SaliencyError(f"{weights.removeprefix('Weights: ').rstrip('.')} gives outputs that are not numbers (NaN "
                            "or infinity): these weights are broken (a diverged training run or a damaged file)")
    top = np.argsort(probabilities)[::-1][:3]
    label = lambda i: names[i] if names and i < len(names) else f"class {i}"  # noqa: E731
    return ", ".join(f"{label(int(i))}: {probabilities[i]:.1%}" for i in top)


def saliency_action(image: Any, loaded: LoadedModel, *, method: str = "gradxact",
                    kinds: Sequence[str] = ("key", "value"), block: int = 0, layer: int = 1, target: Any = None,
                    query: tuple[float, float] | None = None, click: tuple[float, float] | None = None,
                    fit: str = "pad", cmap: str = "inferno", faithfulness: bool = True, steps: int = APP_STEPS,
                    view_side: int | None = None) -> ActionResult:
    """Maps of ``loaded``'s model for ``image`` (a path, array or PIL image).

    ``target``: a class name or index ("top-1" or None: the predicted class); ``query``: a pixel (x, y)
    of the model's input whose attention over each scale is shown; ``click``: a point (x, y) on the
    input view (``preview_view``), mapped to the model's input the same way: a click outside the
    picture gives a result without maps whose ``warnings`` say why (the view, marked, in
    ``data["view"]``). ``faithfulness``: deletion/insertion areas of every map with ``steps`` points
    per curve, the random and centre maps beside."""
    from mscsa_lab.explain.capture import capture_layer
    from mscsa_lab.explain.geometry import input_to_cell, map_click
    from mscsa_lab.explain.methods import METHOD_CLASSES, METHODS, attribute_all
    from mscsa_lab.explain.render import attention_mass_chart
    from mscsa_lab.explain.targets import class_names_for
    from mscsa_lab.io.images import prepare_image
    from mscsa_lab.workflows import saliency_views as views

    started = time.perf_counter()
    picture = _load_picture(image)
    size = tuple(loaded.input_size)
    prepared = prepare_image(picture, size, fit=fit, **loaded.preprocessing)
    side = view_side or views.VIEW_SIDE
    view = views.input_view(prepared, picture, side)
    if click is not None:
        # Inside or not depends only on where the picture lies; the grid is known after the pass.
        located = map_click(prepared, float(click[0]), float(click[1]), (1, 1), shown="input",
                            shown_size=views.view_size(size, side))
        if not located.inside:
            return ActionResult(title=f"saliency-query of {loaded.name}", warnings=[located.message],
                                data={"click": located, "view": views.mark_miss(view, click), "results": []})
        query = located.input_xy
    if query is not None:
        method = "query"
    if method not in METHOD_CLASSES:
        raise SaliencyError(f"method={method!r} is unknown: choose one of {list(METHODS)}")
    attention_view = METHOD_CLASSES[method].attention_view
    kinds = ["key"] if attention_view else [k for k in KIND_ORDER if k in (kinds or ["key"])] or ["key"]
    names = class_names_for(loaded.model, loaded.meta)
    wanted = target_request(target)
    capture = capture_layer(loaded.model, prepared.tensor, int(block), int(layer), wanted, names,
                            METHOD_CLASSES[method].needs_gradients, prepared.content_box)
    grid_size = capture.scale_sizes[0]
    cell = input_to_cell(query[0], query[1], size, grid_size) if query is not None else None
    keyed = attribute_all(loaded.model, prepared.tensor, [method], kinds, int(block), int(layer), wanted, names,
                          prepared.content_box, cell, capture=capture)
    results = list(keyed.values())
    first = results[0]
    prediction = _prediction(capture.probabilities, names, loaded.weights) if capture.probabilities is not None else ""
    small, drawn, marker = views.on_picture(prepared, picture, results, cell=cell)
    images = {"grid": views.compose_grid(small, drawn, cmap, class_names=names, marker=marker)}
    figures = {"mass": attention_mass_chart(first if first.mass_shares is not None else
                                            _with_mass(first, capture.mass_shares()))}
    if first.head_maps is not None:
        thumbnail, with_heads, _ = views.on_picture(prepared, picture, results[:1], views.HEAD_SIDE, heads=True)
        images["heads"] = views.compose_heads(thumbnail, with_heads[0], cmap)
    data: dict[str, Any] = {"results": results, "images": images, "prediction": prediction, "display": prepared.display,
                            "class_names": names, "query_cell": cell, "grid_size": tuple(grid_size),
                            "target": None if capture.target is None else
                            {"index": capture.target.index, "label": capture.target.label},
                            "view": views.mark_cell(view, prepared, cell, grid_size) if cell is not None else view}
    lines = [loaded.weights]
    if prediction:
        lines.append(f"Prediction: {prediction}")
    if capture.target is not None and method != "query" and METHOD_CLASSES[method].needs_gradients:
        lines.append(f"Maps explain: {capture.target.label}")
    if cell is not None:
        lines.append(f"Query: input pixel ({query[0]:.0f}, {query[1]:.0f}), cell {cell} of X0's "
                     f"{grid_size[0]}x{grid_size[1]} grid")
    if faithfulness and capture.probabilities is not None and method != "query":
        report = _faithfulness(loaded.model, prepared, results, capture.target, names, steps)
        data["faithfulness"] = report.as_dict()
        data["faithfulness_text"] = views.faithfulness_markdown(report, kinds, report.target_label)
        from mscsa_lab.explain.render import faithfulness_chart

        figures["faithfulness"] = faithfulness_chart(views.chart_report(report, [r.kind for r in results]))
    data["seconds"] = time.perf_counter() - started
    return ActionResult(title=f"saliency-{method} of {loaded.name} ({size[0]}x{size[1]})", figures=figures,
                        summary="\n\n".join(lines), data=data)


def _with_mass(result, shares):
    from dataclasses import replace

    return replace(result, mass_shares=shares)


def _faithfulness(model, prepared, results, resolved, names, steps: int):
    """One deletion/insertion run for every map of every kind (the random and centre maps once)."""
    from mscsa_lab.explain.faithfulness import faithfulness
    from mscsa_lab.workflows.saliency_views import KIND_PREFIX

    maps: dict[str, np.ndarray] = {}
    for result in results:
        prefix = KIND_PREFIX.get(result.kind, result.kind)
        maps.update({f"{prefix} X{i}": values for i, values in enumerate(result.maps)})
        maps[f"{prefix} combined"] = result.combined_map()
    target = resolved.index if resolved.index is not None else resolved.function
    return faithfulness(model, prepared.tensor, maps, target, class_names=names, valid_box=prepared.content_box,
                        steps=int(steps), random_grid=tuple(results[0].grid_maps[0].shape))


# ----------------------------------------------------------------------------------------- the command
def explain_model(model: str | None = None, run: str | Path | None = None, checkpoint: str | Path | None = None,
                  input_size: tuple[int, int] | None = None, limits=None) -> LoadedModel:
    """``model="demo"``: the bundled demo model; ``run``: a trained run's folder; any other ``model``: a
    Table 7 profile or timm backbone + MSCSA built at ``input_size`` (224 by default), with ``checkpoint``
    loaded (random weights otherwise, which the result says)."""
    from mscsa_lab.workflows.sources import demo_model, spec_model, trained_model
    from mscsa_lab.workflows.spec import ModelSpec

    if (model is None) == (run is None):
        raise SourceError("give either --model NAME (e.g. demo, resnet18) or --run DIR (a trained run's folder)")
    if checkpoint is not None and (run is not None or model == "demo"):
        raise SourceError("--checkpoint applies to --model NAME (a profile or timm backbone): the demo model and "
                          "trained runs bring their own weights")
    if run is not None:
        folder = Path(run)
        if not (folder / "model.json").is_file():
            raise SourceError(f"{str(folder)!r} is not a trained run: it has no model.json (give the folder "
                              "'mscsa-lab train --out' wrote)")
        return trained_model(folder, limits=limits)
    if model == "demo":
        return demo_model()
    spec = ModelSpec.resolve(model, input_size=tuple(input_size) if input_size else (224, 224))
    return spec_model(spec, checkpoint, None, limits)


def explain_action(sources: Sequence[str | Path], loaded: LoadedModel, out_dir: str | Path, *,
                   method: str = "gradxact", kinds: Sequence[str] = ("key", "value"), block: int = 0, layer: int = 1,
                   target: Any = None, input_size: tuple[int, int] | None = None, fit: str = "pad",
                   faithfulness: bool = True, steps: int = EXPLAIN_STEPS, cmap: str = "inferno",
                   progress: bool | Callable[[int, int, str], None] = True) -> ActionResult:
    """Maps for every image of ``sources`` (files or folders) written to ``out_dir``; a file that cannot
    be read is reported in ``data["summary"].failed`` and the others go on. The summary lists each
    image's prediction and the faithfulness areas averaged over the set."""
    from mscsa_lab.explain.batch import explain_images
    from mscsa_lab.explain.targets import class_names_for

    if faithfulness and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 2):
        raise SaliencyError(f"steps={steps!r}: the deletion/insertion curves need at least 2 steps (default 16)")
    meta = {**(loaded.meta or {}), "weights": loaded.weights}
    summary = explain_images(loaded.model, sources, out_dir, method=method, kinds=list(kinds), block=int(block),
                             layer=int(layer), target=target_request(target),
                             input_size=tuple(input_size) if input_size else tuple(loaded.input_size),
                             class_names=class_names_for(loaded.model, loaded.meta),
                             preprocessing=loaded.preprocessing, fit=fit, meta=meta, faithfulness=faithfulness,
                             steps=steps, cmap=cmap, progress=progress)
    lines = [line for line in summary.lines() if not line.lstrip().startswith("FAILED ")]
    return ActionResult(title=f"explain-{method} of {loaded.name}", summary="\n".join([loaded.weights, *lines]),
                        warnings=[f"{Path(i.source).name}: {i.error}" for i in summary.failed],
                        data={"summary": summary, "failed": [i.source for i in summary.failed]},
                        files=[Path(p) for p in summary.figures])
