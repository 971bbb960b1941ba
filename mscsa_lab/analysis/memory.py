"""Per-component memory and memory traffic of a backbone+MSCSA model, in the manner of torchinfo.

The rows are ``components.model_components``: the same names, order and levels as the FLOPs profiler
(``profiler.profile_model``) and the latency benchmark (``bench.latency.component_latency``), so the
numbers here can stand beside FLOPs in the Profile table and beside time in the latency table. The pass
is watched by the project's one measurement engine (``analysis.tracker.ModuleTracker``) and the rows are
summed with its one rule (``components.component_total``). Bytes moved per component: ``analysis.traffic``.

**Computed** (on the CPU, from one real forward pass with hooks; nothing is guessed from shapes):

- *parameters* and their bytes, summed per component with the profiler's rule (a residual row such as
  "attention matmuls" is its parent minus its parent's child modules);
- *outputs*: the bytes of the outputs of the component's modules at the given batch size, what the
  component hands on. A residual row has no modules of its own and so no outputs: NaN;
- *activations*: the bytes of the outputs of every leaf module (one with no submodules) inside the
  component, what torchinfo's "forward pass size" adds up for that part. These add up like
  parameters, so residual rows have them (e.g. the stem's conv, BN, ReLU and pooling outputs);
- *saved for backward* (training): the bytes autograd keeps for the backward pass, taken from
  ``torch.autograd.graph.saved_tensors_hooks``. Its pack hook is called with exactly the tensors that
  autograd stores, so this is no estimate: every saved tensor's storage is counted once (storages
  shared by several saves, such as a ReLU output that the next conv saves again, count once), and a
  storage is charged to the modules that were running when it was first saved. Parameters and
  buffers, which autograd saves too, are left out here because they are already counted as
  parameters. Residual rows are defined for these bytes (parent minus children);
- *gradients* (the bytes of the trainable parameters) and the *optimizer state* (AdamW: two moments,
  2x the trainable parameter bytes; SGD with momentum: 1x; none: 0);
- whole-model *peak estimates*. Inference: parameters + buffers + the largest input+output of any
  single module call (distinct storages). This is a lower bound of what an allocator needs: it
  assumes every other activation is freed as soon as it is used. Training: parameters + buffers +
  gradients + optimizer state + everything saved for backward + that same largest module input+output
  (the working memory of the backward step of that module). This is an upper-side figure: it lets all
  gradients coexist with all saved tensors, whereas backward frees saved tensors as it goes.

**Measured** (only when ``device`` is a CUDA device; never on the CPU): ``torch.cuda.max_memory_allocated``
over a no-grad forward pass (inference), and over a forward + backward + optimizer step after one
warm-up step that creates the optimizer state (training), each minus the memory allocated before the
model was copied to the GPU, so they include the parameters like the computed peaks. The bytes
allocated between the start and end of the training forward pass are measured too (what autograd
keeps plus the output). Measured and computed figures sit side by side in ``totals_frame``.

Units: memory in MiB (2**20 bytes), parameters in millions (1e6), FLOPs in G (1e9, multiply-adds as
in the profiler unless ``convention="2x"``).

A model built on the meta device (``analysis.cost.meta_model``) runs the same pass without weights or arithmetic, in
a fraction of the time. Parameters, outputs and activations depend on shapes alone and come out the
same. Saved-for-backward bytes are the same wherever PyTorch picks one kernel on every device (tested
on ResNet-18 + MSCSA), but not where it picks by device: the meta device runs scaled-dot-product
attention on the math path, which keeps the attention matrix for backward, where the CPU's (and
CUDA's) fused kernel keeps only its output and log-sum-exp. timm's PVTv2 attention is such a case
(PVTv2-B1 + MSCSA, 224x224, batch 32: 3060 MiB saved on meta against 2988 MiB on the CPU, +2.4%).
MSCSA's own CSA, whose values are wider than its keys, takes the math path everywhere on the CPU.
CUDA kernels may also keep slightly different tensors than the CPU's (cuDNN's BN, for one); the
measured figures show the difference.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from mscsa_lab.analysis.components import component_total, model_components
from mscsa_lab.analysis.tracker import (ModuleTracker, example_input, per_module_path, storage_key_and_bytes,
                                        tensor_bytes, tensors_in)
from mscsa_lab.analysis.memory_report import (_NAN, MIB, OPTIMIZER_STATE_FACTORS, ComponentMemory, MemoryProfile,
                                              MemoryTotals)
from mscsa_lab.errors import UserError
from mscsa_lab.io.metadata import run_metadata
from mscsa_lab.models.mscsa_net import MSCSANet

__all__ = [
    "MIB",
    "OPTIMIZER_STATE_FACTORS",
    "ComponentMemory",
    "MemoryTotals",
    "MemoryProfile",
    "memory_profile",
    "working_copy",
    "check_inputs",
    "MemoryInputError",
    "dtype_name",
]




def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _model_label(model: MSCSANet, name: str | None) -> str:
    return name or f"{model.backbone.name} + MSCSA"


def _is_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def working_copy(model: MSCSANet, dtype: torch.dtype) -> tuple[MSCSANet, torch.device]:
    """A copy in ``dtype`` on the CPU (or left on the meta device), so the caller's model keeps its
    weights, device, dtype, mode and BN statistics (a training pass updates them)."""
    device = torch.device("meta") if _is_meta(model) else torch.device("cpu")
    working = copy.deepcopy(model).to(device=device)
    return working.to(dtype=dtype), device


class MemoryInputError(UserError, ValueError):
    """A memory or traffic profile asked for an impossible size, batch, dtype or device."""


def check_inputs(input_size: tuple[int, int], batch_size: int, dtype: torch.dtype) -> tuple[int, int]:
    height, width = (int(v) for v in input_size)
    if height < 1 or width < 1:
        raise MemoryInputError(f"input_size must be two positive sizes, got {input_size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MemoryInputError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if not dtype.is_floating_point:
        raise MemoryInputError(f"dtype must be a floating-point dtype, got {dtype}")
    return height, width


class _MemoryRecorder:
    """Outputs of every module call, the largest input+output of one call, and (when installed as
    saved-tensors hooks) every storage autograd saves, charged to the modules running at the time."""

    def __init__(self, tracker: ModuleTracker, leaf_paths: set[str], excluded_storages: set[int]) -> None:
        self.tracker = tracker
        self.leaf_paths = leaf_paths
        self.excluded = excluded_storages
        self.output_bytes: dict[str, int] = defaultdict(int)
        self.activation_bytes: dict[str, int] = defaultdict(int)
        self.saved_bytes: dict[str, int] = defaultdict(int)
        self.largest_call = (0, "")
        self.seen_saved: set[int] = set()
        # Saved tensors are held until the pass is over, so no storage address is reused meanwhile.
        self.kept: list[torch.Tensor] = []
        tracker.on_leave.append(self.on_call)

    def on_call(self, path: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        outputs = tensors_in(output)
        produced = sum(tensor_bytes(t) for t in outputs)
        self.output_bytes[path] += produced
        if path in self.leaf_paths:
            for running in self.tracker.running:  # the leaf itself and every module around it
                self.activation_bytes[running] += produced
        live: dict[int, int] = {}
        for tensor in tensors_in((args, kwargs)) + outputs:
            key, nbytes = storage_key_and_bytes(tensor)
            if key not in self.excluded:
                live[key] = nbytes
        call_bytes = sum(live.values())
        if call_bytes > self.largest_call[0]:
            self.largest_call = (call_bytes, path)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key, nbytes = storage_key_and_bytes(tensor)
        if key not in self.excluded and key not in self.seen_saved:
            self.seen_saved.add(key)
            self.kept.append(tensor)
            for path in self.tracker.running:
                self.saved_bytes[path] += nbytes
            if not self.tracker.running:  # saved outside every module (cannot happen inside model(x))
                self.saved_bytes[""] += nbytes
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def _measure_on_cuda(model: MSCSANet, input_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                     training: bool, optimizer: str | None) -> dict[str, float]:
    """max_memory_allocated over an inference forward (and a training step), minus what was allocated
    before the model came to the GPU. Never called without CUDA."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(device)
    gpu_model = copy.deepcopy(model).to(device=device, dtype=dtype)
    x = torch.randn(input_shape, device=device, dtype=dtype)
    measured: dict[str, float] = {}

    gpu_model.eval()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        gpu_model(x)
    torch.cuda.synchronize(device)
    measured["measured_peak_inference_bytes"] = torch.cuda.max_memory_allocated(device) - baseline

    if training:
        gpu_model.train()
        trainable = [p for p in gpu_model.parameters() if p.requires_grad]
        step_optimizer = None
        if optimizer == "adamw":
            step_optimizer = torch.optim.AdamW(trainable, lr=1e-6)
        elif optimizer == "sgd":
            step_optimizer = torch.optim.SGD(trainable, lr=1e-6, momentum=0.9)

        def step(measure: bool) -> None:
            before = torch.cuda.memory_allocated(device)
            output = gpu_model(x)
            if measure:
                torch.cuda.synchronize(device)
                measured["measured_forward_kept_bytes"] = torch.cuda.memory_allocated(device) - before
            loss = sum(o.float().mean() for o in tensors_in(output))
            loss.backward()
            if step_optimizer is not None:
                step_optimizer.step()
            gpu_model.zero_grad(set_to_none=True)

        step(measure=False)  # creates the optimizer state, as in any step after the first
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(measure=True)
        torch.cuda.synchronize(device)
        measured["measured_peak_training_bytes"] = torch.cuda.max_memory_allocated(device) - baseline
    return measured  # the GPU copy goes with this frame; the caller empties the cache


