"""Explaining a set of images in one go (what ``mscsa-lab explain`` runs): per image an overlay grid,
the raw maps and a JSON of numbers; for the set, the paper's Fig. 1b figure and a summary.

A file that cannot be read (corrupt, not an image, too large) gets its own error in the summary
and the others go on; a request that cannot work for any image (unknown method, class name,
layer) fails before the first one.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mscsa_lab.errors import UserError, internal_error_message, report_internal_error
from mscsa_lab.explain.capture import SaliencyError, capture_layer, select_layer
from mscsa_lab.explain.evaluation import area_above_half_max
from mscsa_lab.explain.faithfulness import faithfulness_of
from mscsa_lab.explain.methods import KINDS, METHOD_CLASSES, METHODS, SaliencyResult, attribute_all
from mscsa_lab.explain.targets import TargetLike, class_names_for, resolve_target

__all__ = ["ExplainedImage", "ExplainSummary", "explain_images", "collect_images", "load_model_for_explain",
           "model_preprocessing", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jfif", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm",
                  ".pbm", ".pnm", ".tga", ".avif", ".qoi")
ProgressLike = bool | Callable[[int, int, str], None]


def load_model_for_explain(model: str | None = None, run: str | Path | None = None,
                           input_size: tuple[int, int] | None = None, checkpoint: str | Path | None = None):
    """``(model, meta)``: ``model="demo"`` the bundled demo model, ``run=DIR`` a trained run, any other
    name a Table 7 profile or timm backbone (+MSCSA) via ``build_named_model``, with ``checkpoint``
    weights if given (random otherwise: ``meta["weights"]`` says which)."""
    from mscsa_lab.io.checkpoints import load_checkpoint, load_demo_model, load_trained
    from mscsa_lab.registry import build_named_model

    if (model is None) == (run is None):
        raise UserError("give either a model name (e.g. 'demo', 'resnet18') or a trained run's folder, not both")
    if run is not None:
        loaded, meta = load_trained(run)
        return loaded, {**meta, "weights": f"trained run {Path(run).name}"}
    if model == "demo":
        loaded, meta = load_demo_model()
        return loaded, {**meta, "weights": "demo model (trained on the synthetic shapes)"}
    size = tuple(input_size) if input_size else (224, 224)
    built = build_named_model(model, input_size=size)
    meta: dict[str, Any] = {"input_size": list(size), "model": model}
    if checkpoint is not None:
        load_checkpoint(built, checkpoint)
        meta["weights"] = f"checkpoint {Path(checkpoint).name}"
    else:
        meta["weights"] = "random initialisation: the maps show an untrained model"
    return built.eval(), meta


def model_preprocessing(model, meta: dict | None = None) -> dict[str, Any]:
    """Mean, std (and interpolation) to prepare images for ``model``: the run's own when its
    metadata has them, else the backbone's timm data config, else ImageNet's defaults."""
    if meta and meta.get("preprocessing"):
        saved = meta["preprocessing"]
        chosen: dict[str, Any] = dict(mean=tuple(saved["mean"]), std=tuple(saved["std"]))
        if saved.get("interpolation"):
            chosen["interpolation"] = saved["interpolation"]
        return chosen
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model.backbone.name)
    except Exception:  # noqa: BLE001 - any lookup failure means "no config": ImageNet defaults apply
        cfg = None
    if cfg is None:
        return {}
    return dict(mean=tuple(cfg.mean), std=tuple(cfg.std), interpolation=cfg.interpolation or "bicubic")


def collect_images(sources: Sequence[str | Path] | str | Path) -> tuple[list[Path], list[str]]:
    """Files named directly, and the image files (by suffix, sorted) of folders named; returns
    (files, folder entries skipped as not images). A missing path is kept, to be reported."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    files: list[Path] = []
    skipped: list[str] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            for entry in sorted(path.iterdir()):
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                (files.append(entry) if entry.suffix.lower() in IMAGE_SUFFIXES else skipped.append(str(entry)))
        else:
            files.append(path)
    if not files:
        raise UserError(f"no images found in {', '.join(map(str, sources)) or 'nothing'}: give image files or "
                        f"folders holding {', '.join(IMAGE_SUFFIXES[:6])}... files")
    return files, skipped


@dataclass
class ExplainedImage:
    source: str
    name: str = ""
    grid: str | None = None
    maps: str | None = None
    json: str | None = None
    prediction: str = ""
    error: str | None = None


