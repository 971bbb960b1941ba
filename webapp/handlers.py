"""One function per user action, shared by the web app and its tests.

Each takes the plain values a form gives (strings, numbers, booleans, file paths), calls the library
and returns display-ready results (tables, figures, files). Bad input raises a ``ValueError`` subclass
whose message is meant for the user; the app shows it as an error message and keeps running.
"""
from __future__ import annotations

import copy
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
from mscsa_lab.analysis.cost import DEFAULT_LIMITS, ResourceLimits
from mscsa_lab.io.export import export_stem
from mscsa_lab.io.numbers import format_number, readable_frame
from mscsa_lab.paths import ASSETS_DIR
from mscsa_lab.registry import build_model, parse_input_size
from mscsa_lab.models.config import ConfigError
from mscsa_lab.stopping import Cancelled, should_stop
from webapp.cache import ModelCache

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

_LIMITS = DEFAULT_LIMITS


def limits() -> ResourceLimits:
    """What one request may ask for on this server (the app's --max-* flags)."""
    return _LIMITS


def set_limits(new: ResourceLimits) -> ResourceLimits:
    global _LIMITS
    _LIMITS = new.validate()
    return _LIMITS


def guard_cost(name: str | None, backbone: str | None, task: str, size: tuple[int, int], batch: int = 1,
               training: bool = False, keeps_activations: bool = False, copies: int = 1, **settings: Any):
    """Refuse, before any work, a request whose model or memory will not fit (numbers in the message)."""
    from mscsa_lab.analysis.cost import check_fits, estimate_cost

    limits().check_size(*size)
    limits().check_count("batch", batch, "max_batch")
    estimate = estimate_cost(name, backbone, task, size, batch=batch, training=training,
                             keeps_activations=keeps_activations, **settings)
    return check_fits(estimate, limits(), copies=copies)


def _guard_name(name: Any, task: str, size: tuple[int, int], batch: int = 1, keeps_activations: bool = False,
                copies: int = 1):
    """``guard_cost`` for a comparison entry: a profile or timm name, or a pinned ``Configuration``."""
    from mscsa_lab.registry import resolve_name

    entry_name = getattr(name, "name", name)
    settings = dict(getattr(name, "settings", ()) or ())
    label, profile = resolve_name(entry_name)
    return guard_cost(profile.name if profile else None, None if profile else label, task, size, batch,
                      keeps_activations=keeps_activations, copies=copies, **settings)
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
    """A finite number from a form field; text, NaN and infinities ("1e400") are refused by name."""
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return number


def _whole(name: str, value: Any, low: int, high: int) -> int:
    if _blank(value):
        raise ConfigError(f"{name} is empty: give a whole number from {low} to {high}")
    number = _number(name, value)
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


def training_fields(data: str, profile: str, backbone: str, mode: str, epochs: Any, max_steps: Any, batch: Any,
                    img_size: Any, lr: Any, pretrained: bool, resume: bool = False) -> dict[str, Any]:
    """The Train tab's form as ``TrainConfig`` fields (validated again by the engine)."""
    fields: dict[str, Any] = dict(
        resume=bool(resume), data=(data or "").strip() or "synthetic", profile=(profile or "").strip() or None,
        backbone=(backbone or "").strip() or None, mode=mode or None, pretrained=bool(pretrained),
        epochs=_whole("epochs", epochs, 1, 1000), batch_size=_whole("batch", batch, 1, 1024),
        img_size=_whole("image size", img_size, 32, 1024),
    )
    if fields["profile"] is None and fields["backbone"] is None:
        raise ConfigError("give a backbone (a timm name such as resnet18) or pick a Table 7 profile")
    limits().check_count("epochs", fields["epochs"], "max_epochs")
    limits().check_count("batch", fields["batch_size"], "max_batch")
    if not _blank(max_steps):
        fields["max_steps"] = limits().check_count("max steps", _whole("max steps", max_steps, 1, 10**7),
                                                   "max_train_steps")
    guard_cost(fields["profile"], fields["backbone"], "classification", (fields["img_size"], fields["img_size"]),
               fields["batch_size"], training=True)
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
    limits().check_count("batch", fields["batch_size"], "max_batch")
    limits().check_count("steps per run", fields["max_steps"], "max_train_steps")
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

    @property
    def name(self) -> str:
        """The profile or timm backbone this form builds on."""
        return (self.backbone or "").strip() or self.profile

    @property
    def label(self) -> str:
        """What results of this model are called: the name, plus the settings changed from the profile."""
        defaults = ModelForm()
        changed = []
        for key, short in (("depth", "depth"), ("num_heads", "heads"), ("key_dim", "d"), ("mlp_ratio", "mlp"),
                           ("squeeze_ratio", "squeeze")):
            value = getattr(self, key)
            if not _blank(value):
                changed.append(f"{short} {str(value).strip()}")
        for key, short in (("use_pcp", "PCP"), ("use_intra_ffn", "Intra-FFN"), ("use_msp", "MSP")):
            if bool(getattr(self, key)) != getattr(defaults, key):
                changed.append(f"no {short}")
        if self.downsample != defaults.downsample:
            changed.append(self.downsample)
        return self.name + (f" ({', '.join(changed)})" if changed else "")

    def configuration(self):
        """This model as a row of a comparison (its own MSCSA settings, under its label)."""
        from mscsa_lab.analysis.compare import Configuration

        return Configuration(self.label, self.name, tuple(sorted(self.settings().items())))

    def guard(self, batch: int = 1, keeps_activations: bool = False, training: bool = False, copies: int = 2):
        """Refuse this model before building it when it will not fit (the app holds a cached copy and
        a working copy of the weights: ``copies`` 2)."""
        backbone = (self.backbone or "").strip()
        return guard_cost(None if backbone else self.profile, backbone or None, self.task, self.input_size, batch,
                          training=training, keeps_activations=keeps_activations, copies=copies,
                          num_classes=self.num_classes, **self.settings())

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


