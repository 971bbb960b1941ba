"""Build: the model a spec describes, its architecture tables and its diagram, from one forward pass."""
from __future__ import annotations

import pandas as pd

from mscsa_lab.io.export import ResultTable
from mscsa_lab.io.metadata import run_metadata
from mscsa_lab.io.numbers import human_count
from mscsa_lab.workflows.limits import ResourceLimits, guard
from mscsa_lab.workflows.result import ActionResult
from mscsa_lab.workflows.spec import ModelSpec
from mscsa_lab.workflows.store import ModelStore, read_model

__all__ = ["build_action", "weights_note"]


def weights_note(spec: ModelSpec, checkpoint: str | None = None) -> str:
    """Which weights this model has, said plainly, and how to get better ones."""
    if checkpoint:
        return f"Weights: your checkpoint {checkpoint}."
    if spec.pretrained_file:
        return (f"Weights: the backbone's from {spec.pretrained_file}; MSCSA and its head are random until trained "
                "(Train tab or `mscsa-lab train --mode mscsa-only`).")
    if spec.pretrained:
        return ("Weights: the backbone's pretrained timm weights; MSCSA and its head are random until trained "
                "(Train tab or `mscsa-lab train --mode mscsa-only`).")
    return ("Weights: random initialisation: maps show the initialisation, not learned attention (class-targeted "
            "maps are blank: MSCSA's residual branches start at zero). Train the model, start from a pretrained "
            "backbone, or load a checkpoint.")


def build_action(spec: ModelSpec, *, store: ModelStore | None = None, limits: ResourceLimits | None = None
                 ) -> ActionResult:
    """Cost the request, build the model (or take the store's), and describe it: stages, key/value scales,
    parameters and a diagram, all read from the built model and one observed forward pass."""
    from mscsa_lab.analysis.architecture import architecture_tables
    from mscsa_lab.analysis.diagram import model_diagram
    from mscsa_lab.analysis.observe import observe_model

    guard(spec, limits, copies=1)  # the stored model is read, not copied
    with read_model(spec, store) as model:
        observation = observe_model(model, spec.input_size)
        tables = architecture_tables(model, spec.input_size, observation)
        diagram = model_diagram(model, spec.input_size, observation)
    summary = tables["summary"]
    height, width = spec.input_size
    title = f"{spec.label} + MSCSA ({spec.task}, {height}x{width})"
    text = (f"**{spec.label} + MSCSA** ({summary['task']}), input {height}x{width}: multi-stage map "
            f"{summary['mscsa_dim']} channels on a {'x'.join(map(str, summary['mscsa_grid']))} grid, "
            f"{sum(summary['tokens_per_scale'])} key/value tokens over {len(summary['tokens_per_scale'])} scales "
            f"({', '.join(f'X{i} {t}' for i, t in enumerate(summary['tokens_per_scale']))}); "
            f"{human_count(summary['params']['total'])} parameters.")
    metadata = run_metadata(**spec.to_dict())
    params = tables["params"].copy()
    params["parameters (readable)"] = params["parameters"].map(human_count)

    def table(name: str, frame: pd.DataFrame) -> ResultTable:
        return ResultTable(f"{name}: {title}", frame, metadata)

    return ActionResult(
        title=title,
        table=table("Stages", tables["stages"]),
        tables={"scales": table("Key/value scales", tables["scales"]), "params": table("Parameters", params)},
        figures={"diagram": diagram},
        summary=text,
        notes=[weights_note(spec)],
        data={"summary": summary},
    )
