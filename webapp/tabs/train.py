"""Train tab: one training run at a time in a background thread, its progress streamed to the page, a Stop
that ends it cleanly in any phase (the last checkpoint stays); explaining a pretrained backbone from a few
uploaded photos (``webapp.tabs.explain``); the curves of saved runs overlaid, read from their files; and the
ablation study (Tables 4 and 5) in the same slot.

Runs live in the app's runs folder (``--runs-dir``); each is a ``mscsa-lab train`` output folder, so the
same run loads in the Saliency tab, with ``mscsa-lab evaluate`` and with ``load_trained``."""
from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import gradio as gr

from mscsa_lab.io.export import export_stem
from mscsa_lab.io.figures import plot_training_curves
from mscsa_lab.models.config import ConfigError
from webapp.actions import wire
from webapp.context import AppContext
from webapp.forms import ablation_fields, blank, number, training_fields
from webapp.runs import RUN_NAME, Job
from webapp.tabs import Shared, profile_choices, show_frame

__all__ = ["render", "train_job", "ablation_job", "run_out", "augmentation_fields", "curve_runs", "run_curves",
           "tokens_note", "FIGURE_INTERVAL_S"]

FIGURE_INTERVAL_S = 1.0  # redraw the curves at most this often


def _status(name: str, event: dict[str, Any] | None) -> str:
    if event is None:
        return f"**{name}**: starting..."
    if event.get("kind") == "phase":
        return f"**{name}**: {event['message']}..."
    parts = [f"**{name}**: step {event['step']}/{event['total_steps']}", f"epoch {event['epoch'] + 1}/{event['epochs']}"]
    if event.get("loss") is not None:
        parts.append(f"loss {event['loss']:.3f}")
    if event.get("accuracy") is not None:
        parts.append(f"train acc {event['accuracy']:.1f}%")
    top1 = (event.get("metrics") or {}).get("top1")
    if top1 is not None:
        parts.append(f"val top-1 {top1:.1f}%")
    agreement = (event.get("metrics") or {}).get("agreement_top1")
    if agreement is not None:
        parts.append(f"held-out agreement with the teacher {agreement:.1f}%")
    if event.get("images_per_s"):
        parts.append(f"{event['images_per_s']:.1f} img/s")
    if event.get("eta_s") is not None:
        parts.append(f"ETA {int(event['eta_s'])} s")
    return ", ".join(parts)


def _run_in_slot(context: AppContext, job: Job, work) -> Iterator[dict[str, Any]]:
    """Run ``work(job)`` in the job's thread, yielding its events until it ends (or raising its error).
    Closing the generator (the page cancelled or went away) stops the job cleanly."""

    def run() -> None:
        try:
            job.result = work(job)
        except BaseException as error:  # noqa: BLE001 - raised in the request below
            job.error = error
        finally:
            job.events.put(None)

    job.thread = threading.Thread(target=run, name=f"mscsa-job-{job.name}", daemon=True)
    try:
        yield {"kind": "started"}  # Gradio holds (and can close, on a cancel) the generator from its first yield
        job.thread.start()
        while (item := job.events.get()) is not None:
            yield item
        job.thread.join()
        if job.error is not None:
            raise job.error
    finally:
        context.jobs.release(job)


def run_out(context: AppContext, name: str | None, resume: bool = False, default: str = "run") -> tuple[str, Any]:
    """(run name, its folder in the runs folder) for a new run (or, with ``resume``, an existing one): the name
    is checked, and the folder must not be a link out of the runs folder nor hold a run to be replaced."""
    name = (name or "").strip() or time.strftime(f"{default}-%Y%m%d-%H%M%S")
    if not RUN_NAME.match(name):
        raise ConfigError(f"run name {name[:200]!r}: use letters, digits, '.', '_' or '-' (at most 64), starting "
                          "with a letter or digit")
    out = context.runs_dir / name
    if out.is_symlink() or (out.exists() and out.resolve().parent != context.runs_dir.resolve()):
        raise ConfigError(f"run name {name!r} is a link out of the runs folder {context.runs_dir}: runs are written "
                          "only inside it; choose another name")
    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"a run named {name!r} exists in {context.runs_dir}: tick 'Resume' to continue it from its "
                          "last checkpoint (after a stop or a server restart), or choose another name")
    return name, out