@dataclass
class ExplainSummary:
    out_dir: str
    method: str
    kinds: list[str]
    images: list[ExplainedImage] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    means: dict[str, Any] = field(default_factory=dict)  # faithfulness and areas averaged over the images
    seconds: float = 0.0

    @property
    def failed(self) -> list[ExplainedImage]:
        return [image for image in self.images if image.error]

    @property
    def succeeded(self) -> list[ExplainedImage]:
        return [image for image in self.images if not image.error]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        lines = [f"explained {len(self.succeeded)} of {len(self.images)} images in {self.seconds:.1f} s -> {self.out_dir}"]
        lines += [f"  {Path(i.source).name}: {i.prediction}" for i in self.succeeded]
        lines += [f"  FAILED {i.source}: {i.error}" for i in self.failed]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} file(s) that are not images by their suffix")
        for curve in ("deletion", "insertion"):
            for kind, areas in self.means.get(curve, {}).items():
                row = ", ".join(f"{name} {value:.3f}" for name, value in areas.items())
                lines.append(f"  mean {curve} area ({kind}): {row}")
        lines += [f"  figure: {path}" for path in self.figures]
        return lines


def _stem(path: Path, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:80] or "image"
    name, number = stem, 2
    while name in used:
        name, number = f"{stem}-{number}", number + 1
    used.add(name)
    return name


def _progress_bar(progress: ProgressLike, total: int):
    if callable(progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="explain", unit="image", disable=not progress)


def _check_request(model, method: str, kinds: Sequence[str], block: int, layer: int, target: TargetLike,
                   class_names: Sequence[str] | None) -> None:
    """Fail before the first image when no image could succeed."""
    if method not in METHOD_CLASSES:
        raise SaliencyError(f"method={method!r} is unknown: choose one of {list(METHODS)}")
    if not kinds or any(kind not in KINDS for kind in kinds):
        raise SaliencyError(f"kinds={list(kinds)!r}: choose from {list(KINDS)}")
    select_layer(model, block, layer)
    if METHOD_CLASSES[method].needs_gradients and getattr(model, "task", "classification") != "classification":
        raise SaliencyError(f"{method} needs a class score: build the model for classification (this one is dense)")
    if target is not None and not callable(target) and getattr(model, "num_classes", 0):
        resolve_target(target, torch.zeros(1, model.num_classes), class_names)


def explain_images(model, sources: Sequence[str | Path] | str | Path, out_dir: str | Path, method: str = "gradxact",
                   kinds: Sequence[str] = ("key", "value"), block: int = 0, layer: int = 1, target: TargetLike = None,
                   input_size: tuple[int, int] | None = None, class_names: Sequence[str] | None = None,
                   preprocessing: dict | None = None, fit: str = "pad", meta: dict | None = None,
                   faithfulness: bool = True, steps: int = 16, query: tuple[int, int] | None = None,
                   cmap: str = "inferno", figure_rows: int = 24, progress: ProgressLike = True) -> ExplainSummary:
    """Maps of ``method`` for every image of ``sources`` (files or folders), written to ``out_dir``.

    Per image ``NAME_grid.png`` (input + one overlay per scale, a row per kind), ``NAME_maps.npz``
    and ``NAME.json`` (probabilities, attention mass per scale, ``deletion``/``insertion`` areas,
    area above half maximum per scale); for the set ``fig1b_KIND.{png,svg,pdf}`` (first
    ``figure_rows`` images) and ``summary.json``. ``meta`` (a run's or the demo model's) supplies
    input size, preprocessing and class names when they are not given; ``progress``: a tqdm bar
    (True), nothing (False) or ``callable(done, total, name)``."""
    from mscsa_lab.explain.render import paper_figure, saliency_grid
    from mscsa_lab.io.figures import save_figure
    from mscsa_lab.io.images import prepare_image

    started = time.perf_counter()
    meta = meta or {}
    size = tuple(input_size or meta.get("input_size") or getattr(model, "pretrained_cfg", {}).get("input_size",
                                                                                               (3, 224, 224))[-2:])
    names = list(class_names) if class_names is not None else class_names_for(model, meta)
    kinds = ["attention"] if METHOD_CLASSES.get(method) and METHOD_CLASSES[method].attention_view else list(kinds)
    _check_request(model, method, ["key"] if kinds == ["attention"] else kinds, block, layer, target, names)
    preprocessing = dict(preprocessing) if preprocessing is not None else model_preprocessing(model, meta)
    files, skipped = collect_images(sources)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = ExplainSummary(str(out), method, kinds, skipped=skipped)
    figure_rows_by_kind: dict[str, list] = {kind: [] for kind in kinds}
    used: set[str] = set()
    bar = _progress_bar(progress, len(files))
    for done, path in enumerate(files, start=1):
        item = ExplainedImage(str(path), _stem(path, used))
        try:
            prepared = prepare_image(path, size, fit=fit, **preprocessing)
            results, record = _explain_one(model, prepared, method, kinds, block, layer, target, names, query,
                                           faithfulness, steps)
            item.prediction = record["prediction"]
            item.grid = str(save_figure(saliency_grid(prepared.display, list(results.values()), cmap,
                                                      class_names=names), out / f"{item.name}_grid.png"))
            arrays = {f"{kind}_{key}": value for kind, result in results.items() for key, value in result.as_arrays().items()}
            np.savez_compressed(out / f"{item.name}_maps.npz", **arrays)
            item.maps = str(out / f"{item.name}_maps.npz")
            record.update(source=str(path), weights=meta.get("weights"), files={"grid": item.grid, "maps": item.maps})
            item.json = str(out / f"{item.name}.json")
            Path(item.json).write_text(json.dumps(_plain(record), indent=2))
            for kind, result in results.items():
                if len(figure_rows_by_kind[kind]) < figure_rows:
                    figure_rows_by_kind[kind].append((prepared.display, result, f"{item.name}\n{item.prediction}"))
            summary.images.append(item)
            _accumulate(summary.means, record)
        except UserError as error:
            item.error = str(error)
            summary.images.append(item)
        except Exception as error:  # noqa: BLE001 - one image's bug must not lose the others; it is logged
            item.error = internal_error_message(report_internal_error(error, f"explain {path}"))
            summary.images.append(item)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(path.name[:30])
        elif callable(progress):
            progress(done, len(files), path.name)
    if bar is not None:
        bar.close()
    for kind, rows in figure_rows_by_kind.items():
        if rows:
            figure = paper_figure(rows, cmap)
            for suffix in (".png", ".svg"):
                summary.figures.append(str(save_figure(figure, out / f"fig1b_{kind}{suffix}")))
            figure.savefig(out / f"fig1b_{kind}.pdf", bbox_inches="tight")
            summary.figures.append(str(out / f"fig1b_{kind}.pdf"))
    summary.means = _finish_means(summary.means)
    summary.seconds = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(_plain(summary.as_dict()), indent=2))
    return summary


