"""One function per user action, shared by the web app and its tests.

Each takes the plain values a form gives (strings, numbers, booleans, file paths), calls the library
and returns display-ready results (tables, figures, files). Bad input raises a ``ValueError`` subclass
whose message is meant for the user; the app shows it as an error message and keeps running.
"""
from __future__ import annotations

import copy
import functools
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from mscsa_lab.analysis.architecture import architecture_tables
from mscsa_lab.paths import ASSETS_DIR
from mscsa_lab.registry import build_model, parse_input_size
from mscsa_lab.models.config import ConfigError

__all__ = [
    "ModelForm",
    "build_action",
    "profile_action",
    "budget_action",
    "benchmark_action",
    "saliency_action",
    "compare_action",
    "sample_images",
    "preview_action",
    "device_note",
    "output_dir",
    "USER_ERRORS",
    "training_fields",
    "ablation_fields",
    "write_table_files",
]

USER_ERRORS = (ValueError, RuntimeError, KeyError, TypeError, FileNotFoundError)
SAMPLES = ASSETS_DIR / "samples"


OUTPUT_ROOT = Path(tempfile.gettempdir()) / "mscsa_lab_outputs"
OUTPUT_MAX_AGE_S = 3600


def output_dir(prefix: str) -> Path:
    """A fresh folder for files a user downloads. Folders older than an hour are removed first,
    so a long-running app does not fill the disk (Gradio keeps its own copies of served files)."""
    import shutil

    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in OUTPUT_ROOT.iterdir():
        try:
            if old.is_dir() and now - old.stat().st_mtime > OUTPUT_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    return Path(tempfile.mkdtemp(prefix=f"{prefix}_", dir=OUTPUT_ROOT))


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and np.isnan(value))


def _number(name: str, value: Any) -> float:
    try:
        return float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def _whole(name: str, value: Any, low: int, high: int) -> int:
    if _blank(value):
        raise ConfigError(f"{name} is empty: give a whole number from {low} to {high}")
    number = _number(name, value)
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


def training_fields(data: str, profile: str, backbone: str, mode: str, epochs: Any, max_steps: Any, batch: Any,
                    img_size: Any, lr: Any, pretrained: bool) -> dict[str, Any]:
    """The Train tab's form as ``TrainConfig`` fields (validated again by the engine)."""
    fields: dict[str, Any] = dict(
        data=(data or "").strip() or "synthetic", profile=(profile or "").strip() or None,
        backbone=(backbone or "").strip() or None, mode=mode or None, pretrained=bool(pretrained),
        epochs=_whole("epochs", epochs, 1, 1000), batch_size=_whole("batch", batch, 1, 1024),
        img_size=_whole("image size", img_size, 32, 1024),
    )
    if fields["profile"] is None and fields["backbone"] is None:
        raise ConfigError("give a backbone (a timm name such as resnet18) or pick a Table 7 profile")
    if not _blank(max_steps):
        fields["max_steps"] = _whole("max steps", max_steps, 1, 10**7)
    if not _blank(lr):
        rate = _number("learning rate", lr)
        if not (math.isfinite(rate) and 0 < rate <= 10):
            raise ConfigError(f"learning rate must be a number in (0, 10], got {lr!r}")
        fields["lr"] = rate
    return fields


def ablation_fields(model: str, table: str, seeds: str, data: str, max_steps: Any, batch: Any, img_size: Any
                    ) -> tuple[str, str, list[int], dict[str, Any]]:
    """The ablation form as ``run_ablation`` arguments: (model, variants, seeds, training fields)."""
    model = (model or "").strip() or "demo"
    text = str(seeds or "").replace(",", " ").split()
    if not text:
        raise ConfigError("seeds is empty: give one or more whole numbers, e.g. 0 1 2")
    try:
        seed_list = [int(value) for value in text]
    except ValueError:
        raise ConfigError(f"seeds must be whole numbers separated by spaces, got {seeds!r}") from None
    if len(seed_list) > 10 or any(not 0 <= seed < 2**31 for seed in seed_list):
        raise ConfigError(f"give 1 to 10 seeds, each from 0 to {2**31 - 1}, got {seeds!r}")
    fields = dict(data=(data or "").strip() or "synthetic", max_steps=_whole("max steps", max_steps, 1, 100_000),
                  batch_size=_whole("batch", batch, 2, 512), img_size=_whole("image size", img_size, 32, 512))
    return model, f"table{str(table).strip().lower().replace('table', '').strip() or '4'}", seed_list, fields