DEFAULT_CACHE_BYTES = 2 * 2**30
MODEL_CACHE = ModelCache(DEFAULT_CACHE_BYTES)


def set_cache_budget(budget_bytes: int) -> None:
    """How much memory the built-model cache may hold (the app's --cache-mb)."""
    MODEL_CACHE.budget_bytes = int(budget_bytes)


def _built_model(form: ModelForm):
    def build():
        form.guard()
        return form.build()

    return MODEL_CACHE.get(("build", form), build)


def _request_model(form: ModelForm):
    """A private copy of the cached model for one request. Requests run concurrently and some
    change the model they use (saliency registers hooks and stores attention, benchmarks move it),
    so no request ever touches the cached one itself."""
    return copy.deepcopy(_built_model(form))


def build_action(form: ModelForm):
    """(summary text, stages, scales, parameters, diagram figure, diagram files)."""
    from mscsa_lab.analysis.diagram import model_diagram
    from mscsa_lab.io.export import export_stem
    from mscsa_lab.io.figures import save_figure
    from mscsa_lab.io.numbers import human_count

    model = _request_model(form)
    tables = architecture_tables(model, form.input_size)
    summary = tables["summary"]
    height, width = form.input_size
    text = (
        f"**{form.label} + MSCSA** ({summary['task']}), input {height}x{width}: multi-stage map "
        f"{summary['mscsa_dim']} channels on a {'x'.join(map(str, summary['mscsa_grid']))} grid, "
        f"{sum(summary['tokens_per_scale'])} key/value tokens over {len(summary['tokens_per_scale'])} scales; "
        f"{human_count(summary['params']['total'])} parameters.\n\n{form.weights_note()}"
    )
    params = tables["params"].copy()
    for column in params.columns:
        if "param" in str(column).lower() and pd.api.types.is_numeric_dtype(params[column]):
            params[column] = params[column].map(human_count)
    figure = model_diagram(model, form.input_size)
    stem = output_dir("build") / export_stem("diagram", form.label, form.task, form.input_size)
    files = [str(save_figure(figure, stem.with_suffix(suffix))) for suffix in (".svg", ".png")]
    return text, readable_frame(tables["stages"]), readable_frame(tables["scales"]), readable_frame(params), figure, files


def write_table_files(table, stem: Path, figure=None) -> list[str]:
    """A table as CSV (+ its metadata sidecar), Markdown, LaTeX and JSON, and its figure as SVG and PNG."""
    from mscsa_lab.io.figures import save_figure

    from mscsa_lab.io.export import metadata_path

    files = [str(table.write(stem.with_suffix(suffix))) for suffix in (".csv", ".md", ".tex", ".json")]
    files.append(str(metadata_path(files[0])))
    if figure is not None:
        files += [str(save_figure(figure, stem.with_suffix(suffix))) for suffix in (".svg", ".png")]
    return files


MEMORY_MAX_BATCH = 256


