"""A trained run's ``model.json``, checked before anything uses it.

The runs folder is read by the app at start-up and on every page load, and by ``load_trained``; one
malformed file there (``"metrics": [1]``, ``"classes": 5``, JSON nested thousands of levels, a
288 MB file) must cost that run its place in the list, never the app its start. ``read_run_metadata``
reads the file through the guarded reader (size cap first, regular file inside the run folder) and
``validate_run_metadata`` checks every field the project uses, returning the data or a
``RunMetadataError`` that names the file and the field.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from mscsa_lab.io.checkpoints import CheckpointError
from mscsa_lab.io.guarded import read_json, resolve_inside, shown_name
from mscsa_lab.io.schema import (Field, anything, boolean, check, integer, mapping, number, one_of, sequence, table,
                                 text)

__all__ = ["RunMetadataError", "MAX_RUN_METADATA_BYTES", "METADATA_NAME", "MAX_CLASSES", "run_metadata_schema",
           "validate_run_metadata", "read_run_metadata"]

METADATA_NAME = "model.json"
MAX_RUN_METADATA_BYTES = 8 * 1024**2  # ImageNet-1k's file is about 60 kB; 21k classes about 1.5 MB
MAX_CLASSES = 100_000
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "random", "lanczos", "box", "hamming")


class RunMetadataError(CheckpointError):
    """A run whose ``model.json`` is missing, too large or malformed; the message names the field."""


@functools.cache
def run_metadata_schema() -> Field:
    """The fields of ``model.json`` (written by ``mscsa_lab.train`` and ``scripts/make_demo_model.py``).
    Unknown top-level keys are kept (later versions may add some); free-form parts are depth-limited."""
    from mscsa_lab.io.images import FIT_MODES
    from mscsa_lab.models.mscsa_net import TASKS
    from mscsa_lab.registry import MAX_SIDE, MIN_SIDE

    setting = one_of(number(), text(length=(0, 200)), boolean(), nullable=True, what="a number, a string or true/false")
    score = number(nullable=True)
    return table({
        "format": text(length=(0, 100)),
        "weights": text(length=(1, 255)),
        "weights_kind": text(length=(0, 32)),
        "profile": text(length=(0, 200), nullable=True),
        "backbone": text(required=True, length=(1, 200)),
        "backbone_kwargs": mapping(anything(), length=(0, 64), nullable=True),
        "mscsa": mapping(setting, length=(0, 64), required=True, what="a table of MSCSA settings"),
        "task": text(choices=TASKS),
        "num_classes": integer(1, MAX_CLASSES, required=True),
        "classes": sequence(text(length=(0, 1000)), length=(1, MAX_CLASSES), required=True,
                            what="a list of class names (strings)"),
        "input_size": sequence(integer(MIN_SIDE, MAX_SIDE), length=(2, 2), required=True,
                               what="a list [height, width] of whole numbers"),
        "preprocessing": table({
            "mean": sequence(number(), length=(3, 3), required=True, what="a list of 3 numbers"),
            "std": sequence(number(low=0, open_low=True), length=(3, 3), required=True,
                            what="a list of 3 positive numbers"),
            "interpolation": text(choices=INTERPOLATIONS, nullable=True),
            "crop_pct": number(low=0, high=4, open_low=True, nullable=True),
            "crop_mode": text(length=(0, 32), nullable=True),
            "fit": text(choices=FIT_MODES),
        }, required=True),
        "metrics": mapping(one_of(score, mapping(score, what="a table of numbers"), nullable=True,
                                  what="a number or a table of numbers"), nullable=True,
                           what="a table of numbers"),
        "training": mapping(anything(), nullable=True),
        "parameters": integer(0, 10**13),
        "metadata": mapping(anything(), nullable=True),
        "command": text(length=(0, 100_000)),
    }, what="a JSON object (a table of fields)")


def validate_run_metadata(data: Any, where: str = METADATA_NAME) -> dict[str, Any]:
    """``data`` (a parsed ``model.json``) when every field the project uses has the right type and
    range, else ``RunMetadataError`` starting with ``where``. Also checks that the classes match
    ``num_classes`` and that ``mscsa`` is a valid MSCSA configuration."""
    from mscsa_lab.models.config import ConfigError, MSCSAConfig

    meta = check(data, run_metadata_schema(), where, RunMetadataError)
    if len(meta["classes"]) != meta["num_classes"]:
        raise RunMetadataError(f"{where}: 'classes' has {len(meta['classes'])} names but 'num_classes' is "
                               f"{meta['num_classes']}: the file was edited or damaged")
    try:
        MSCSAConfig.from_dict(dict(meta["mscsa"]))
    except (ConfigError, TypeError) as error:
        raise RunMetadataError(f"{where}: 'mscsa': {str(error)[:400]}") from None
    if "weights" in meta and Path(meta["weights"]).name != meta["weights"]:
        raise RunMetadataError(f"{where}: 'weights' must be a file name inside the run folder, got "
                               f"{shown_name(meta['weights'], 80)}")
    return meta


def read_run_metadata(folder: str | os.PathLike, root: str | os.PathLike | None = None,
                      max_bytes: int = MAX_RUN_METADATA_BYTES) -> dict[str, Any]:
    """The validated ``model.json`` of the run folder ``folder`` (which, with ``root``, must resolve
    inside ``root``). The file must be a regular file inside the folder and at most ``max_bytes``: a
    288 MB file is refused from its size, unread."""
    directory = resolve_inside(folder, root, what="trained run folder", error=RunMetadataError)
    if not directory.is_dir():
        raise RunMetadataError(f"trained run folder {shown_name(folder)} is not a folder")
    meta_path = directory / METADATA_NAME
    if not meta_path.exists() and not meta_path.is_symlink():
        raise RunMetadataError(f"{shown_name(folder)} holds no {METADATA_NAME}: is it the --out folder of a "
                               "training run?")
    data = read_json(meta_path, max_bytes, root=directory, what="run file", error=RunMetadataError)
    return validate_run_metadata(data, f"run file {shown_name(meta_path)}")