def augmentation_fields(scale_min: Any = None, scale_max: Any = None, ratio_min: Any = None, ratio_max: Any = None,
                        hflip: Any = None) -> dict[str, Any]:
    """The form's crop scale, aspect ratio range and flip probability as ``TrainConfig`` fields (blank pairs:
    the engine's defaults; a pair needs both ends)."""
    fields: dict[str, Any] = {}
    for key, low, high, what in (("scale", scale_min, scale_max, "crop scale"),
                                 ("ratio", ratio_min, ratio_max, "aspect ratio")):
        if blank(low) and blank(high):
            continue
        if blank(low) or blank(high):
            raise ConfigError(f"{what}: give both the lowest and the highest value, or neither (the default)")
        fields[key] = (number(f"{what} min", low), number(f"{what} max", high))
    if not blank(hflip):
        fields["hflip"] = number("flip probability", hflip)
    return fields


def tokens_note(fields: dict[str, Any]) -> str:
    """What the run's image size gives each key/value scale, before any run (shapes on the meta device)."""
    from mscsa_lab.train import TrainConfig
    from mscsa_lab.workflows.training import planned_tokens, tokens_text

    config = TrainConfig(**fields)
    if not (config.backbone or config.profile):
        return ""
    return "Tokens: " + tokens_text(planned_tokens(config)) + "."


def train_job(context: AppContext, fields: dict[str, Any], name: str | None = None,
              max_minutes: float | None = None, default_name: str = "run") -> Iterator[tuple[str, Any, str | None]]:
    """Run one training run; yields (status text, curves figure or None, run name once finished)."""
    from mscsa_lab.io.run_metadata import read_run_metadata
    from mscsa_lab.train import TrainConfig
    from mscsa_lab.workflows.training import check_disk, tokens_text, train_action, training_spec

    name, out = run_out(context, name, bool(fields.get("resume")), default_name)
    config = TrainConfig(**{**fields, "out": str(out), "command": f"app Train tab: {name}"}).validate()
    from mscsa_lab.workflows.limits import guard

    guard(training_spec(config), context.limits, batch=config.batch_size, training=True)
    check_disk(config)
    job = context.jobs.claim(name)
    timer = threading.Timer(max_minutes * 60.0, job.stop.set) if max_minutes else None
    if timer is not None:  # the run stops cleanly at the time limit, its checkpoint kept
        timer.daemon = True
        timer.start()

    def work(job: Job):
        return train_action(config, callbacks=[lambda event: job.events.put(event.to_dict())], stop=job.stop,
                            limits=context.limits, name=name)

    points: list[dict[str, Any]] = []
    last_drawn = 0.0
    try:
        for item in _run_in_slot(context, job, work):
            if item.get("kind") == "started":
                yield _status(name, None), None, None
                continue
            points.append(item)
            now = time.monotonic()
            if now - last_drawn >= FIGURE_INTERVAL_S or item["kind"] in ("epoch", "end"):
                last_drawn = now
                yield _status(name, item), plot_training_curves(points, name), None
            else:
                yield _status(name, item), None, None
        text = job.result.summary + " It is chosen as the model in the Saliency tab."
        tokens = read_run_metadata(out).get("tokens")
        if isinstance(tokens, dict):
            text += f" Tokens: {tokens_text(tokens)}."
        yield text, plot_training_curves(points, name), name
    finally:
        if timer is not None:
            timer.cancel()