def profile_action(form: ModelForm, convention: str = "mac", level: int = 1, memory: bool = False,
                   memory_batch: Any = 1, training: bool = False):
    """(title, table, figure, downloadable files, notes) of the per-component FLOPs and parameters;
    with ``memory``, parameter/activation memory per component beside them (and the saved-for-backward,
    gradient and optimizer memory of a training step at ``memory_batch`` when ``training``)."""
    from mscsa_lab.io.export import export_stem
    from mscsa_lab.io.figures import plot_component_breakdown
    from mscsa_lab.analysis.profiler import profile_model

    form.guard(keeps_activations=True)
    if memory:
        form.guard(batch=_whole("memory batch", memory_batch, 1, MEMORY_MAX_BATCH), training=bool(training),
                   keeps_activations=True)
    model = _request_model(form)
    report = profile_model(model, form.input_size)
    table = report.to_table(convention)
    height, width = form.input_size
    title = f"Per-component FLOPs and parameters of {form.label} + MSCSA ({form.task}, {height}x{width})"
    if memory:
        from mscsa_lab.analysis.memory import memory_profile
        from mscsa_lab.analysis.merge import merge_with_profile

        batch = _whole("memory batch", memory_batch, 1, MEMORY_MAX_BATCH)
        profiled = memory_profile(model, form.input_size, batch_size=batch, training=bool(training))
        table.frame = merge_with_profile(table.frame, profiled.to_frame())
        table.notes += profiled.notes()
        totals = profiled.totals_frame()
        table.notes += ["Totals (MiB): " + "; ".join(f"{row['Quantity']} {format_number(row['Computed MiB'])}"
                                                    for _, row in totals.iterrows())]
        table.metadata = {**table.metadata, "memory_batch": batch, "memory_training": bool(training)}
        title += f", memory at batch {batch} ({'training step, AdamW' if training else 'inference'})"
        table.paper_columns = [c for c in ("Component", "FLOPs (G)", "Params (M)", "Activations MiB",
                                           "Training MiB" if training else "Output MiB") if c in table.frame.columns]
    table.frame = table.frame[table.frame["Level"] <= int(level)].reset_index(drop=True)
    table.title = title
    figure = plot_component_breakdown(table.frame, table.title, mscsa_only=True)
    stem = export_stem("profile", form.label.split(" (")[0] + ("-custom" if " (" in form.label else ""), form.task,
                       form.input_size)
    files = write_table_files(table, output_dir("profile") / stem, figure)
    return title, readable_frame(table.frame), figure, files, "\n".join(f"- {n}" for n in table.notes)


def budget_action(name: str, cap_percent: float, height: int, width: int, task: str = "classification"):
    """(message, chosen settings as JSON, candidates tried)."""
    from mscsa_lab.analysis.budget import fit_flops_budget

    if _blank(cap_percent):
        raise ConfigError("give the cap as a percentage of the backbone's FLOPs, e.g. 10")
    cap = _number("cap (%)", cap_percent)
    if not 0 < cap <= 1000:
        raise ConfigError(f"cap {cap_percent!r}% is out of range: give a percentage of the backbone's FLOPs "
                          "above 0 and at most 1000, e.g. 10")
    result = fit_flops_budget(name, cap / 100.0, parse_input_size(height, width), task)
    settings = json.dumps(result.config.to_dict(), indent=2) if result.config is not None else ""
    return result.message, settings, readable_frame(result.candidates)


def budget_apply(name: str, chosen: str) -> dict[str, Any]:
    """The Build tab's fields for the budget helper's chosen settings (the "Apply to Build" button):
    the backbone (a profile, or a timm name), depth, heads, head dim, MLP ratio and squeeze ratio."""
    from mscsa_lab.presets import list_profiles

    if not (chosen or "").strip():
        raise ConfigError("no settings to apply: run Fit first (and pick a cap the helper can meet)")
    try:
        config = json.loads(chosen)
    except ValueError:
        raise ConfigError("the chosen settings are not valid JSON: run Fit again") from None
    if not isinstance(config, dict):
        raise ConfigError("the chosen settings are not a set of MSCSA settings: run Fit again")
    profiles = {p.name for p in list_profiles()}
    squeeze = config.get("squeeze_ratio")
    fields = dict(
        profile=name if name in profiles else None,
        backbone="" if name in profiles else name,
        depth=str(config.get("depth", "")),
        num_heads=str(config.get("num_heads", "")),
        key_dim=str(config.get("key_dim", "")),
        mlp_ratio=str(config.get("mlp_ratio", "")),
        squeeze_ratio="none" if squeeze is None else _ratio_text(squeeze),
    )
    return fields


def _ratio_text(value: Any) -> str:
    from fractions import Fraction

    try:
        fraction = Fraction(str(value)).limit_denominator(64)
    except (ValueError, ZeroDivisionError):
        return str(value)
    return f"{fraction.numerator}/{fraction.denominator}" if fraction.denominator != 1 else str(fraction.numerator)