@dataclass(frozen=True)
class ModelForm:
    """The Build tab's choices; blanks mean "as the profile says"."""

    profile: str = "pvt_v2_b1"
    backbone: str = ""
    task: str = "classification"
    height: int = 224
    width: int = 224
    depth: Any = None
    num_heads: Any = None
    key_dim: Any = None
    mlp_ratio: Any = None
    squeeze_ratio: Any = ""
    use_pcp: bool = True
    use_intra_ffn: bool = True
    use_msp: bool = True
    downsample: str = "dwconv"
    num_classes: int = 1000
    pretrained: bool = False  # the backbone's timm weights (downloaded, or from the cache)

    def settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = dict(use_pcp=bool(self.use_pcp), use_intra_ffn=bool(self.use_intra_ffn),
                                        use_msp=bool(self.use_msp), downsample=self.downsample)
        for name in ("depth", "num_heads", "key_dim"):
            value = getattr(self, name)
            if not _blank(value):
                number = _number(name, value)
                if number != int(number):
                    raise ConfigError(f"{name} must be a whole number, got {value!r}")
                settings[name] = int(number)
        if not _blank(self.mlp_ratio):
            settings["mlp_ratio"] = _number("mlp_ratio", self.mlp_ratio)
        if not _blank(self.squeeze_ratio):
            settings["squeeze_ratio"] = str(self.squeeze_ratio).strip()
        return settings

    @property
    def input_size(self) -> tuple[int, int]:
        return parse_input_size(self.height, self.width)

    def build(self):
        backbone = (self.backbone or "").strip()
        return build_model(None if backbone else self.profile, backbone or None, self.task, self.input_size,
                           num_classes=self.num_classes, pretrained=bool(self.pretrained), **self.settings())

    def weights_note(self, checkpoint: str | None = None) -> str:
        """Which weights this model has, said plainly, and how to get better ones."""
        if checkpoint:
            return f"Weights: your checkpoint {Path(checkpoint).name}."
        if self.pretrained:
            return ("Weights: the backbone's pretrained timm weights; MSCSA and its head are random until trained "
                    "(Train tab, mode mscsa-only).")
        return ("Weights: random initialisation: maps show the initialisation, not learned attention (class-targeted "
                "maps are blank: MSCSA's residual branches start at zero). Train the model in the Train tab, tick "
                "'pretrained backbone', or load a checkpoint in the Saliency tab.")


@functools.lru_cache(maxsize=4)
def _built_model(form: ModelForm):
    return form.build()


def _request_model(form: ModelForm):
    """A private copy of the cached model for one request. Requests run concurrently and some
    change the model they use (saliency registers hooks and stores attention, benchmarks move it),
    so no request ever touches the cached one itself."""
    return copy.deepcopy(_built_model(form))


def build_action(form: ModelForm) -> tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    model = _request_model(form)
    tables = architecture_tables(model, form.input_size)
    summary = tables["summary"]
    height, width = form.input_size
    text = (
        f"**{summary['backbone']} + MSCSA** ({summary['task']}), input {height}x{width}: multi-stage map "
        f"{summary['mscsa_dim']} channels on a {'x'.join(map(str, summary['mscsa_grid']))} grid, "
        f"{sum(summary['tokens_per_scale'])} key/value tokens over {len(summary['tokens_per_scale'])} scales; "
        f"{summary['params']['total'] / 1e6:.2f} M parameters.\n\n{form.weights_note()}"
    )
    return text, tables["stages"], tables["scales"], tables["params"]