def ablation_job(context: AppContext, model: str, variants: str, seeds: list[int], fields: dict[str, Any],
                 fps: bool = True) -> Iterator[tuple[str, Any, list[str] | None]]:
    """Run an ablation study in the job slot; yields (status, the study's table once finished, its files)."""
    from mscsa_lab.train.ablation import resolve_variants
    from mscsa_lab.workflows.training import ablate_action

    chosen = resolve_variants(variants)  # unknown variants fail here, before the slot is taken
    name = f"ablation {model} ({len(chosen)} variants x {len(seeds)} seeds)"
    job = context.jobs.claim(name)
    state: dict[str, Any] = {"message": "building the variants and counting their FLOPs...", "step": None}

    def work(job: Job):
        return ablate_action(model, chosen, seeds=seeds, train=fields, fps=fps, stop=job.stop,
                             progress=lambda fraction, message: job.events.put(
                                 {"kind": "progress", "fraction": fraction, "message": message}),
                             callbacks=[lambda event: job.events.put(event.to_dict())])

    last_shown = 0.0
    for item in _run_in_slot(context, job, work):
        if item.get("kind") == "progress":
            state["message"], state["step"] = f"{100 * item['fraction']:.0f}% - {item['message']}", None
        elif item.get("kind") == "phase":
            state["step"] = item.get("message")
        elif item.get("kind") != "started":
            state["step"] = f"step {item['step']}/{item['total_steps']}" + (
                f", loss {item['loss']:.3f}" if item.get("loss") is not None else "")
        now = time.monotonic()
        if item.get("kind") in ("progress", "started") or now - last_shown >= FIGURE_INTERVAL_S:
            last_shown = now
            step = f" ({state['step']})" if state["step"] else ""
            yield f"**{name}**: {state['message']}{step}", None, None
    result = job.result
    files = result.write_all(context.output_dir("ablation"), export_stem(f"ablation-{variants}", model))
    text = result.summary + "\n\n" + "\n".join(f"- {note}" for note in result.table.notes)
    yield text, result.table.frame, [str(f) for f in files]


def on_tokens_initial() -> str:
    try:
        return tokens_note(dict(backbone="resnet18", img_size=96))
    except Exception:  # noqa: BLE001 - only a hint on the page
        return ""