def device_note(device: str = "auto") -> str:
    import torch

    if torch.cuda.is_available():
        return f"GPU available: {torch.cuda.get_device_name(0)}."
    return (f"No GPU on this machine: benchmarks run on the CPU ({torch.get_num_threads()} threads). "
            "CPU figures are not comparable with the paper's A100 FPS.")


BENCHMARK_MAX_ROUNDS = 40
BENCHMARK_MAX_SECONDS = 60.0


def benchmark_action(names: Sequence[str], device: str = "auto", precision: str = "fp32", batch: int = 8,
                     channels_last: bool = False, steps: int = 3, repeats: int = 6, input_size: int = 224,
                     latency_model: str | None = None, progress: Callable[[float, str], None] | None = None,
                     build_form: ModelForm | None = None, max_seconds: Any = BENCHMARK_MAX_SECONDS,
                     stop: Any = None):
    """(title, FPS table, FPS figure, latency table, latency figure, files). ``build_form``: also time the
    Build tab's model (its own settings); ``repeats`` is the least number of rounds: more follow until
    the ratio's 95% interval is within +-2% or ``max_seconds`` per backbone."""
    from mscsa_lab.bench.settings import BenchmarkSettings, resolve_device
    from mscsa_lab.bench.comparison import throughput_comparison
    from mscsa_lab.bench.latency import component_latency
    from mscsa_lab.io.figures import plot_latency, plot_throughput

    names: list[Any] = [n.strip() for n in (names or []) if n and n.strip()]
    if build_form is not None:
        names.append(build_form.configuration())
    if not names:
        raise ConfigError("pick at least one backbone to benchmark (or include the Build tab's model)")
    resolve_device(device)
    counts = {}
    for name, value in (("batch", batch), ("steps", steps), ("repeats", repeats)):
        if _blank(value):
            raise ConfigError(f"{name} is empty: give a whole number of at least 1")
        number = _number(name, value)
        if number != int(number):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        counts[name] = int(number)
    if _blank(max_seconds) or not (1 <= _number("time cap", max_seconds) <= 3600):
        raise ConfigError(f"time cap must be a number of seconds from 1 to 3600, got {max_seconds!r}")
    limits().check_count("batch", counts["batch"], "max_batch")
    limits().check_count("steps per timed block", counts["steps"], "max_steps")
    limits().check_count("rounds", counts["repeats"], "max_repeats")
    limits().check_count("models to benchmark", len(names), "max_models")
    size = parse_input_size(input_size, input_size)
    for name in names:  # the backbone, +MSCSA and its fast copy live at once
        _guard_name(name, "classification", size, counts["batch"], copies=3)
    settings = BenchmarkSettings(device=device, precision=precision, channels_last=bool(channels_last), warmup=2,
                                 max_repeats=max(BENCHMARK_MAX_ROUNDS, counts["repeats"]), target_interval=0.02,
                                 max_seconds=float(_number("time cap", max_seconds)), **counts).validate()
    table = throughput_comparison(names, size, settings, progress=progress, stop=stop)
    folder = output_dir("benchmark")
    fps_figure = plot_throughput(table.frame, table.title)
    labels = [getattr(n, "label", n) for n in names]
    files = write_table_files(table, folder / export_stem("fps", labels, "classification", size), fps_figure)
    latency_frame, latency_figure = None, None
    if latency_model:
        from mscsa_lab.registry import build_named_model

        if should_stop(stop):
            raise Cancelled("the benchmark was cancelled")

        model = build_named_model(latency_model, "classification", size)
        from mscsa_lab.analysis.merge import merge_with_latency
        from mscsa_lab.analysis.traffic import traffic_profile

        latency = component_latency(model, size, settings).to_table()
        traffic = traffic_profile(model, size, batch_size=settings.batch)
        latency.frame = merge_with_latency(latency.frame, traffic.to_frame())
        latency.notes.append("Bytes moved: module inputs + outputs + parameters per forward pass (eager: every "
                             "operator's reads and writes); intensity = FLOPs / bytes moved.")
        latency_figure = plot_latency(latency.frame, latency.title)
        files += write_table_files(latency, folder / export_stem("latency", latency_model, "classification", size),
                                   latency_figure)
        latency_frame = readable_frame(latency.frame)
    warnings = table.metadata.get("warnings") or []
    title = (f"{table.title}: {len(names)} model(s), batch {settings.batch}"
             + ("\n\n**Warnings** (these figures are not findings):\n" + "\n".join(f"- {w}" for w in warnings)
                if warnings else "\n\nEvery ratio's 95% interval met the target; no warnings."))
    return title, readable_frame(table.frame), fps_figure, latency_frame, latency_figure, files