def write_table_files(table, stem: Path, figure=None) -> list[str]:
    """A table as CSV (+ its metadata sidecar), Markdown, LaTeX and JSON, and its figure as SVG and PNG."""
    from mscsa_lab.io.figures import save_figure

    from mscsa_lab.io.export import metadata_path

    files = [str(table.write(stem.with_suffix(suffix))) for suffix in (".csv", ".md", ".tex", ".json")]
    files.append(str(metadata_path(files[0])))
    if figure is not None:
        files += [str(save_figure(figure, stem.with_suffix(suffix))) for suffix in (".svg", ".png")]
    return files


def profile_action(form: ModelForm, convention: str = "mac", level: int = 1):
    """(table, figure, downloadable files, notes) of the per-component FLOPs and parameters."""
    from mscsa_lab.io.figures import plot_component_breakdown
    from mscsa_lab.analysis.profiler import profile_model

    model = _request_model(form)
    report = profile_model(model, form.input_size)
    table = report.to_table(convention)
    table.frame = table.frame[table.frame["Level"] <= int(level)].reset_index(drop=True)
    figure = plot_component_breakdown(table.frame, table.title, mscsa_only=True)
    files = write_table_files(table, output_dir("profile") / "profile", figure)
    return table.frame.round(4), figure, files, "\n".join(f"- {n}" for n in table.notes)


def budget_action(name: str, cap_percent: float, height: int, width: int, task: str = "classification"):
    """(message, chosen settings as JSON, candidates tried)."""
    from mscsa_lab.analysis.budget import fit_flops_budget

    if _blank(cap_percent) or float(cap_percent) <= 0:
        raise ConfigError("give the cap as a percentage of the backbone's FLOPs, e.g. 10")
    result = fit_flops_budget(name, float(cap_percent) / 100.0, parse_input_size(height, width), task)
    settings = json.dumps(result.config.to_dict(), indent=2) if result.config is not None else ""
    return result.message, settings, result.candidates.round(4)


def device_note(device: str = "auto") -> str:
    import torch

    if torch.cuda.is_available():
        return f"GPU available: {torch.cuda.get_device_name(0)}."
    return (f"No GPU on this machine: benchmarks run on the CPU ({torch.get_num_threads()} threads). "
            "CPU figures are not comparable with the paper's A100 FPS.")


def benchmark_action(names: Sequence[str], device: str = "auto", precision: str = "fp32", batch: int = 8,
                     channels_last: bool = False, steps: int = 3, repeats: int = 3, input_size: int = 224,
                     latency_model: str | None = None, progress: Callable[[float, str], None] | None = None):
    """(device note, FPS table, FPS figure, latency table, latency figure, files)."""
    from mscsa_lab.bench.settings import BenchmarkSettings, resolve_device
    from mscsa_lab.bench.comparison import throughput_comparison
    from mscsa_lab.bench.latency import component_latency
    from mscsa_lab.io.figures import plot_latency, plot_throughput

    names = [n for n in (names or []) if n]
    if not names:
        raise ConfigError("pick at least one backbone to benchmark")
    resolve_device(device)
    counts = {}
    for name, value in (("batch", batch), ("steps", steps), ("repeats", repeats)):
        if _blank(value):
            raise ConfigError(f"{name} is empty: give a whole number of at least 1")
        number = _number(name, value)
        if number != int(number):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        counts[name] = int(number)
    settings = BenchmarkSettings(device=device, precision=precision, channels_last=bool(channels_last), warmup=2,
                                 **counts).validate()
    size = parse_input_size(input_size, input_size)
    table = throughput_comparison(names, size, settings, progress=progress)
    folder = output_dir("benchmark")
    fps_figure = plot_throughput(table.frame, table.title)
    files = write_table_files(table, folder / "fps", fps_figure)
    latency_frame, latency_figure = None, None
    if latency_model:
        from mscsa_lab.registry import build_named_model

        model = build_named_model(latency_model, "classification", size)
        latency = component_latency(model, size, settings).to_table()
        latency_figure = plot_latency(latency.frame, latency.title)
        files += write_table_files(latency, folder / "latency", latency_figure)
        latency_frame = latency.frame.round(3)
    return device_note(device), table.frame.round(3), fps_figure, latency_frame, latency_figure, files


