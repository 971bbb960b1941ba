"""How long building a ``*_mscsa`` model takes next to building its timm backbone alone.

    python benchmarks/build_speed.py [--repeats 3] [NAME ...]

Issue 19's target: building any ``*_mscsa`` model takes at most 1.5x the build time of its timm
backbone, the model a user would build without MSCSA (``resnet50`` for ``resnet50_mscsa``; for CoaT
and TopFormer, whose MSCSA replaces part of the model, the full timm model of the comparisons:
``coat_tiny``, ``topformer_tiny``). Both builds are timed alternately in one run (the machine is
shared, so only ratios measured together mean anything); each time is the median of ``--repeats``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import timm  # noqa: E402
import torch  # noqa: E402

import mscsa_lab  # noqa: E402,F401 - registers the *_mscsa models
from mscsa_lab.registry import _PROFILES, _REGISTERED  # noqa: E402

TARGET = 1.5


def backbone_of(name: str) -> str:
    """The timm model a ``*_mscsa`` model is compared with (its profile's baseline)."""
    return _PROFILES[_REGISTERED[name]].baseline_model


def _build_seconds(name: str) -> float:
    start = time.perf_counter()
    model = timm.create_model(name)
    seconds = time.perf_counter() - start
    del model
    return seconds


def _parameters(name: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in timm.create_model(name).parameters())


def build_ratios(names: list[str] | None = None, repeats: int = 3) -> list[dict]:
    """Per model: ``name``, ``backbone``, ``mscsa_s`` and ``backbone_s`` (median build seconds, timed
    alternately), ``ratio`` (model / backbone), ``params_ratio`` (their parameters) and ``per_param``
    (ratio / params_ratio: every parameter is drawn at random when a model is built, so time follows
    them). ``names`` default to the 13 registered models."""
    rows = []
    for name in names or list(_REGISTERED):
        backbone = backbone_of(name)
        _build_seconds(backbone), _build_seconds(name)  # first builds pay for imports and caches
        model_times, backbone_times = [], []
        for _ in range(repeats):
            backbone_times.append(_build_seconds(backbone))
            model_times.append(_build_seconds(name))
        model_s, backbone_s = statistics.median(model_times), statistics.median(backbone_times)
        params = _parameters(name) / _parameters(backbone)
        rows.append(dict(name=name, backbone=backbone, mscsa_s=model_s, backbone_s=backbone_s,
                         ratio=model_s / backbone_s, params_ratio=params, per_param=model_s / backbone_s / params))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="registered *_mscsa models (default: all 13)")
    parser.add_argument("--repeats", type=int, default=3, help="alternate builds per model (default: 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's). On a busy machine, parallel element-wise "
                             "operations slow down far more than the serial random draws timm's inits use")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    unknown = [name for name in args.names if name not in _REGISTERED]
    if unknown:
        parser.error(f"not registered *_mscsa models: {unknown}; choose from {list(_REGISTERED)}")
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}; "
          f"median of {args.repeats} alternate builds; target ratio <= {TARGET}")
    print("| Model | timm backbone | build (s) | backbone build (s) | ratio | parameters ratio | ratio per parameter |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rows = build_ratios(args.names or None, args.repeats)
    for row in rows:
        flag = "" if row["ratio"] <= TARGET else " (over target)"
        print(f"| {row['name']} | {row['backbone']} | {row['mscsa_s']:.3f} | {row['backbone_s']:.3f} | "
              f"{row['ratio']:.2f}{flag} | {row['params_ratio']:.2f} | {row['per_param']:.2f} |")
    print(f"worst ratio: {max(row['ratio'] for row in rows):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
