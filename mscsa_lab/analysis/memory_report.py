"""The tables of a memory profile: per-component rows, whole-model totals (computed beside measured) and
their notes. ``analysis.memory.memory_profile`` fills them; this module only presents them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mscsa_lab.io.export import ResultTable

__all__ = ["MIB", "OPTIMIZER_STATE_FACTORS", "ComponentMemory", "MemoryTotals", "MemoryProfile"]

MIB = 2**20
# Bytes of optimizer state per byte of trainable parameters.
OPTIMIZER_STATE_FACTORS: dict[str | None, int] = {"adamw": 2, "sgd": 1, None: 0}
_OPTIMIZER_DESCRIPTIONS = {"adamw": "AdamW (two moments: 2x the trainable parameter bytes)",
                           "sgd": "SGD with momentum (one buffer: 1x the trainable parameter bytes)",
                           None: "no optimizer state"}
_NAN = float("nan")


def _mib(num_bytes: float) -> float:
    return num_bytes / MIB


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
