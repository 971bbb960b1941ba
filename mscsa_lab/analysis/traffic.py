"""Per-component memory traffic of a backbone+MSCSA model: bytes moved and arithmetic intensity.

**Memory traffic** (``traffic_profile``): per component, the bytes a forward pass moves and the
arithmetic intensity (FLOPs per byte, with the profiler's FLOPs for the same rows at the same batch).
Two views: *boundary* bytes (the component's module inputs read, outputs written and parameters
read; what a perfectly fused kernel would move, a lower bound), and *eager*
bytes (every aten operator's tensor inputs read plus outputs written, views moving nothing; what
unfused eager PyTorch moves when nothing stays in cache). Eager bytes are additive over operators, so
residual rows such as the attention matmuls have them too.

The same rows as the profiler (``components.model_components``), the same engine as memory and latency
(``analysis.tracker.ModuleTracker``), the same summing rule (``components.component_total``).
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mscsa_lab.analysis.components import component_total, model_components
from mscsa_lab.analysis.memory import MemoryInputError, check_inputs, dtype_name, working_copy
from mscsa_lab.analysis.memory_report import _NAN, _mib
from mscsa_lab.analysis.profiler import CONVENTIONS, ProfileReport, convention_factor, profile_model
from mscsa_lab.analysis.tracker import (ModuleTracker, distinct_bytes, example_input, per_module_path,
                                        storage_key_and_bytes, tensor_bytes, tensors_in)
from mscsa_lab.io.export import ResultTable
from mscsa_lab.io.metadata import run_metadata
from mscsa_lab.models.mscsa_net import MSCSANet

__all__ = ["ComponentTraffic", "TrafficProfile", "traffic_profile"]


class _OperatorTraffic(TorchDispatchMode):
    """Bytes every aten operator reads (tensor inputs) and writes (outputs), charged to the modules
    running it. Views and other aliasing operators move nothing; an in-place operator writes its input."""

    def __init__(self, tracker: ModuleTracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.bytes: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not func.is_view:
            moved = self._bytes_moved(func, args, kwargs, result)
            for path in self.tracker.running:
                self.bytes[path] += moved
        return result

    @staticmethod
    def _bytes_moved(func: Any, args: tuple, kwargs: dict, result: Any) -> int:
        inputs = list({id(t): t for t in tensors_in((args, kwargs))}.values())
        outputs = tensors_in(result)
        input_storages = {storage_key_and_bytes(t)[0] for t in inputs}
        mutates = func._schema.is_mutable
        aliases = [storage_key_and_bytes(t)[0] in input_storages for t in outputs]
        if outputs and all(aliases) and not mutates:  # _unsafe_view, alias, detach...: no data moves
            return 0
        read = sum(distinct_bytes(t) for t in inputs)
        written = sum(tensor_bytes(t) for t, alias in zip(outputs, aliases) if mutates or not alias)
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


def _at_batch(report: ProfileReport, batch: int) -> ProfileReport:
    """The same report at another batch: every counted operator's FLOPs are proportional to the batch."""
    if report.batch == batch:
        return report
    scale = lambda flops: flops * batch // report.batch  # noqa: E731 - exact: counts are multiples of the batch
    return dataclasses.replace(report, batch=batch, total_flops=scale(report.total_flops),
                               rows=[dataclasses.replace(row, flops=scale(row.flops)) for row in report.rows])


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

    ``flops_report``: the ``profile_model`` report of this model at this input size (any batch: FLOPs
    are proportional to it), when the caller has it already, to skip a second FLOPs trace."""
    height, width = check_inputs(input_size, batch_size, dtype)
    if flops_report is None:
        report = profile_model(model, (height, width), batch=batch_size, name=name)
    elif tuple(flops_report.input_size) != (height, width):
        raise MemoryInputError(f"flops_report is for {flops_report.input_size}, not {(height, width)}: FLOPs must "
                               "match the traffic's pass")
    else:
        report = _at_batch(flops_report, batch_size)
    working, compute_device = working_copy(model, dtype)
    working.eval()
    components = model_components(working)
    parameter_bytes = per_module_path(list(working.named_parameters()), tensor_bytes)

    boundary: dict[str, int] = defaultdict(int)

    def on_call(path: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        inputs = {id(t): t for t in tensors_in((args, kwargs))}.values()
        boundary[path] += (sum(distinct_bytes(t) for t in inputs) + sum(tensor_bytes(t) for t in tensors_in(output))
                           + parameter_bytes.get(path, 0))

    x = example_input(model, (height, width), batch_size, compute_device, dtype, random=True)
    with ModuleTracker(working) as tracker:
        tracker.on_leave.append(on_call)
        operators = _OperatorTraffic(tracker)
        with torch.no_grad(), operators:
            working(x)

    # profile_model's rows follow model_components one to one, plus an "other" row when fvcore counts
    # operators outside every named part (the latency benchmark relies on the same order).
    rows = []
    for component, cost in zip(components, report.rows):
        rows.append(ComponentTraffic(
            name=cost.name, group=cost.group, level=cost.level, flops=cost.flops,
            boundary_bytes=_NAN if component.residual_of is not None else float(component_total(component, boundary)),
            eager_bytes=float(component_total(component, operators.bytes)),
        ))
    for cost in report.rows[len(components):]:
        level0 = sum(r.eager_bytes for r in rows if r.level == 0)
        rows.append(ComponentTraffic(cost.name, cost.group, cost.level, cost.flops, _NAN,
                                     float(operators.bytes.get("", 0) - level0)))
    label = report.model
    metadata = run_metadata(model=label, input_size=f"{height}x{width}", batch=batch_size,
                            dtype=dtype_name(dtype), computed_on=compute_device.type, units="MiB = 2**20 bytes",
                            mscsa_config=model.config.to_dict())
    return TrafficProfile(
        model=label, input_size=(height, width), batch_size=batch_size, dtype=dtype_name(dtype), rows=rows,
        total_flops=report.total_flops, total_boundary_bytes=boundary.get("", 0),
        total_eager_bytes=operators.bytes.get("", 0), metadata=metadata,
    )