def compare_action(names: Sequence[str], height: int, width: int, task: str = "classification",
                   convention: str = "mac"):
    """(table, figure, files) in the paper's Table 6 layout."""
    from mscsa_lab.analysis.compare import compare_backbones
    from mscsa_lab.io.figures import plot_comparison

    names = [n for n in (names or []) if n]
    if not names:
        raise ConfigError("pick at least one backbone to compare")
    table = compare_backbones(names, parse_input_size(height, width), task, convention=convention)
    figure = plot_comparison(table.frame, table.title)
    files = write_table_files(table, output_dir("compare") / "comparison", figure)
    return table.frame.round(3), figure, files, "\n".join(f"- {n}" for n in table.notes)


# ----------------------------------------------------------------------------------- saliency
def sample_images() -> list[str]:
    return sorted(str(p) for p in SAMPLES.glob("*.png")) if SAMPLES.is_dir() else []


@functools.lru_cache(maxsize=2)
def _demo():
    from mscsa_lab.io.checkpoints import load_demo_model

    return load_demo_model()


def preprocessing_for(model, meta: dict | None = None) -> dict[str, Any]:
    """Mean, std and interpolation for a model's inputs: the demo model's own (from its metadata),
    else the backbone's timm pretrained config (ImageNet defaults when it has none)."""
    if meta is not None and "preprocessing" in meta:
        saved = meta["preprocessing"]
        chosen = dict(mean=tuple(saved["mean"]), std=tuple(saved["std"]))
        if saved.get("interpolation"):
            chosen["interpolation"] = saved["interpolation"]
        return chosen
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model.backbone.name)
    except Exception:  # noqa: BLE001 - any timm lookup failure means "no config"
        cfg = None
    if cfg is None:
        return {}
    return dict(mean=tuple(cfg.mean), std=tuple(cfg.std), interpolation=cfg.interpolation or "bicubic")


@functools.lru_cache(maxsize=2)
def _trained(folder: str, modified: float):
    from mscsa_lab.io.checkpoints import load_trained

    return load_trained(folder)


def _saliency_model(source: str, form: ModelForm | None, checkpoint: str | None):
    """(model for this request, class names, input size, run metadata or None, weights note): the
    demo model, a trained run from the Train tab, or the Build tab's model (with an uploaded checkpoint
    if given). Cached models are copied: a request never changes a model another one uses."""
    if checkpoint and source != "build":
        raise ConfigError("a checkpoint applies to the Build tab's model: choose \"the Build tab's model\" as the "
                          "model, or remove the checkpoint")
    if source == "demo":
        model, meta = _demo()
        accuracy = meta.get("held_out_accuracy")
        note = ("Weights: demo model: 5 synthetic shapes"
                + (f" ({100 * accuracy:.1f}% held-out)" if isinstance(accuracy, (int, float)) else "")
                + "; on real photographs it can only answer with a shape. Train on your own images in the Train tab.")
        return copy.deepcopy(model), meta["classes"], tuple(meta["input_size"]), meta, note
    if source != "build":
        from webapp.training import run_folder, run_label

        folder = run_folder(source)
        model, meta = _trained(str(folder), (folder / "model.safetensors").stat().st_mtime)
        return copy.deepcopy(model), list(meta["classes"]), tuple(meta["input_size"]), meta, \
            f"Weights: {run_label(folder, meta)}."
    if form is None:
        raise ConfigError("build a model in the Build tab first, or use the demo model")
    if form.task != "classification":
        form = ModelForm(**{**asdict(form), "task": "classification"})
    model = form.build() if checkpoint else _request_model(form)
    if checkpoint:
        from mscsa_lab.io.checkpoints import load_checkpoint

        load_checkpoint(model, checkpoint)
    return model.eval(), [f"class {i}" for i in range(model.num_classes)], form.input_size, None, \
        form.weights_note(checkpoint)


