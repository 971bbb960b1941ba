"""Per-component memory and memory traffic of a backbone+MSCSA model, in the manner of torchinfo.

The rows are ``components.model_components``: the same names, order and levels as the FLOPs profiler
(``profiler.profile_model``) and the latency benchmark (``bench.latency.component_latency``), so the
numbers here can stand beside FLOPs in the Profile table and beside time in the latency table.

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

**Memory traffic** (``traffic_profile``): per component, the bytes a forward pass moves and the
arithmetic intensity (FLOPs per byte, with the profiler's FLOPs for the same rows at the same batch).
Two views: *boundary* bytes (the component's module inputs read, outputs written and parameters
read; what a perfectly fused kernel would move, a lower bound), and *eager*
bytes (every aten operator's tensor inputs read plus outputs written, views moving nothing; what
unfused eager PyTorch moves when nothing stays in cache). Eager bytes are additive over operators, so
residual rows such as the attention matmuls have them too.

Units: memory in MiB (2**20 bytes), parameters in millions (1e6), FLOPs in G (1e9, multiply-adds as
in the profiler unless ``convention="2x"``).

A model built on the meta device (``meta_model``) runs the same pass without weights or arithmetic, in
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
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import pandas as pd
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mscsa_lab.analysis.components import Component, model_components
from mscsa_lab.analysis.profiler import CONVENTIONS, ProfileReport, convention_factor, profile_model
from mscsa_lab.io.export import ResultTable
from mscsa_lab.io.metadata import run_metadata
from mscsa_lab.models.mscsa_net import MSCSANet

__all__ = [
    "MIB",
    "OPTIMIZER_STATE_FACTORS",
    "ComponentMemory",
    "MemoryTotals",
    "MemoryProfile",
    "memory_profile",
    "ComponentTraffic",
    "TrafficProfile",
    "traffic_profile",
    "merge_with_profile",
    "merge_with_latency",
    "meta_model",
]

MIB = 2**20
# Bytes of optimizer state per byte of trainable parameters.
OPTIMIZER_STATE_FACTORS: dict[str | None, int] = {"adamw": 2, "sgd": 1, None: 0}
_OPTIMIZER_DESCRIPTIONS = {"adamw": "AdamW (two moments: 2x the trainable parameter bytes)",
                           "sgd": "SGD with momentum (one buffer: 1x the trainable parameter bytes)",
                           None: "no optimizer state"}
_NAN = float("nan")


# ---------------------------------------------------------------------------------------- helpers
def _storage_key_and_bytes(tensor: torch.Tensor) -> tuple[int, int]:
    """(identity of the tensor's storage, bytes of that storage). Views share their base's storage,
    so the key tells when two tensors hold the same memory. The key is the address of the storage
    object (``_cdata``) rather than ``data_ptr()``, because every meta-device storage has data_ptr 0."""
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse, nested or opaque tensors have no plain storage
        return id(tensor), tensor.numel() * tensor.element_size()
    return storage._cdata, storage.nbytes()


def _tensor_bytes(tensor: torch.Tensor) -> int:
    """Logical bytes of a tensor (its elements, not its whole storage)."""
    return tensor.numel() * tensor.element_size()


def _distinct_bytes(tensor: torch.Tensor) -> int:
    """Bytes of the distinct elements a kernel reads: a broadcast (stride-0) dimension is read once."""
    elements = 1
    for size, stride in zip(tensor.shape, tensor.stride()):
        if stride != 0:
            elements *= size
    return elements * tensor.element_size() if tensor.numel() else 0


def _tensors_in(value: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(value)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _per_module_path(named: Iterable[tuple[str, torch.Tensor]], value: Callable[[torch.Tensor], int]) -> dict[str, int]:
    """``value`` summed under every module path prefix ("" is the whole model), the way fvcore's
    ``parameter_count`` sums parameter counts, so residual rows can subtract children."""
    totals: dict[str, int] = defaultdict(int)
    for name, tensor in named:
        amount = value(tensor)
        parts = name.split(".")
        for depth in range(len(parts)):  # "", "a", "a.b", ... but not the tensor's own name
            totals[".".join(parts[:depth])] += amount
    return dict(totals)


def _component_sum(component: Component, per_path: Mapping[str, float]) -> float:
    """The profiler's rule (``profiler._cost``): a row sums its modules; a residual row is its parent
    minus its parent's child modules."""
    if component.residual_of is not None:
        return per_path.get(component.residual_of, 0) - sum(per_path.get(c, 0) for c in component.children)
    return sum(per_path.get(m, 0) for m in component.modules)


def _mib(num_bytes: float) -> float:
    return num_bytes / MIB


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _model_label(model: MSCSANet, name: str | None) -> str:
    return name or f"{model.backbone.name} + MSCSA"


def _in_chans(model: MSCSANet) -> int:
    return int(getattr(model, "in_chans", 3))


def _is_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def _working_copy(model: MSCSANet, dtype: torch.dtype) -> tuple[MSCSANet, torch.device]:
    """A copy in ``dtype`` on the CPU (or left on the meta device), so the caller's model keeps its
    weights, device, dtype, mode and BN statistics (a training pass updates them)."""
    device = torch.device("meta") if _is_meta(model) else torch.device("cpu")
    working = copy.deepcopy(model).to(device=device)
    return working.to(dtype=dtype), device


def _check_inputs(input_size: tuple[int, int], batch_size: int, dtype: torch.dtype) -> tuple[int, int]:
    height, width = (int(v) for v in input_size)
    if height < 1 or width < 1:
        raise ValueError(f"input_size must be two positive sizes, got {input_size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    return height, width


class _ModuleStack:
    """Which modules are running right now (outermost first), kept by forward pre/post hooks on every
    module, so that tensors saved and operators dispatched can be charged to the modules running them."""

    def __init__(self, model: nn.Module) -> None:
        self.paths: list[str] = []
        self.handles: list[Any] = []
        self.call_hooks: list[Callable[[str, tuple, dict, Any], None]] = []
        for path, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._enter(path)))
            self.handles.append(module.register_forward_hook(self._leave(path), with_kwargs=True))

    def _enter(self, path: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            self.paths.append(path)

        return hook

    def _leave(self, path: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            for call_hook in self.call_hooks:
                call_hook(path, args, kwargs, output)
            if self.paths and self.paths[-1] == path:
                self.paths.pop()

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


# ----------------------------------------------------------------------------------------- memory
@dataclass
class ComponentMemory:
    """One row. Bytes are at the profile's batch size and dtype; NaN where a figure is undefined
    (a residual row's activations) and ``saved_bytes`` is NaN for an inference profile."""

    name: str
    group: str
    level: int
    params: int
    param_bytes: int
    trainable_param_bytes: int
    output_bytes: float
    activation_bytes: int
    saved_bytes: float


@dataclass
class MemoryTotals:
    """Whole-model figures: ``computed`` ones always, ``measured_*`` only on CUDA (NaN otherwise)."""

    params: int
    param_bytes: int
    buffer_bytes: int
    trainable_param_bytes: int
    output_bytes: int  # the model's output
    activation_bytes: int  # outputs of every leaf module (torchinfo's forward pass size)
    largest_call_bytes: int  # the largest input+output of one module call
    largest_call_module: str
    saved_bytes: float  # everything autograd keeps (training), NaN for inference
    gradient_bytes: float
    optimizer_state_bytes: float
    peak_inference_bytes: float
    peak_training_bytes: float
    measured_peak_inference_bytes: float = _NAN
    measured_peak_training_bytes: float = _NAN
    measured_forward_kept_bytes: float = _NAN  # allocated during the training forward and still held after it


@dataclass
class MemoryProfile:
    model: str
    input_size: tuple[int, int]
    batch_size: int
    dtype: str
    training: bool
    optimizer: str | None
    rows: list[ComponentMemory]
    totals: MemoryTotals
    computed_on: str  # "cpu" or "meta"
    measured_on: str | None  # a CUDA device description, or None
    metadata: dict[str, Any] = field(default_factory=dict)

    def row(self, name: str) -> ComponentMemory:
        """The first row called ``name`` (names such as "Q projection" repeat in every CSA)."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no component named {name!r}; components: {[r.name for r in self.rows]}")

    def to_frame(self) -> pd.DataFrame:
        """One row per component (the profiler's rows) and a "total" row for the whole model. Training
        profiles add the saved-for-backward, gradient and optimizer-state columns."""
        records = []
        for row in self.rows:
            record = {
                "Component": row.name,
                "Level": row.level,
                "Group": row.group,
                "Params (M)": row.params / 1e6,
                "Param MiB": _mib(row.param_bytes),
                "Output MiB": _mib(row.output_bytes),
                "Activations MiB": _mib(row.activation_bytes),
            }
            if self.training:
                gradients = row.trainable_param_bytes
                optimizer = OPTIMIZER_STATE_FACTORS[self.optimizer] * row.trainable_param_bytes
                record.update({
                    "Saved for backward MiB": _mib(row.saved_bytes),
                    "Gradients MiB": _mib(gradients),
                    "Optimizer state MiB": _mib(optimizer),
                    "Training MiB": _mib(row.param_bytes + gradients + optimizer + row.saved_bytes),
                })
            records.append(record)
        totals = self.totals
        total = {
            "Component": "total",
            "Level": 0,
            "Group": "total",
            "Params (M)": totals.params / 1e6,
            "Param MiB": _mib(totals.param_bytes),
            "Output MiB": _mib(totals.output_bytes),
            "Activations MiB": _mib(totals.activation_bytes),
        }
        if self.training:
            total.update({
                "Saved for backward MiB": _mib(totals.saved_bytes),
                "Gradients MiB": _mib(totals.gradient_bytes),
                "Optimizer state MiB": _mib(totals.optimizer_state_bytes),
                "Training MiB": _mib(totals.param_bytes + totals.gradient_bytes + totals.optimizer_state_bytes
                                     + totals.saved_bytes),
            })
        records.append(total)
        return pd.DataFrame(records)

    def totals_frame(self) -> pd.DataFrame:
        """Whole-model figures, computed beside measured (measured only on CUDA; NaN otherwise)."""
        totals = self.totals
        how_measured = f"max_memory_allocated on {self.measured_on}" if self.measured_on else "not measured (CPU)"
        rows = [
            ("parameters", totals.param_bytes, _NAN, "computed"),
            ("buffers (BN statistics...)", totals.buffer_bytes, _NAN, "computed"),
            ("activations (all leaf-module outputs)", totals.activation_bytes, _NAN, "computed"),
            (f"largest module call (in+out): {totals.largest_call_module or 'model'}", totals.largest_call_bytes,
             _NAN, "computed"),
            ("peak, inference", totals.peak_inference_bytes, totals.measured_peak_inference_bytes, how_measured),
        ]
        if self.training:
            rows += [
                ("saved for backward", totals.saved_bytes, totals.measured_forward_kept_bytes,
                 "measured: allocated by the forward pass and held after it (incl. the output)"
                 if self.measured_on else "computed"),
                ("gradients", totals.gradient_bytes, _NAN, "computed"),
                ("optimizer state", totals.optimizer_state_bytes, _NAN, "computed"),
                ("peak, training step", totals.peak_training_bytes, totals.measured_peak_training_bytes, how_measured),
            ]
        return pd.DataFrame(
            [{"Quantity": q, "Computed MiB": _mib(c), "Measured MiB": _mib(m), "Source": s} for q, c, m, s in rows]
        )

    def notes(self) -> list[str]:
        where = ("meta device (shapes only; fused attention counted as the math path)"
                 if self.computed_on == "meta" else "CPU")
        notes = [
            f"MiB = 2**20 bytes; Params (M) = 1e6 parameters. Computed on the {where} from one forward pass "
            f"at batch {self.batch_size} in {self.dtype}.",
            "Output: bytes of the outputs of the component's modules (NaN for residual rows, which have no "
            "modules of their own). Activations: bytes of the outputs of every leaf module inside the "
            "component (torchinfo's forward pass size); residual rows are parent minus children.",
        ]
        if self.training:
            notes.append(
                "Saved for backward: exactly the tensors autograd keeps (saved_tensors_hooks), each storage "
                "once and charged to the modules running when it was first saved; parameters and buffers "
                f"excluded. Optimizer state: {_OPTIMIZER_DESCRIPTIONS[self.optimizer]}."
            )
        peak = self.totals
        notes.append(
            f"Peak inference (computed) {_mib(peak.peak_inference_bytes):.1f} MiB = parameters + buffers + the "
            "largest input+output of one module call (a lower bound)."
            + (f" Peak training step (computed) {_mib(peak.peak_training_bytes):.1f} MiB = parameters + buffers "
               "+ gradients + optimizer state + saved for backward + that largest call (an upper-side figure)."
               if self.training else "")
        )
        if self.measured_on:
            notes.append(f"Measured on {self.measured_on} with torch.cuda.max_memory_allocated: see the totals table.")
        else:
            notes.append("Nothing measured: measured figures need a CUDA device (device='cuda').")
        return notes

    def to_table(self) -> ResultTable:
        mode = f"training, batch {self.batch_size}" if self.training else f"inference, batch {self.batch_size}"
        return ResultTable(f"Per-component memory ({mode}): {self.model}", self.to_frame(), self.metadata,
                           self.notes())

    def totals_table(self) -> ResultTable:
        mode = "training" if self.training else "inference"
        return ResultTable(f"Memory totals ({mode}, batch {self.batch_size}): {self.model}", self.totals_frame(),
                           self.metadata, self.notes())


class _MemoryRecorder:
    """Outputs of every module call, the largest input+output of one call, and (when installed as
    saved-tensors hooks) every storage autograd saves, charged to the modules running at the time."""

    def __init__(self, stack: _ModuleStack, leaf_paths: set[str], excluded_storages: set[int]) -> None:
        self.stack = stack
        self.leaf_paths = leaf_paths
        self.excluded = excluded_storages
        self.output_bytes: dict[str, int] = defaultdict(int)
        self.activation_bytes: dict[str, int] = defaultdict(int)
        self.saved_bytes: dict[str, int] = defaultdict(int)
        self.largest_call = (0, "")
        self.seen_saved: set[int] = set()
        # Saved tensors are held until the pass is over, so no storage address is reused meanwhile.
        self.kept: list[torch.Tensor] = []
        stack.call_hooks.append(self.on_call)

    def on_call(self, path: str, args: tuple, kwargs: dict, output: Any) -> None:
        outputs = _tensors_in(output)
        produced = sum(_tensor_bytes(t) for t in outputs)
        self.output_bytes[path] += produced
        if path in self.leaf_paths:
            for running in self.stack.paths:  # the leaf itself and every module around it
                self.activation_bytes[running] += produced
        live: dict[int, int] = {}
        for tensor in _tensors_in((args, kwargs)) + outputs:
            key, nbytes = _storage_key_and_bytes(tensor)
            if key not in self.excluded:
                live[key] = nbytes
        call_bytes = sum(live.values())
        if call_bytes > self.largest_call[0]:
            self.largest_call = (call_bytes, path)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key, nbytes = _storage_key_and_bytes(tensor)
        if key not in self.excluded and key not in self.seen_saved:
            self.seen_saved.add(key)
            self.kept.append(tensor)
            for path in self.stack.paths:
                self.saved_bytes[path] += nbytes
            if not self.stack.paths:  # saved outside every module (cannot happen inside model(x))
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
            loss = sum(o.float().mean() for o in _tensors_in(output))
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
    device, for a model built there: see ``meta_model``); the caller's model is left as it was. With a
    CUDA ``device`` the peaks are also measured there. ``optimizer`` ("adamw", "sgd" or None) sets the
    optimizer state of a training profile.

    Profile with gradient checkpointing off: inside a checkpointed block, checkpoint's own
    saved-tensor hooks replace these ones, so what the block keeps would not be seen.
    """
    height, width = _check_inputs(input_size, batch_size, dtype)
    if optimizer not in OPTIMIZER_STATE_FACTORS:
        raise ValueError(f"optimizer={optimizer!r} is unknown: choose one of {list(OPTIMIZER_STATE_FACTORS)}")
    measure_device = torch.device(device)
    if measure_device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA GPU is available on this machine: profile memory with device='cpu' "
                               "(computed figures only)")
        if _is_meta(model):
            raise ValueError("a model on the meta device has no weights to measure on CUDA: build it normally")
    elif measure_device.type != "cpu":
        raise ValueError(f"device={str(device)!r}: memory is measured on 'cuda' only; 'cpu' computes it")

    working, compute_device = _working_copy(model, dtype)
    working.train(training)
    components = model_components(working)
    named_parameters = list(working.named_parameters())
    parameter_counts = _per_module_path(named_parameters, lambda p: p.numel())
    parameter_bytes = _per_module_path(named_parameters, _tensor_bytes)
    trainable_bytes = _per_module_path(named_parameters, lambda p: _tensor_bytes(p) if p.requires_grad else 0)
    buffer_bytes = sum(_tensor_bytes(b) for b in working.buffers())
    excluded = {_storage_key_and_bytes(t)[0] for t in (*working.parameters(), *working.buffers())}
    leaf_paths = {path for path, module in working.named_modules() if next(module.children(), None) is None}

    stack = _ModuleStack(working)
    recorder = _MemoryRecorder(stack, leaf_paths, excluded)
    x = torch.randn(batch_size, _in_chans(model), height, width, device=compute_device, dtype=dtype)
    try:
        if training:
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(recorder.pack, recorder.unpack):
                output = working(x)
        else:
            with torch.no_grad():
                output = working(x)
    finally:
        stack.remove()
    del output
    recorder.kept.clear()

    rows = []
    for component in components:
        outputs = _NAN if component.residual_of is not None else _component_sum(component, recorder.output_bytes)
        saved = _component_sum(component, recorder.saved_bytes) if training else _NAN
        rows.append(ComponentMemory(
            name=component.name,
            group=component.group,
            level=component.level,
            params=int(_component_sum(component, parameter_counts)),
            param_bytes=int(_component_sum(component, parameter_bytes)),
            trainable_param_bytes=int(_component_sum(component, trainable_bytes)),
            output_bytes=float(outputs),
            activation_bytes=int(_component_sum(component, recorder.activation_bytes)),
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
        measured = _measure_on_cuda(model, (batch_size, _in_chans(model), height, width), dtype, measure_device,
                                    training, optimizer)
        torch.cuda.empty_cache()
        for key, value in measured.items():
            setattr(totals, key, float(value))
        measured_on = torch.cuda.get_device_name(measure_device)

    label = _model_label(model, name)
    metadata = run_metadata(
        model=label, input_size=f"{height}x{width}", batch=batch_size, dtype=_dtype_name(dtype),
        mode="training" if training else "inference", optimizer=optimizer if training else None,
        computed_on=compute_device.type, measured_on=measured_on, units="MiB = 2**20 bytes",
        device_type=str(measure_device) if measured_on else "cpu", mscsa_config=model.config.to_dict(),
    )
    return MemoryProfile(
        model=label, input_size=(height, width), batch_size=batch_size, dtype=_dtype_name(dtype), training=training,
        optimizer=optimizer if training else None, rows=rows, totals=totals, computed_on=compute_device.type,
        measured_on=measured_on, metadata=metadata,
    )


def meta_model(*args: Any, **kwargs: Any) -> MSCSANet:
    """``registry.create_mscsa_model(*args, **kwargs)`` built on the meta device: the modules and their
    shapes without weights, so ``memory_profile`` and ``traffic_profile`` can run any size of model and
    batch in a moment without memory. Saved-for-backward bytes can differ from the CPU's where a kernel
    is chosen by device (fused attention; see the module notes). Pretrained weights cannot be loaded."""
    from mscsa_lab.registry import create_mscsa_model

    with torch.device("meta"):
        return create_mscsa_model(*args, **kwargs).eval()


# ---------------------------------------------------------------------------------------- traffic
class _OperatorTraffic(TorchDispatchMode):
    """Bytes every aten operator reads (tensor inputs) and writes (outputs), charged to the modules
    running it. Views and other aliasing operators move nothing; an in-place operator writes its input."""

    def __init__(self, stack: _ModuleStack) -> None:
        super().__init__()
        self.stack = stack
        self.bytes: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not func.is_view:
            moved = self._bytes_moved(func, args, kwargs, result)
            for path in self.stack.paths:
                self.bytes[path] += moved
        return result

    @staticmethod
    def _bytes_moved(func: Any, args: tuple, kwargs: dict, result: Any) -> int:
        inputs = list({id(t): t for t in _tensors_in((args, kwargs))}.values())
        outputs = _tensors_in(result)
        input_storages = {_storage_key_and_bytes(t)[0] for t in inputs}
        mutates = func._schema.is_mutable
        aliases = [_storage_key_and_bytes(t)[0] in input_storages for t in outputs]
        if outputs and all(aliases) and not mutates:  # _unsafe_view, alias, detach...: no data moves
            return 0
        read = sum(_distinct_bytes(t) for t in inputs)
        written = sum(_tensor_bytes(t) for t, alias in zip(outputs, aliases) if mutates or not alias)
        return read + written


@dataclass
class ComponentTraffic:
    name: str
    group: str
    level: int
    flops: int  # multiply-adds, from the profiler at the same batch
    boundary_bytes: float  # module inputs + outputs + parameters; NaN for residual rows
    eager_bytes: float  # every operator's inputs + outputs


@dataclass
class TrafficProfile:
    model: str
    input_size: tuple[int, int]
    batch_size: int
    dtype: str
    rows: list[ComponentTraffic]
    total_flops: int
    total_boundary_bytes: int  # the model as one kernel: input image + output + parameters
    total_eager_bytes: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_frame(self, convention: str = "mac") -> pd.DataFrame:
        factor = convention_factor(convention)

        def intensity(flops: float, num_bytes: float) -> float:
            return flops * factor / num_bytes if num_bytes and num_bytes > 0 else _NAN

        records = [
            (row.name, row.level, row.group, row.flops, row.boundary_bytes, row.eager_bytes) for row in self.rows
        ] + [("total", 0, "total", self.total_flops, self.total_boundary_bytes, self.total_eager_bytes)]
        return pd.DataFrame([
            {
                "Component": component,
                "Level": level,
                "Group": group,
                "FLOPs (G)": flops * factor / 1e9,
                "Bytes moved MiB": _mib(boundary),
                "Intensity (FLOPs/byte)": intensity(flops, boundary),
                "Eager bytes moved MiB": _mib(eager),
                "Eager intensity (FLOPs/byte)": intensity(flops, eager),
            }
            for component, level, group, flops, boundary, eager in records
        ])

    def to_table(self, convention: str = "mac") -> ResultTable:
        notes = [
            f"FLOPs convention: {CONVENTIONS[convention]}; MiB = 2**20 bytes; one forward pass at batch "
            f"{self.batch_size} in {self.dtype}.",
            "Bytes moved: the component's module inputs read + outputs written + parameters read (a perfectly "
            "fused kernel's traffic, a lower bound); NaN for residual rows, which have no module boundary.",
            "Eager bytes moved: every operator's tensor inputs read + outputs written (views move nothing), "
            "what unfused eager PyTorch moves with no cache reuse. Intensity = FLOPs / bytes.",
        ]
        return ResultTable(f"Per-component memory traffic: {self.model}", self.to_frame(convention),
                           {**self.metadata, "flops_convention": convention}, notes)


def traffic_profile(
    model: MSCSANet,
    input_size: tuple[int, int] = (224, 224),
    batch_size: int = 1,
    dtype: torch.dtype = torch.float32,
    name: str | None = None,
    flops_report: ProfileReport | None = None,
) -> TrafficProfile:
    """Bytes moved by one inference forward pass per component, beside the profiler's FLOPs for the
    same rows at the same batch, for arithmetic intensity (FLOPs per byte).

    ``flops_report``: the ``profile_model`` report of this model at this input size and batch, when
    the caller has it already (the Profile tab does), to skip a second FLOPs trace."""
    height, width = _check_inputs(input_size, batch_size, dtype)
    if flops_report is None:
        report = profile_model(model, (height, width), batch=batch_size, name=name)
    elif tuple(flops_report.input_size) != (height, width) or flops_report.batch != batch_size:
        raise ValueError(f"flops_report is for {flops_report.input_size} at batch {flops_report.batch}, not "
                         f"{(height, width)} at batch {batch_size}: FLOPs must match the traffic's pass")
    else:
        report = flops_report
    working, compute_device = _working_copy(model, dtype)
    working.eval()
    components = model_components(working)
    parameter_bytes = _per_module_path(list(working.named_parameters()), _tensor_bytes)

    stack = _ModuleStack(working)
    boundary: dict[str, int] = defaultdict(int)

    def on_call(path: str, args: tuple, kwargs: dict, output: Any) -> None:
        inputs = {id(t): t for t in _tensors_in((args, kwargs))}.values()
        boundary[path] += (sum(_distinct_bytes(t) for t in inputs) + sum(_tensor_bytes(t) for t in _tensors_in(output))
                           + parameter_bytes.get(path, 0))

    stack.call_hooks.append(on_call)
    operators = _OperatorTraffic(stack)
    x = torch.randn(batch_size, _in_chans(model), height, width, device=compute_device, dtype=dtype)
    try:
        with torch.no_grad(), operators:
            working(x)
    finally:
        stack.remove()

    # profile_model's rows follow model_components one to one, plus an "other" row when fvcore counts
    # operators outside every named part (the latency benchmark relies on the same order).
    rows = []
    for component, cost in zip(components, report.rows):
        rows.append(ComponentTraffic(
            name=cost.name, group=cost.group, level=cost.level, flops=cost.flops,
            boundary_bytes=_NAN if component.residual_of is not None else float(_component_sum(component, boundary)),
            eager_bytes=float(_component_sum(component, operators.bytes)),
        ))
    for cost in report.rows[len(components):]:
        level0 = sum(r.eager_bytes for r in rows if r.level == 0)
        rows.append(ComponentTraffic(cost.name, cost.group, cost.level, cost.flops, _NAN,
                                     float(operators.bytes.get("", 0) - level0)))
    label = report.model
    metadata = run_metadata(model=label, input_size=f"{height}x{width}", batch=batch_size,
                            dtype=_dtype_name(dtype), computed_on=compute_device.type, units="MiB = 2**20 bytes",
                            mscsa_config=model.config.to_dict())
    return TrafficProfile(
        model=label, input_size=(height, width), batch_size=batch_size, dtype=_dtype_name(dtype), rows=rows,
        total_flops=report.total_flops, total_boundary_bytes=boundary.get("", 0),
        total_eager_bytes=operators.bytes.get("", 0), metadata=metadata,
    )


# ---------------------------------------------------------------------------------------- joining
_KEY = ("Component", "Level")


def _with_occurrence(frame: pd.DataFrame) -> pd.DataFrame:
    """Component names repeat ("Q projection" in every CSA), so rows are matched by name, level and
    how many rows of that name came before: both frames list the components in model_components' order."""
    frame = frame.copy()
    frame["_occurrence"] = frame.groupby(list(_KEY)).cumcount()
    return frame


def _join(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
    for frame, label in ((left, "left"), (right, "right")):
        missing = [c for c in _KEY if c not in frame.columns]
        if missing:
            raise ValueError(f"the {label} frame has no {missing} column(s): pass the frames of the tables")
    extra = [c for c in right.columns if c not in left.columns]
    joined = _with_occurrence(left).merge(_with_occurrence(right)[[*_KEY, "_occurrence", *extra]],
                                          on=[*_KEY, "_occurrence"], how="left", validate="one_to_one")
    return joined.drop(columns="_occurrence")


def merge_with_profile(profile_frame: pd.DataFrame, memory_frame: pd.DataFrame) -> pd.DataFrame:
    """The profiler's frame (``ProfileReport.to_frame``) with the memory columns beside FLOPs, row for
    row; the profiler's rows and order are kept."""
    return _join(profile_frame, memory_frame)


def merge_with_latency(latency_frame: pd.DataFrame, traffic_frame: pd.DataFrame) -> pd.DataFrame:
    """The latency table's frame (``LatencyReport.frame``) with bytes moved and arithmetic intensity
    beside the time of each component, and the bandwidth the eager traffic implies (eager bytes / time).
    Both must come from the same model, input size and batch; the latency rows and order are kept (its
    glue row gets no traffic figures)."""
    joined = _join(latency_frame, traffic_frame)
    if "Time (ms)" in joined.columns and "Eager bytes moved MiB" in joined.columns:
        seconds = joined["Time (ms)"] / 1000.0
        joined["Eager bandwidth (GiB/s)"] = (joined["Eager bytes moved MiB"] / 1024.0 / seconds).where(seconds > 0)
    return joined