def render(context: AppContext, shared: Shared) -> None:
    from webapp.tabs.explain import render_explain

    gr.Markdown("Train MSCSA on your own images (an ImageFolder: class sub-folders, or train/ and val/ with class "
                "sub-folders) or on the built-in synthetic shapes, or explain a pretrained backbone from a few photos "
                "(no labels). `mscsa-only` freezes the backbone (fast, best with a pretrained backbone). Runs are "
                f"saved in `{context.runs_dir}` and appear in the Saliency tab.")
    render_explain(context, shared)
    gr.Markdown("### Train on labelled images")
    with gr.Row():
        data = gr.Textbox("synthetic", label="Data: 'synthetic' or a folder on this machine", elem_id="train-data")
        profile = gr.Dropdown([("none", "")] + profile_choices(True), value="", label="Table 7 profile (MSCSA settings)")
        backbone = gr.Textbox("resnet18", label="Backbone (timm name; blank = the profile's)", elem_id="train-backbone")
        mode = gr.Radio(["mscsa-only", "finetune", "scratch"], value="scratch", label="Mode")
    with gr.Row():
        epochs = gr.Number(2, label="Epochs", precision=0, elem_id="train-epochs")
        steps = gr.Textbox("", label="Max steps (blank = all epochs)", elem_id="train-steps")
        batch = gr.Number(16, label="Batch", precision=0, elem_id="train-batch")
        size = gr.Number(96, label="Image size", precision=0, elem_id="train-size")
        lr = gr.Textbox("", label="Learning rate (blank = default)", elem_id="train-lr")
        pretrained = gr.Checkbox(False, label="Pretrained backbone")
        name = gr.Textbox("", label="Run name (blank = date and time)", elem_id="train-name")
        resume = gr.Checkbox(False, label="Resume this run from its last checkpoint", elem_id="train-resume")
    with gr.Row():
        scale_min = gr.Textbox("", label="Crop scale min (blank = by image size)", elem_id="train-scale-min")
        scale_max = gr.Textbox("", label="Crop scale max (blank = 1)", elem_id="train-scale-max")
        ratio_min = gr.Textbox("", label="Aspect ratio min (blank = 3/4)", elem_id="train-ratio-min")
        ratio_max = gr.Textbox("", label="Aspect ratio max (blank = 4/3)", elem_id="train-ratio-max")
        hflip = gr.Number(0.5, label="Flip probability", minimum=0, maximum=1, elem_id="train-hflip")
    weights = gr.File(label="or backbone weights from a file (.safetensors, or .pth read weights-only)",
                      file_types=[".safetensors", ".pth", ".pt", ".bin"], type="filepath", elem_id="train-weights")
    tokens = gr.Markdown(on_tokens_initial(), elem_id="train-tokens")
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="train-button")
        stop = gr.Button("Stop (keeps the last checkpoint)", elem_id="stop-button")
    status = gr.Markdown(elem_id="train-status")
    curves = gr.Plot(label="Loss and accuracy", elem_id="train-curves")

    def on_tokens(profile, backbone, size):
        try:
            return tokens_note(dict(profile=(profile or "").strip() or None, backbone=(backbone or "").strip() or None,
                                    img_size=int(size) if size else None))
        except Exception:  # noqa: BLE001 - a half-typed name: the note waits for a valid one (Start says why)
            return ""

    for trigger in (backbone.blur, profile.change, size.blur):
        trigger(on_tokens, [profile, backbone, size], [tokens], queue=False, api_visibility="private")

    def on_train(data, profile, backbone, mode, epochs, steps, batch, size, lr, pretrained, name, resume, weights,
                 scale_min=None, scale_max=None, ratio_min=None, ratio_max=None, hflip=None):
        fields = training_fields(context.limits, data, profile, backbone, mode, epochs, steps, batch, size, lr,
                                 pretrained, resume, weights)
        fields.update(augmentation_fields(scale_min, scale_max, ratio_min, ratio_max, hflip))
        for text, figure, finished in train_job(context, fields, name, max_minutes=context.limits.max_train_minutes):
            runs = gr.update(choices=_sources(context), value=finished) if finished else gr.update()
            yield text, (figure if figure is not None else gr.update()), runs

    wire(context, "Train", start.click, on_train,
         [data, profile, backbone, mode, epochs, steps, batch, size, lr, pretrained, name, resume, weights, scale_min,
          scale_max, ratio_min, ratio_max, hflip], status,
         [curves], "starting", api_name="train", extra_outputs=[shared.saliency_source], concurrency_limit=1,
         concurrency_id="train")
    stop.click(lambda: context.jobs.stop(), None, [status], api_name="stop_training")
    _render_curves(context)

    with gr.Accordion("Ablation study (the paper's Tables 4 and 5)", open=False):
        gr.Markdown("Trains every variant of Table 4 (components) or Table 5 (down-sampling) with each seed under "
                    "the same data, then tabulates held-out top-1 (mean, std over seeds) beside FLOPs, parameters, an "
                    "FPS ratio and the paper's FLOPs. `demo` is a small model that runs in minutes on a CPU; a Table 7 "
                    "profile or timm backbone takes longer. Stop ends the current run and keeps the finished ones.")
        with gr.Row():
            ablate_model = gr.Textbox("demo", label="Model: demo, a profile or a timm backbone", elem_id="ablate-model")
            ablate_table = gr.Radio(["4", "5"], value="4", label="Paper table")
            ablate_seeds = gr.Textbox("0 1", label="Seeds", elem_id="ablate-seeds")
            ablate_data = gr.Textbox("synthetic", label="Data: 'synthetic' or a folder")
        with gr.Row():
            ablate_steps = gr.Number(100, label="Steps per run", precision=0, elem_id="ablate-steps")
            ablate_batch = gr.Number(32, label="Batch", precision=0, elem_id="ablate-batch")
            ablate_size = gr.Number(64, label="Image size", precision=0, elem_id="ablate-size")
            ablate_fps = gr.Checkbox(True, label="Measure the FPS ratio", elem_id="ablate-fps")
        ablate_button = gr.Button("Run the study", variant="primary", elem_id="ablate-button")
        ablate_status = gr.Markdown(elem_id="ablate-status")
        ablate_frame = gr.Dataframe(label="Study (one row per variant)", elem_id="ablate-table")
        ablate_files = gr.File(label="Downloads: CSV, Markdown, LaTeX, JSON", file_count="multiple",
                               elem_id="ablate-files")

        def on_ablate(model, table, seeds, data, max_steps, batch, img_size, fps):
            chosen_model, variants, seed_list, fields = ablation_fields(context.limits, model, table, seeds, data,
                                                                        max_steps, batch, img_size)
            for text, frame, files in ablation_job(context, chosen_model, variants, seed_list, fields, fps=bool(fps)):
                yield (text, show_frame(frame) if frame is not None else gr.update(),
                       files if files is not None else gr.update())

        wire(context, "Ablation", ablate_button.click, on_ablate,
             [ablate_model, ablate_table, ablate_seeds, ablate_data, ablate_steps, ablate_batch, ablate_size,
              ablate_fps], ablate_status, [ablate_frame, ablate_files], "starting the study", api_name="ablate",
             concurrency_limit=1, concurrency_id="train")