def compare_action(names: Sequence[str], height: int, width: int, task: str = "classification",
                   convention: str = "mac", pinned: Sequence[ModelForm] = (), fps: bool = False,
                   progress: Callable[[float, str], None] | None = None):
    """(title, table, figure, files, notes) in the paper's Table 6 layout. ``pinned``: configurations
    pinned in the Build tab, compared side by side with their own settings; ``fps``: measure FPS too."""
    from mscsa_lab.analysis.compare import compare_backbones
    from mscsa_lab.io.export import export_stem
    from mscsa_lab.io.figures import plot_comparison

    entries: list[Any] = [n.strip() for n in (names or []) if n and n.strip()]
    entries += [form.configuration() for form in pinned or ()]
    if not entries:
        raise ConfigError("pick at least one backbone to compare (or pin configurations in the Build tab)")
    size = parse_input_size(height, width)
    limits().check_count("models to compare", len(entries), "max_models")
    for entry in entries:
        _guard_name(entry, task if task != "segmentation" else "classification", size, keeps_activations=True, copies=2)
    if fps:
        from mscsa_lab.bench.comparison import compare_with_fps
        from mscsa_lab.bench.settings import BenchmarkSettings

        settings = BenchmarkSettings(device="auto", batch=8, warmup=2, steps=2, repeats=6, max_repeats=30,
                                     max_seconds=30.0)
        table = compare_with_fps(entries, size, settings, task, convention, progress=progress)
    else:
        table = compare_backbones(entries, size, task, convention=convention, progress=progress)
    figure = plot_comparison(table.frame, table.title)
    labels = [getattr(e, "label", e) for e in entries]
    files = write_table_files(table, output_dir("compare") / export_stem("compare", labels, task, size), figure)
    shown = table.frame.dropna(axis=1, how="all")  # e.g. the paper's columns for models the paper does not list
    return table.title, readable_frame(shown), figure, files, "\n".join(f"- {n}" for n in table.notes)


MAX_PINNED = 6


def pin_action(pinned: Sequence[ModelForm] | None, form: ModelForm | None) -> tuple[list[ModelForm], str]:
    """Pin the Build tab's model for the Compare tab (several configurations side by side)."""
    pinned = list(pinned or [])
    if form is None:
        raise ConfigError("build a model first, then pin it")
    if any(existing.label == form.label for existing in pinned):
        raise ConfigError(f"{form.label} is pinned already")
    if len(pinned) >= MAX_PINNED:
        raise ConfigError(f"at most {MAX_PINNED} pinned configurations: clear them first")
    pinned.append(form)
    return pinned, pinned_text(pinned)


def pinned_text(pinned: Sequence[ModelForm] | None) -> str:
    if not pinned:
        return "No configurations pinned: build one and press *Pin for Compare*."
    return "Pinned for Compare: " + "; ".join(f"`{form.label}`" for form in pinned)


# ----------------------------------------------------------------------------------- saliency
def sample_images() -> list[str]:
    return sorted(str(p) for p in SAMPLES.glob("*.png")) if SAMPLES.is_dir() else []


def _demo():
    return MODEL_CACHE.get(("demo",), _load_demo)


def _load_demo():
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


def _trained(folder: str, modified: float):
    return MODEL_CACHE.get(("trained", folder, modified), lambda: _load_trained(folder))


def _load_trained(folder: str):
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
    probabilities = results[0].probabilities
    if probabilities is not None and not np.isfinite(probabilities).all():
        raise ConfigError(f"{weights.removeprefix('Weights: ').rstrip('.')} gives outputs that are not numbers "
                          "(NaN or infinity): these weights are broken (a diverged training run or a damaged file)")
    folder = output_dir("saliency")
    model_name = {"demo": "demo"}.get(source) or (form.label if source == "build" and form is not None else source)
    stem = export_stem(f"saliency-{method}", model_name, None, size)
    grid_path = save_figure(saliency_grid(prepared.display, results, cmap, class_names=classes),
                            folder / f"{stem}_grid.png")
    first = results[0]
    top = np.argsort(first.probabilities)[::-1][:3] if first.probabilities is not None else []
    prediction = ", ".join(f"{classes[i] if i < len(classes) else i}: {first.probabilities[i]:.1%}" for i in top)
    mass = attention_mass_chart(first) if first.mass_shares is not None else None
    heads_path = None
    if first.head_maps is not None:
        heads_path = str(save_figure(head_grid(prepared.display, first, cmap), folder / f"{stem}_heads.png"))
    npz = save_maps(first, folder / f"{stem}_maps.npz")
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
