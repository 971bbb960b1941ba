"""MSCSA Lab web app. Only wiring lives here: every action is a ``webapp.handlers`` function.

    python app.py                 # http://127.0.0.1:7860, this machine only
    python app.py --host 0.0.0.0  # reachable from other machines (prints a warning)
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import threading
import time
import warnings

import gradio as gr

from webapp import handlers, training
from mscsa_lab.io.numbers import readable_frame
from mscsa_lab.models.config import DOWNSAMPLE_STRATEGIES
from mscsa_lab.presets import list_profiles
from mscsa_lab.explain.saliency import METHODS

# Checkpoints are the largest uploads (a 224x224 PVTv2-B1+MSCSA is 75 MB in fp32); images are further
# limited to 50 MB by mscsa_lab.io.images.
MAX_UPLOAD = "512mb"

# One error at a time: Gradio stacks a message per error; only the newest is shown.
CSS = """
.toast-wrap > .toast-body:not(:last-child) { display: none !important; }
.toast-messages > .toast-message-item:not(:last-child) { display: none !important; }
.toast-count { display: none !important; }
"""
LAUNCH_OPTIONS = dict(max_file_size=MAX_UPLOAD, css=CSS)


def _user_errors(action):
    """Show library errors as a readable message in the page; the app keeps running."""

    @functools.wraps(action)
    def wrapper(*args, **kwargs):
        try:
            return action(*args, **kwargs)
        except gr.Error:
            raise
        except handlers.USER_ERRORS as error:
            raise gr.Error(str(error)) from None

    return wrapper


def _profile_choices(available_only: bool = False) -> list[tuple[str, str]]:
    return [(p.title + ("" if p.available else " (not available yet)"), p.name)
            for p in list_profiles() if p.available or not available_only]


@_user_errors
def on_build(field_names: tuple[str, ...], *values):
    """``field_names`` name the ModelForm field of each input, so the form never depends on input order."""
    form = handlers.ModelForm(**dict(zip(field_names, values)))
    return (*handlers.build_action(form), form)


def _cleared(count: int):
    """A function that empties ``count`` result components: results never outlive the inputs or the
    run that made them (an error leaves the outputs empty, not showing the previous run's numbers)."""
    return lambda *_: tuple([None] * count) if count > 1 else None


@_user_errors
def on_profile(form, convention, level, memory, memory_batch, training):
    form = form or handlers.ModelForm()
    title, frame, figure, files, notes = handlers.profile_action(form, convention, level, memory, memory_batch, training)
    return f"### {title}", frame, figure, files, notes


@_user_errors
def on_budget(name, cap, height, width, task):
    return handlers.budget_action(name, cap, height, width, task)


BUDGET_FIELDS = ("profile", "backbone", "depth", "num_heads", "key_dim", "mlp_ratio", "squeeze_ratio")


@_user_errors
def on_budget_apply(name, chosen):
    fields = handlers.budget_apply(name, chosen)
    updates = [fields[key] if fields[key] is not None else gr.update() for key in BUDGET_FIELDS]
    return (*updates, f"Applied the budget's settings for {name} to the Build tab; building...")


@_user_errors
def on_pin(pinned, form):
    return handlers.pin_action(pinned, form)


def _cancellable(work, progress: gr.Progress, poll_s: float = 0.5, orphan_s: float = 15.0):
    """Run ``work(stop, report)`` in a thread and yield None while it runs, then its result.

    A cancelled request (the page's Stop, a closed tab, a client's cancel) closes this generator, whose
    ``finally`` sets ``stop``: the work sees it within one step and ends, so a cancelled benchmark
    does not keep the CPU busy beside the next request. Errors are raised here, in the request.

    Gradio can only close a generator it has registered, which happens at its first yield: so nothing
    starts before that yield. And a cancel that still slips past (the generator left suspended, never
    closed) is caught by a watchdog: when nobody has asked for the next update for ``orphan_s``
    seconds, the request is gone and ``stop`` is set."""
    stop, box = threading.Event(), {}
    state = {"fraction": 0.0, "message": "starting"}

    def report(fraction: float, message: str) -> None:
        state.update(fraction=fraction, message=message)

    def run() -> None:
        try:
            box["result"] = work(stop, report)
        except BaseException as error:  # noqa: BLE001 - raised in the request below
            box["error"] = error

    def watch() -> None:
        while thread.is_alive() and not stop.wait(poll_s):
            if time.monotonic() - state["polled"] > orphan_s:
                stop.set()

    thread = threading.Thread(target=run, name="mscsa-cancellable", daemon=True)
    try:
        yield None  # registered with Gradio from here on, so a cancel can close it
        state["polled"] = time.monotonic()
        thread.start()
        threading.Thread(target=watch, name="mscsa-cancellable-watchdog", daemon=True).start()
        while thread.is_alive():
            thread.join(poll_s)
            progress(state["fraction"], desc=state["message"])
            yield None
            state["polled"] = time.monotonic()
        if "error" in box:
            error = box["error"]
            if isinstance(error, handlers.USER_ERRORS):
                raise gr.Error(str(error)) from None
            raise error
        yield box["result"]
    finally:
        stop.set()


def on_benchmark(names, device, precision, batch, channels_last, steps, repeats, size, latency_model, include_build,
                 max_seconds, form, progress=gr.Progress()):
    if include_build and form is None:
        raise gr.Error("build a model in the Build tab first, or untick 'Include the Build tab's model'")

    def work(stop, report):
        return handlers.benchmark_action(
            names, device, precision, batch, channels_last, steps, repeats, size, latency_model or None,
            progress=report, build_form=form if include_build else None, max_seconds=max_seconds, stop=stop)

    for result in _cancellable(work, progress):
        if result is None:
            yield tuple(gr.update() for _ in range(6))
        else:
            title, frame, figure, latency, latency_figure, files = result
            yield f"### {title}", frame, figure, latency, latency_figure, files


@_user_errors
def on_saliency(image, method, kinds, block, layer, target, fit, source, checkpoint, form):
    grid, prediction, mass, heads, npz, seconds = handlers.saliency_action(
        image, method, kinds, block, layer, target, None, fit, source, form, checkpoint)
    return grid, f"{prediction} ({seconds:.1f} s)", mass, heads, npz


@_user_errors
def on_upload(image, fit, source, form):
    return handlers.preview_action(image, fit, source, form)


@_user_errors
def on_click(image, block, layer, fit, source, checkpoint, form, event: gr.SelectData):
    grid, prediction, mass, heads, npz, seconds = handlers.saliency_action(
        image, "query", ["attention"], block, layer, None, tuple(event.index), fit, source, form, checkpoint)
    return grid, f"{prediction}; attention of the clicked point ({seconds:.1f} s)", mass, heads, npz


def on_train(data, profile, backbone, mode, epochs, max_steps, batch, img_size, lr, pretrained, run_name,
             resume=False):
    """Stream a training run's progress; errors (bad folder, impossible numbers) become page messages."""
    try:
        fields = handlers.training_fields(data, profile, backbone, mode, epochs, max_steps, batch, img_size, lr,
                                          pretrained, resume)
        for status, curves, finished in training.train_job(fields, run_name,
                                                           max_minutes=handlers.limits().max_train_minutes):
            runs = gr.update(choices=_model_sources(), value=finished) if finished else gr.update()
            yield status, (curves if curves is not None else gr.update()), runs
    except gr.Error:
        raise
    except handlers.USER_ERRORS as error:
        raise gr.Error(str(error)) from None


def on_ablate(model, table, seeds, data, max_steps, batch, img_size, fps):
    """Stream an ablation study's progress, then its table and files; bad numbers become page messages."""
    try:
        name, variants, seed_list, fields = handlers.ablation_fields(model, table, seeds, data, max_steps, batch,
                                                                     img_size)
        for status, frame, files in training.ablation_job(name, variants, seed_list, fields, fps=bool(fps)):
            yield (status, readable_frame(frame) if frame is not None else gr.update(),
                   files if files is not None else gr.update())
    except gr.Error:
        raise
    except handlers.USER_ERRORS as error:
        raise gr.Error(str(error)) from None


def _model_sources() -> list[tuple[str, str]]:
    """The Saliency tab's model choices: the demo model, the Build tab's model, every trained run."""
    return ([("demo model (5 synthetic shapes)", "demo"), ("the Build tab's model", "build")]
            + training.trained_runs())


@_user_errors
def on_compare(names, height, width, task, convention, fps, include_pinned, pinned, progress=gr.Progress()):
    report = lambda fraction, message: progress(fraction, desc=message)  # noqa: E731
    title, frame, figure, files, notes = handlers.compare_action(
        names, height, width, task, convention, pinned if include_pinned else (), bool(fps), progress=report)
    return f"### {title}", frame, figure, files, notes


def make_app() -> gr.Blocks:
    # delete_cache: Gradio's copies of served files older than an hour are removed every hour.
    with gr.Blocks(title="MSCSA Lab", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# MSCSA Lab\nMulti-Stage Cross-Scale Attention on any backbone: build it, count its FLOPs, "
                    "time it, and see what each scale of its keys and values looks at.")
        model_state = gr.State(None)

        with gr.Tab("Build"):
            with gr.Row():
                profile = gr.Dropdown(_profile_choices(), value="pvt_v2_b1", label="Table 7 profile")
                backbone = gr.Textbox(label="or any timm backbone (overrides the profile)", placeholder="e.g. efficientnet_b0")
                task = gr.Radio(["classification", "dense"], value="classification", label="Task")
            with gr.Row():
                height = gr.Number(224, label="Input height", precision=0, elem_id="build-height")
                width = gr.Number(224, label="Input width", precision=0, elem_id="build-width")
                # Text, not gr.Number: a blank number field reaches the server as 0, not "unset".
                depth = gr.Textbox(label="Depth (blank = profile)")
                num_heads = gr.Textbox(label="Heads (blank = profile)")
                key_dim = gr.Textbox(label="Head dim d (blank = profile)")
                mlp_ratio = gr.Textbox(label="MLP ratio (blank = profile)")
                squeeze = gr.Textbox(label="Squeeze ratio (5/8, none; blank = profile)")
            with gr.Row():
                use_pcp = gr.Checkbox(True, label="Parallel convolution path")
                use_intra_ffn = gr.Checkbox(True, label="Intra-FFN")
                use_msp = gr.Checkbox(True, label="Multi-scale K/V (MSP)")
                downsample = gr.Dropdown(list(DOWNSAMPLE_STRATEGIES), value="dwconv", label="MSP down-sampling")
                pretrained = gr.Checkbox(False, label="Pretrained backbone (timm weights: downloaded, or from the cache)")
            with gr.Row():
                build = gr.Button("Build", variant="primary", elem_id="build-button")
                pin = gr.Button("Pin for Compare", elem_id="pin-button")
                unpin = gr.Button("Clear pinned")
            build_status = gr.Markdown(elem_id="build-status")
            pinned_note = gr.Markdown(handlers.pinned_text([]), elem_id="pinned-note")
            stages = gr.Dataframe(label="Stages", wrap=True, elem_id="build-stages")
            with gr.Row():
                scales = gr.Dataframe(label="Key/value scales", wrap=True)
                params = gr.Dataframe(label="Parameters", wrap=True, elem_id="build-params")
            diagram = gr.Plot(label="The built model (drawn from the model itself)", elem_id="build-diagram")
            diagram_files = gr.File(label="Diagram (SVG, PNG)", file_count="multiple", elem_id="build-files")
            form_fields = dict(profile=profile, backbone=backbone, task=task, height=height, width=width, depth=depth,
                               num_heads=num_heads, key_dim=key_dim, mlp_ratio=mlp_ratio, squeeze_ratio=squeeze,
                               use_pcp=use_pcp, use_intra_ffn=use_intra_ffn, use_msp=use_msp, downsample=downsample,
                               pretrained=pretrained)
            build_outputs = [build_status, stages, scales, params, diagram, diagram_files]
            build_event = dict(fn=functools.partial(on_build, tuple(form_fields)), inputs=list(form_fields.values()),
                               outputs=build_outputs + [model_state])
            build.click(_cleared(len(build_outputs)), None, build_outputs, queue=False).then(
                **build_event, api_name="build")
            for field in form_fields.values():  # changed inputs: the shown model is no longer what the form says
                field.change(_cleared(len(build_outputs)), None, build_outputs, queue=False)
            pinned_state = gr.State([])
            pin.click(on_pin, [pinned_state, model_state], [pinned_state, pinned_note], api_name="pin")
            unpin.click(lambda: ([], handlers.pinned_text([])), None, [pinned_state, pinned_note], queue=False)

        with gr.Tab("Profile"):
            gr.Markdown("FLOPs and parameters of the model built in the Build tab, per component "
                        "(1 multiply-add = 1 FLOP, as in the paper; attention matmuls included).")
            with gr.Row():
                convention = gr.Radio(["mac", "2x"], value="mac", label="FLOPs convention")
                level = gr.Radio([0, 1, 2], value=1, label="Detail level")
                memory = gr.Checkbox(False, label="Memory per component (activations, peak)", elem_id="profile-memory")
                memory_batch = gr.Number(1, label="Memory at batch", precision=0, elem_id="profile-batch")
                memory_training = gr.Checkbox(False, label="for a training step (AdamW)", elem_id="profile-training")
                run_profile = gr.Button("Profile", variant="primary", elem_id="profile-button")
            profile_title = gr.Markdown(elem_id="profile-title")
            profile_table = gr.Dataframe(label="Per-component cost", elem_id="profile-table", wrap=True)
            profile_plot = gr.Plot(label="Shares of the MSCSA parts")
            profile_files = gr.File(label="Downloads", file_count="multiple", elem_id="profile-files")
            profile_notes = gr.Markdown()
            profile_outputs = [profile_title, profile_table, profile_plot, profile_files, profile_notes]
            run_profile.click(_cleared(len(profile_outputs)), None, profile_outputs, queue=False).then(
                on_profile, [model_state, convention, level, memory, memory_batch, memory_training], profile_outputs,
                api_name="profile")
            model_state.change(_cleared(len(profile_outputs)), None, profile_outputs, queue=False)
            gr.Markdown("### FLOPs budget\nThe configuration whose added FLOPs come closest to the cap.")
            with gr.Row():
                budget_name = gr.Dropdown(_profile_choices(True), value="pvt_v2_b1", label="Backbone", allow_custom_value=True,
                                          elem_id="budget-name")
                budget_cap = gr.Number(10, label="Cap (% of the backbone's FLOPs)")
                budget_button = gr.Button("Fit")
            budget_message = gr.Markdown(elem_id="budget-message")
            budget_config = gr.Code(language="json", label="Chosen settings")
            budget_apply = gr.Button("Apply to Build (and build it)", elem_id="budget-apply")
            budget_table = gr.Dataframe(label="Candidates tried", wrap=True)
            budget_outputs = [budget_message, budget_config, budget_table]
            budget_button.click(_cleared(len(budget_outputs)), None, budget_outputs, queue=False).then(
                on_budget, [budget_name, budget_cap, height, width, task], budget_outputs, api_name="budget")
            budget_apply.click(
                on_budget_apply, [budget_name, budget_config],
                [form_fields[key] for key in BUDGET_FIELDS] + [budget_message], api_name="budget_apply"
            ).success(**build_event)

        with gr.Tab("Benchmark"):
            gr.Markdown(handlers.device_note(), elem_id="device-note")
            with gr.Row():
                bench_names = gr.Dropdown(_profile_choices(True), value=["pvt_v2_b0"], multiselect=True,
                                          label="Backbones (profiles, or type a timm name)", allow_custom_value=True,
                                          elem_id="bench-names")
                bench_build = gr.Checkbox(False, label="Include the Build tab's model", elem_id="bench-build")
                bench_device = gr.Radio(["auto", "cpu", "cuda"], value="auto", label="Device")
                bench_precision = gr.Radio(["fp32", "tf32", "fp16", "bf16"], value="fp32", label="Precision")
            with gr.Row():
                bench_batch = gr.Number(8, label="Batch", precision=0)
                bench_channels_last = gr.Checkbox(False, label="channels_last")
                bench_steps = gr.Number(3, label="Steps per timed block", precision=0)
                bench_repeats = gr.Number(6, label="Least rounds (more until the ratio is known to +-2%)", precision=0)
                bench_cap = gr.Number(60, label="Time cap per backbone (s)", precision=0)
                bench_size = gr.Number(224, label="Input size", precision=0)
                bench_latency = gr.Dropdown([("none", "")] + _profile_choices(True), value="", label="Per-component latency of")
            bench_button = gr.Button("Run benchmark", variant="primary", elem_id="bench-button")
            bench_note = gr.Markdown(elem_id="bench-title")
            bench_table = gr.Dataframe(label="FPS with and without MSCSA (measured interleaved; low/high: 95% interval)",
                                       elem_id="bench-table", wrap=True)
            bench_plot = gr.Plot(label="FPS change")
            latency_table = gr.Dataframe(label="Per-component latency", wrap=True)
            latency_plot = gr.Plot(label="Share of time vs share of FLOPs")
            bench_files = gr.File(label="Downloads", file_count="multiple")
            bench_outputs = [bench_note, bench_table, bench_plot, latency_table, latency_plot, bench_files]
            bench_button.click(_cleared(len(bench_outputs)), None, bench_outputs, queue=False).then(
                on_benchmark, [bench_names, bench_device, bench_precision, bench_batch, bench_channels_last, bench_steps,
                               bench_repeats, bench_size, bench_latency, bench_build, bench_cap, model_state],
                bench_outputs, api_name="benchmark", concurrency_limit=1, concurrency_id="benchmark")

        with gr.Tab("Saliency"):
            gr.Markdown("One map per scale (X0 full, X1 2x down, X2 3x down) of a CSA layer's keys or values. "
                        "Click a point on the input to see its attention over each scale.")
            with gr.Row():
                with gr.Column(scale=1):
                    # A file input, not gr.Image: every upload goes through mscsa_lab.io.images, whose errors
                    # say what is wrong with a file (gr.Image would fail on it before our code runs).
                    image = gr.File(label="Image (any format Pillow reads, up to 50 MB; or pick a sample below)", type="filepath",
                                    elem_id="saliency-image")
                    samples = handlers.sample_images()
                    if samples:
                        gr.Examples(samples, inputs=[image], label="Samples")
                    preview = gr.Image(label="As the model sees it: click a point for its attention", interactive=False,
                                       elem_id="saliency-preview", height=288)
                with gr.Column(scale=1):
                    source = gr.Dropdown(_model_sources(), value="demo", label="Model (trained runs appear here)",
                                         elem_id="saliency-source")
                    checkpoint = gr.File(label="Checkpoint for the Build tab's model (.safetensors / .pth, up to 512 MB)",
                                         file_types=[".safetensors", ".pth", ".pt"], type="filepath",
                                         elem_id="saliency-checkpoint")
                    method = gr.Dropdown(list(METHODS), value="gradxact", label="Method (gradxact = HiResCAM, class-targeted)")
                    kinds = gr.CheckboxGroup(["key", "value"], value=["key", "value"], label="Keys / values")
                    with gr.Row():
                        block = gr.Number(0, label="Block", precision=0)
                        layer = gr.Radio([1, 2], value=1, label="CSA layer")
                    target = gr.Textbox("top-1", label="Target class (name or index; top-1 = predicted)")
                    fit = gr.Radio(["pad", "crop"], value="pad", label="Resize: keep aspect (pad) or center-crop")
                    run_saliency = gr.Button("Render maps", variant="primary", elem_id="saliency-button")
            prediction = gr.Markdown(elem_id="saliency-prediction")
            grid = gr.Image(label="Per-scale maps", elem_id="saliency-grid", interactive=False)
            with gr.Row():
                mass = gr.Plot(label="Attention mass per scale and head")
                heads = gr.Image(label="Per-head maps", interactive=False)
            maps_file = gr.File(label="Raw maps (.npz)")
            saliency_inputs = [image, method, kinds, block, layer, target, fit, source, checkpoint, model_state]
            run_saliency.click(on_saliency, saliency_inputs, [grid, prediction, mass, heads, maps_file], api_name="saliency")
            for trigger in (image.change, fit.change, source.change):
                trigger(on_upload, [image, fit, source, model_state], [preview])
            preview.select(on_click, [image, block, layer, fit, source, checkpoint, model_state],
                           [grid, prediction, mass, heads, maps_file])

        with gr.Tab("Train"):
            gr.Markdown("Train MSCSA on your own images (an ImageFolder: class sub-folders, or train/ and val/ "
                        "with class sub-folders) or on the built-in synthetic shapes. `mscsa-only` freezes the "
                        "backbone (fast, best with a pretrained backbone). Runs are saved in "
                        f"`{training.runs_dir()}` and appear in the Saliency tab.")
            with gr.Row():
                train_data = gr.Textbox("synthetic", label="Data: 'synthetic' or a folder on this machine",
                                        elem_id="train-data")
                train_profile = gr.Dropdown([("none", "")] + _profile_choices(True), value="",
                                            label="Table 7 profile (MSCSA settings)")
                train_backbone = gr.Textbox("resnet18", label="Backbone (timm name; blank = the profile's)",
                                            elem_id="train-backbone")
                train_mode = gr.Radio(["mscsa-only", "finetune", "scratch"], value="scratch", label="Mode")
            with gr.Row():
                train_epochs = gr.Number(2, label="Epochs", precision=0, elem_id="train-epochs")
                train_steps = gr.Textbox("", label="Max steps (blank = all epochs)", elem_id="train-steps")
                train_batch = gr.Number(16, label="Batch", precision=0, elem_id="train-batch")
                train_size = gr.Number(96, label="Image size", precision=0, elem_id="train-size")
                train_lr = gr.Textbox("", label="Learning rate (blank = default)")
                train_pretrained = gr.Checkbox(False, label="Pretrained backbone")
                train_name = gr.Textbox("", label="Run name (blank = date and time)", elem_id="train-name")
                train_resume = gr.Checkbox(False, label="Resume this run from its last checkpoint", elem_id="train-resume")
            with gr.Row():
                train_button = gr.Button("Start training", variant="primary", elem_id="train-button")
                stop_button = gr.Button("Stop (keeps the last checkpoint)", elem_id="stop-button")
            train_status = gr.Markdown(elem_id="train-status")
            train_curves = gr.Plot(label="Loss and accuracy")
            train_button.click(
                on_train, [train_data, train_profile, train_backbone, train_mode, train_epochs, train_steps, train_batch,
                           train_size, train_lr, train_pretrained, train_name, train_resume],
                [train_status, train_curves, source], api_name="train", concurrency_limit=1, concurrency_id="train")
            stop_button.click(training.stop_training, None, [train_status], api_name="stop_training")
            with gr.Accordion("Ablation study (the paper's Tables 4 and 5)", open=False):
                gr.Markdown("Trains every variant of Table 4 (components) or Table 5 (down-sampling) with each seed "
                            "under the same data, then tabulates held-out top-1 (mean, std over seeds) beside FLOPs, "
                            "parameters, an FPS ratio and the paper's FLOPs. `demo` is a small model that runs in "
                            "minutes on a CPU; a Table 7 profile or timm backbone takes longer. Stop ends the "
                            "current run and keeps the finished ones.")
                with gr.Row():
                    ablate_model = gr.Textbox("demo", label="Model: demo, a profile or a timm backbone",
                                              elem_id="ablate-model")
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
                ablate_button.click(
                    on_ablate, [ablate_model, ablate_table, ablate_seeds, ablate_data, ablate_steps, ablate_batch,
                                ablate_size, ablate_fps],
                    [ablate_status, ablate_frame, ablate_files], api_name="ablate", concurrency_limit=1,
                    concurrency_id="train")

        with gr.Tab("Compare"):
            with gr.Row():
                compare_names = gr.Dropdown(_profile_choices(True), value=["pvt_v2_b0", "pvt_v2_b1"], multiselect=True,
                                            elem_id="compare-names",
                                            label="Backbones", allow_custom_value=True)
                compare_height = gr.Number(224, label="Input height", precision=0, elem_id="compare-height")
                compare_width = gr.Number(224, label="Input width", precision=0, elem_id="compare-width")
                compare_task = gr.Radio(["classification", "dense", "segmentation"], value="classification",
                                        label="Task (segmentation: TopFormer profiles only)")
                compare_convention = gr.Radio(["mac", "2x"], value="mac", label="FLOPs convention")
            with gr.Row():
                compare_fps = gr.Checkbox(False, label="Measure FPS too (interleaved, with 95% intervals; slower)",
                                          elem_id="compare-fps")
                compare_pinned = gr.Checkbox(True, label="Include the configurations pinned in Build",
                                             elem_id="compare-pinned")
            compare_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
            compare_title = gr.Markdown(elem_id="compare-title")
            compare_table = gr.Dataframe(label="With and without MSCSA (paper's figures beside)", elem_id="compare-table",
                                         wrap=True)
            compare_plot = gr.Plot(label="FLOPs")
            compare_files = gr.File(label="Downloads: CSV, Markdown, LaTeX, JSON, PNG, SVG", file_count="multiple",
                                    elem_id="compare-files")
            compare_notes = gr.Markdown()
            compare_outputs = [compare_title, compare_table, compare_plot, compare_files, compare_notes]
            compare_button.click(_cleared(len(compare_outputs)), None, compare_outputs, queue=False).then(
                on_compare, [compare_names, compare_height, compare_width, compare_task, compare_convention, compare_fps,
                             compare_pinned, pinned_state], compare_outputs, api_name="compare")
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MSCSA Lab web app")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also create a public Gradio share link")
    parser.add_argument("--runs-dir", default=None,
                        help="folder for training runs (default: $MSCSA_LAB_RUNS or ./runs)")
    defaults = handlers.limits()
    limit_flags = {"max_side": "pixels per side of an input", "max_batch": "batch size",
                   "max_steps": "forward passes per timed block", "max_repeats": "timed rounds",
                   "max_models": "backbones per comparison or benchmark", "max_epochs": "training epochs",
                   "max_train_steps": "training steps", "max_train_minutes": "minutes of one training run",
                   "max_params": "parameters of one model",
                   "memory_fraction": "share of the free memory one request may use"}
    for name, text in limit_flags.items():
        default = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                            help=f"limit on {text} (default: {default})")
    parser.add_argument("--cache-mb", type=int, default=handlers.DEFAULT_CACHE_BYTES // 2**20,
                        help="memory the cache of built models may hold, in MiB (default: "
                             f"{handlers.DEFAULT_CACHE_BYTES // 2**20}); least recently used models go first")
    args = parser.parse_args(argv)
    handlers.set_cache_budget(args.cache_mb * 2**20)
    handlers.set_limits(dataclasses.replace(defaults, **{name: getattr(args, name) for name in limit_flags}))
    if args.runs_dir:
        training.set_runs_dir(args.runs_dir)
    if args.host not in ("127.0.0.1", "localhost", "::1") or args.share:
        warnings.warn(
            f"MSCSA Lab is listening beyond this machine (host={args.host}, share={args.share}): anyone who can reach "
            "it can run models on this computer.",
            stacklevel=1,
        )
    make_app().queue(default_concurrency_limit=2).launch(
        server_name=args.host, server_port=args.port, share=args.share, **LAUNCH_OPTIONS
    )


if __name__ == "__main__":
    main()
