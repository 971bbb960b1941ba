"""How long profiling takes per model on this machine (the goal: seconds, not minutes).

    python benchmarks/profile_speed.py [--input 224]

Prints, for every profile that can be built here, the time to build the model and the time to
profile it (fvcore trace + per-component table), each the median of --repeats runs.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

import torch

from mscsa_lab.registry import build_model
from mscsa_lab.analysis.profiler import profile_model
from mscsa_lab.presets import list_profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=int, default=224, help="square input size (default: 224)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per model (default: 3)")
    args = parser.parse_args()
    size = (args.input, args.input)
    print(f"torch threads: {torch.get_num_threads()}, input {args.input}x{args.input}")
    print("| Model | build (s) | profile (s) | GFLOPs |")
    print("|---|---:|---:|---:|")
    for profile in list_profiles():
        if not profile.available:
            continue
        builds, profiles = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model = build_model(profile.name, input_size=size)
            builds.append(time.perf_counter() - start)
            start = time.perf_counter()
            report = profile_model(model, size)
            profiles.append(time.perf_counter() - start)
        print(f"| {profile.title} | {statistics.median(builds):.2f} | {statistics.median(profiles):.2f} | "
              f"{report.total_flops / 1e9:.3f} |", flush=True)


if __name__ == "__main__":
    main()
