"""A built model's architecture as tables: stages, key/value scales, parameters (the Build tab's view)."""
from __future__ import annotations


import pandas as pd

from mscsa_lab.analysis.observe import ModelObservation
from mscsa_lab.models.mscsa_net import MSCSANet
from mscsa_lab.registry import parse_input_size

__all__ = ["architecture_tables"]


def architecture_tables(model: MSCSANet, input_size: tuple[int, int] = (224, 224),
                        observation: ModelObservation | None = None) -> dict[str, pd.DataFrame]:
    """Stages (stride, widths, map sizes), K/V scales (grid, tokens) and parameter counts. With the
    ``observation`` of a forward pass at this size (``analysis.observe``) the model is not run again."""
    size = parse_input_size(*input_size)
    summary = model.summary(size, stage_sizes=observation.stage_sizes if observation is not None else None)
    stages = pd.DataFrame(
        [
            {
                "stage": index + 1,
                "stride": stage["stride"],
                "channels": stage["channels"],
                "MSCSA channels": stage["squeezed_channels"],
                "map size": "x".join(map(str, stage["map_size"])),
            }
            for index, stage in enumerate(summary["stages"])
        ]
    )
    scales = pd.DataFrame(
        [
            {"scale": f"X{index}", "grid": "x".join(map(str, grid)), "tokens": tokens}
            for index, (grid, tokens) in enumerate(zip(summary["scale_grids"], summary["tokens_per_scale"]))
        ]
    )
    params = pd.DataFrame(
        [{"part": part, "parameters": count} for part, count in summary["params"].items() if count or part == "total"]
    )
    return {"stages": stages, "scales": scales, "params": params, "summary": summary}