def _sources(context: AppContext) -> list[tuple[str, str]]:
    from webapp.tabs.saliency import model_sources

    return model_sources(context)


# ---------------------------------------------------------------------- curves of saved runs
def curve_runs(context: AppContext) -> list[str]:
    """Names of the runs in the runs folder that have a history (finished, stopped or still running), newest first."""
    if not context.runs_dir.is_dir():
        return []
    found = []
    for folder in context.runs_dir.iterdir():
        try:
            if folder.is_symlink() or not RUN_NAME.match(folder.name):
                continue
            history = next((p for p in (folder / "history.csv", folder / "last" / "history.csv") if p.is_file()), None)
            if history is not None:
                found.append((history.stat().st_mtime, folder.name))
        except OSError:
            continue
    return [name for _, name in sorted(found, reverse=True)]


def run_curves(context: AppContext, names: list[str] | None) -> tuple[str, Any]:
    """(summary, figure) of the chosen runs' curves overlaid, read from their files in the runs folder."""
    from mscsa_lab.io.guarded import resolve_inside
    from mscsa_lab.workflows.training import curves_action

    names = [str(n) for n in (names or [])]
    if not names:
        raise ConfigError("choose one or more runs whose curves to draw")
    if len(names) > 12:
        raise ConfigError(f"{len(names)} runs chosen: draw at most 12 at once, so their colours stay apart")
    folders = []
    for name in names:
        if not RUN_NAME.match(name):
            raise ConfigError(f"no run {name[:200]!r} in {context.runs_dir}")
        folder = resolve_inside(context.runs_dir / name, context.runs_dir, what="run", error=ConfigError)
        if folder.parent != context.runs_dir.resolve():
            raise ConfigError(f"no run {name!r} in {context.runs_dir}")
        folders.append(folder)
    result = curves_action(folders, root=context.runs_dir)
    return result.summary, result.figure


def _render_curves(context: AppContext) -> None:
    with gr.Accordion("Curves of saved runs (read from their history.csv: they survive a reload)", open=False):
        with gr.Row():
            chosen = gr.Dropdown(curve_runs(context), multiselect=True, label="Runs", elem_id="curves-runs", scale=4,
                                 allow_custom_value=True)  # runs trained since the page loaded: checked by name
            draw = gr.Button("Draw curves", elem_id="curves-button", scale=1)
        curves_status = gr.Markdown(elem_id="curves-status")
        figure = gr.Plot(label="Loss and accuracy of the chosen runs", elem_id="curves-plot")
    # the list is read from the runs folder whenever it is opened: runs trained since the page loaded appear
    chosen.focus(lambda: gr.update(choices=curve_runs(context)), None, [chosen], queue=False, api_visibility="private")
    wire(context, "Train", draw.click, lambda names: run_curves(context, names), [chosen], curves_status, [figure],
         "reading the runs' histories", api_name="run_curves", arg_names=["runs"])