def saliency_action(image: str | np.ndarray | None, method: str = "gradcam", kinds: Sequence[str] = ("key", "value"),
                    block: int = 0, layer: int = 1, target: Any = None, query: tuple[int, int] | None = None,
                    fit: str = "pad", source: str = "demo", form: ModelForm | None = None,
                    checkpoint: str | None = None, cmap: str = "inferno"):
    """(grid PNG path, prediction text, attention-mass figure or None, per-head PNG path or None,
    raw maps .npz path, seconds taken). ``query`` is a pixel (x, y) on the displayed image."""
    from mscsa_lab.io.images import prepare_image
    from mscsa_lab.io.figures import save_figure
    from mscsa_lab.explain.render import attention_mass_chart, head_grid, saliency_grid, save_maps
    from mscsa_lab.explain.saliency import compute_saliency

    started = time.perf_counter()
    if image is None or (isinstance(image, str) and not image):
        raise ConfigError("upload an image or pick a sample first")
    model, classes, size, meta, weights = _saliency_model(source, form, checkpoint)
    prepared = prepare_image(image, size, fit=fit, **preprocessing_for(model, meta))
    target_index = None
    if not _blank(target) and str(target).strip() != "top-1":
        text = str(target).strip()
        if text in classes:
            target_index = classes.index(text)
        elif text.lstrip("-").isdigit():
            target_index = int(text)
        else:
            raise ConfigError(f"target class {text!r} is neither a class name ({', '.join(classes[:10])}"
                              f"{'...' if len(classes) > 10 else ''}) nor an index")
    grid_query = None
    if query is not None:
        grid_h, grid_w = _mscsa_grid(model, size)
        x, y = query
        grid_query = (min(grid_h - 1, int(y * grid_h / size[0])), min(grid_w - 1, int(x * grid_w / size[1])))
        method = "query"
    kinds = ["attention"] if method in ("attention", "query") else list(kinds or ["key"])
    results = [compute_saliency(model, prepared.tensor, method, kind if kind != "attention" else "key", int(block),
                                int(layer), target_index, grid_query) for kind in kinds]
    folder = output_dir("saliency")
    grid_path = save_figure(saliency_grid(prepared.display, results, cmap, class_names=classes), folder / "grid.png")
    first = results[0]
    top = np.argsort(first.probabilities)[::-1][:3] if first.probabilities is not None else []
    prediction = ", ".join(f"{classes[i] if i < len(classes) else i}: {first.probabilities[i]:.1%}" for i in top)
    mass = attention_mass_chart(first) if first.mass_shares is not None else None
    heads_path = None
    if first.head_maps is not None:
        heads_path = str(save_figure(head_grid(prepared.display, first, cmap), folder / "heads.png"))
    npz = save_maps(first, folder / "maps.npz")
    text = f"{weights}\n\nPrediction: {prediction}" if prediction else weights
    return str(grid_path), text, mass, heads_path, str(npz), time.perf_counter() - started


def preview_action(image: str | None, fit: str = "pad", source: str = "demo", form: ModelForm | None = None,
                   checkpoint: str | None = None) -> np.ndarray | None:
    """The uploaded image as the model will see it (resized to its input), or None before an upload."""
    from mscsa_lab.io.images import prepare_image

    if image is None or (isinstance(image, str) and not image):
        return None
    if source == "demo":
        size = _demo()[1]["input_size"]
    elif source == "build":
        size = (form or ModelForm()).input_size
    else:
        from webapp.training import run_folder, run_summary

        size = run_summary(run_folder(source))["input_size"]
    return prepare_image(image, tuple(size), fit=fit).display  # the picture only: no normalisation involved


def _mscsa_grid(model, size: tuple[int, int]) -> tuple[int, int]:
    summary = model.summary(size)
    return tuple(summary["mscsa_grid"])  # type: ignore[return-value]