def _explain_one(model, prepared, method: str, kinds: list[str], block: int, layer: int, target: TargetLike,
                 names: list[str] | None, query, faithfulness: bool, steps: int) -> tuple[dict[str, SaliencyResult], dict]:
    gradients = METHOD_CLASSES[method].needs_gradients
    capture = capture_layer(model, prepared.tensor, block, layer, target, names, gradients, prepared.content_box)
    keyed = attribute_all(model, prepared.tensor, [method], ["key"] if kinds == ["attention"] else kinds, block, layer,
                          target, names, prepared.content_box, query, capture=capture)
    results = {kind: result for (_, kind), result in keyed.items()}
    record: dict[str, Any] = {"method": method, "block": block, "layer": layer, "input_size": list(prepared.display.shape[:2]),
                              "original_size": list(prepared.original_size), "valid_box": list(prepared.content_box),
                              "scales": next(iter(results.values())).scale_names}
    probabilities = capture.probabilities
    if probabilities is not None:
        if not np.isfinite(probabilities).all():
            raise SaliencyError("the model's outputs are not numbers (NaN or infinity): its weights are broken")
        top = np.argsort(probabilities)[::-1][:5]
        label = (lambda i: names[i] if names and i < len(names) else f"class {i}")  # noqa: E731
        record["top"] = [{"index": int(i), "name": label(int(i)), "probability": float(probabilities[i])} for i in top]
        record["probabilities"] = [round(float(p), 6) for p in probabilities]
        record["prediction"] = f"{label(int(top[0]))} ({probabilities[top[0]]:.0%})"
        record["target"] = {"index": capture.target.index, "label": capture.target.label}
    else:
        record["prediction"] = "dense model (no classes)"
    shares = capture.mass_shares()
    record["attention_mass"] = {"per_scale": shares.mean(0).tolist(), "per_head": shares.tolist()}
    record["area_above_half_max"] = {kind: {f"X{i}": area_above_half_max(g, r.valid(i)) for i, g in enumerate(r.grid_maps)}
                                     for kind, r in results.items()}
    if faithfulness and probabilities is not None:
        reports = {kind: faithfulness_of(model, prepared.tensor, result, result.target if result.target is not None
                                         else target, class_names=names, steps=steps)
                   for kind, result in results.items()}
        record["deletion"] = {kind: report.deletion for kind, report in reports.items()}
        record["insertion"] = {kind: report.insertion for kind, report in reports.items()}
        record["faithfulness"] = {kind: {"fractions": report.fractions, "baselines": report.baselines,
                                         "deletion_curves": report.deletion_curves,
                                         "insertion_curves": report.insertion_curves,
                                         "beats_random": report.beats("random"), "beats_centre": report.beats("centre")}
                                  for kind, report in reports.items()}
    return results, record


def _accumulate(means: dict, record: dict) -> None:
    for key in ("deletion", "insertion", "area_above_half_max"):
        for kind, values in record.get(key, {}).items():
            for name, value in values.items():
                means.setdefault(key, {}).setdefault(kind, {}).setdefault(name, []).append(value)


def _finish_means(means: dict) -> dict:
    return {key: {kind: {name: float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
                         for name, values in names.items()} for kind, names in kinds.items()}
            for key, kinds in means.items()}


def _plain(value):
    """JSON without NaN (written as null), so that strict readers take it."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