def memory_profile(
    model: MSCSANet,
    input_size: tuple[int, int] = (224, 224),
    batch_size: int = 1,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    training: bool = False,
    optimizer: str | None = "adamw",
    name: str | None = None,
) -> MemoryProfile:
    """Parameters, activations and (``training``) saved-for-backward bytes of every component of
    ``model`` at ``batch_size`` in ``dtype``, with whole-model peak estimates.

    The computed figures come from a forward pass of a copy of the model on the CPU (or on the meta
    device, for a model built there: see ``analysis.cost.meta_model``); the caller's model is left as it was. With a
    CUDA ``device`` the peaks are also measured there. ``optimizer`` ("adamw", "sgd" or None) sets the
    optimizer state of a training profile.

    Profile with gradient checkpointing off: inside a checkpointed block, checkpoint's own
    saved-tensor hooks replace these ones, so what the block keeps would not be seen.
    """
    height, width = check_inputs(input_size, batch_size, dtype)
    if optimizer not in OPTIMIZER_STATE_FACTORS:
        raise MemoryInputError(f"optimizer={optimizer!r} is unknown: choose one of {list(OPTIMIZER_STATE_FACTORS)}")
    measure_device = torch.device(device)
    if measure_device.type == "cuda":
        if not torch.cuda.is_available():
            raise MemoryInputError("no CUDA GPU is available on this machine: profile memory with device='cpu' "
                                   "(computed figures only)")
        if _is_meta(model):
            raise MemoryInputError("a model on the meta device has no weights to measure on CUDA: build it normally")
    elif measure_device.type != "cpu":
        raise MemoryInputError(f"device={str(device)!r}: memory is measured on 'cuda' only; 'cpu' computes it")

    working, compute_device = working_copy(model, dtype)
    working.train(training)
    components = model_components(working)
    named_parameters = list(working.named_parameters())
    parameter_counts = per_module_path(named_parameters, lambda p: p.numel())
    parameter_bytes = per_module_path(named_parameters, tensor_bytes)
    trainable_bytes = per_module_path(named_parameters, lambda p: tensor_bytes(p) if p.requires_grad else 0)
    buffer_bytes = sum(tensor_bytes(b) for b in working.buffers())
    excluded = {storage_key_and_bytes(t)[0] for t in (*working.parameters(), *working.buffers())}
    leaf_paths = {path for path, module in working.named_modules() if next(module.children(), None) is None}

    x = example_input(model, (height, width), batch_size, compute_device, dtype, random=True)
    with ModuleTracker(working) as tracker:
        recorder = _MemoryRecorder(tracker, leaf_paths, excluded)
        if training:
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(recorder.pack, recorder.unpack):
                output = working(x)
        else:
            with torch.no_grad():
                output = working(x)
    del output
    recorder.kept.clear()

    rows = []
    for component in components:
        outputs = _NAN if component.residual_of is not None else component_total(component, recorder.output_bytes)
        saved = component_total(component, recorder.saved_bytes) if training else _NAN
        rows.append(ComponentMemory(
            name=component.name,
            group=component.group,
            level=component.level,
            params=int(component_total(component, parameter_counts)),
            param_bytes=int(component_total(component, parameter_bytes)),
            trainable_param_bytes=int(component_total(component, trainable_bytes)),
            output_bytes=float(outputs),
            activation_bytes=int(component_total(component, recorder.activation_bytes)),
            saved_bytes=float(saved),
        ))

    total_param_bytes = parameter_bytes.get("", 0)
    total_trainable = trainable_bytes.get("", 0)
    largest_call_bytes, largest_call_module = recorder.largest_call
    peak_inference = total_param_bytes + buffer_bytes + largest_call_bytes
    if training:
        saved_total = float(recorder.saved_bytes.get("", 0))
        gradients = float(total_trainable)
        optimizer_state = float(OPTIMIZER_STATE_FACTORS[optimizer] * total_trainable)
        peak_training = peak_inference + gradients + optimizer_state + saved_total
    else:
        saved_total = gradients = optimizer_state = peak_training = _NAN
    totals = MemoryTotals(
        params=parameter_counts.get("", 0),
        param_bytes=total_param_bytes,
        buffer_bytes=buffer_bytes,
        trainable_param_bytes=total_trainable,
        output_bytes=recorder.output_bytes.get("", 0),
        activation_bytes=recorder.activation_bytes.get("", 0),
        largest_call_bytes=largest_call_bytes,
        largest_call_module=largest_call_module,
        saved_bytes=saved_total,
        gradient_bytes=gradients,
        optimizer_state_bytes=optimizer_state,
        peak_inference_bytes=float(peak_inference),
        peak_training_bytes=float(peak_training),
    )
    measured_on = None
    if measure_device.type == "cuda":
        index = measure_device.index if measure_device.index is not None else torch.cuda.current_device()
        measure_device = torch.device("cuda", index)
        measured = _measure_on_cuda(model, tuple(x.shape), dtype, measure_device,
                                    training, optimizer)
        torch.cuda.empty_cache()
        for key, value in measured.items():
            setattr(totals, key, float(value))
        measured_on = torch.cuda.get_device_name(measure_device)

    label = _model_label(model, name)
    metadata = run_metadata(
        model=label, input_size=f"{height}x{width}", batch=batch_size, dtype=dtype_name(dtype),
        mode="training" if training else "inference", optimizer=optimizer if training else None,
        computed_on=compute_device.type, measured_on=measured_on, units="MiB = 2**20 bytes",
        device_type=str(measure_device) if measured_on else "cpu", mscsa_config=model.config.to_dict(),
    )
    return MemoryProfile(
        model=label, input_size=(height, width), batch_size=batch_size, dtype=dtype_name(dtype), training=training,
        optimizer=optimizer if training else None, rows=rows, totals=totals, computed_on=compute_device.type,
        measured_on=measured_on, metadata=metadata,
    )
