"""How fast the app and the command line answer, as ratios measured in one run (issue 19's targets).

    python benchmarks/app_speed.py                   # every figure, the 13 Table 7 models
    python benchmarks/app_speed.py --models resnet18 pvt_v2_b1 --skip-commands

Printed, each beside its target:
- building a ``*_mscsa`` model / building its timm backbone (target <= 1.5);
- ``mscsa-lab --help`` / ``python -c "import torch"`` (<= 1), a command's start (its own --help, a wrong
  argument) / the same (<= 1.3), and what a model command adds to ``import timm`` (timm imports
  torchvision, so it costs more than torch alone however the CLI is written);
- Profile (the workflow, model built, counted on the request) / one fvcore count of the same model (<= 1.5);
- the budget fit / one FLOPs count of the model (<= 10);
- a benchmark's wall time / its time cap (<= 1.1);
- the Build, Profile and Saliency actions of the app on each Table 7 model at 224x224, absolute seconds on
  this machine (target < 2 s each; first request for a model, i.e. nothing cached).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def seconds(work, repeats: int = 1) -> float:
    """The median wall time of ``work()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(command: list[str]) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=300)
    return time.perf_counter() - started


def line(label: str, value: float, target: str, unit: str = "x") -> None:
    print(f"  {label:<62} {value:7.2f}{unit}   (target {target})", flush=True)


def command_start(repeats: int) -> None:
    print("command line (median of", repeats, "runs each, interleaved):")
    cli = [sys.executable, "-m", "mscsa_lab"]
    cases = {"import torch": [sys.executable, "-c", "import torch"],
             "import timm": [sys.executable, "-c", "import timm"],
             "--help": [*cli, "--help"], "profile --help": [*cli, "profile", "--help"],
             "train --help": [*cli, "train", "--help"], "a wrong argument": [*cli, "profile", "--bogus"],
             "profile's imports": [sys.executable, "-c", "import mscsa_lab.cli.inspecting, "
                                                         "mscsa_lab.workflows.profiling, mscsa_lab.registry"]}
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, command in cases.items():
            times[name].append(run(command))
    median = {name: statistics.median(values) for name, values in times.items()}
    torch_s = median["import torch"]
    print(f"  python -c 'import torch': {torch_s:.2f} s; 'import timm': {median['import timm']:.2f} s")
    line("mscsa-lab --help / import torch", median["--help"] / torch_s, "<= 1")
    for name in ("profile --help", "train --help", "a wrong argument"):
        line(f"mscsa-lab {name} / import torch", median[name] / torch_s, "<= 1.3")
    line("a model command's imports / import timm", median["profile's imports"] / median["import timm"], "~1")


def build_ratios(names: list[str], repeats: int) -> None:
    import timm

    import mscsa_lab  # noqa: F401 - registers the *_mscsa models
    from mscsa_lab.presets import load_profile

    print("building (median of", repeats, "builds each, interleaved):")
    registered = {p: m for m in timm.list_models("*_mscsa") for p in [m.removesuffix("_mscsa")]}
    for name in names:
        profile = load_profile(name)
        model_name = profile.model_name if timm.is_model(profile.model_name) else registered.get(name)
        backbone = seconds(lambda: timm.create_model(profile.baseline_model), repeats)
        with_mscsa = seconds(lambda: timm.create_model(model_name), repeats)
        params = parameter_count(model_name) / parameter_count(profile.baseline_model)
        line(f"{model_name} / {profile.baseline_model}", with_mscsa / backbone, "<= 1.5")
        print(f"    (parameters {params:.2f}x the backbone's: per parameter drawn, {with_mscsa / backbone / params:.2f}x)")


def parameter_count(name: str) -> int:
    """Parameters of a timm model, counted on the meta device (every one of them is drawn when it is built)."""
    import timm
    import torch

    with torch.device("meta"):
        return sum(p.numel() for p in timm.create_model(name).parameters())


def profile_and_budget(names: list[str]) -> None:
    import torch

    from mscsa_lab.analysis.flops import flop_analysis
    from mscsa_lab.workflows.comparing import budget_action
    from mscsa_lab.workflows.profiling import profile_action
    from mscsa_lab.workflows.spec import ModelSpec
    from mscsa_lab.workflows.store import ModelStore

    print("profile and budget (same process, model already built; Profile of the profile with a 10-class head,\n"
          "which is counted on the request: as shipped, its count comes from assets/known_costs.json):")
    for name in names:
        spec = ModelSpec.resolve(name, num_classes=10)
        store = ModelStore()
        model = store.cached(spec)
        spec.estimate(1)  # the cost estimate is cached per architecture, as the Build tab leaves it
        count = seconds(lambda: flop_analysis(model, torch.zeros(1, 3, 224, 224)).total())
        profile = seconds(lambda: profile_action(spec, store=store))
        line(f"{name}: Profile / one fvcore count ({count:.2f} s)", profile / count, "<= 1.5")
        budget = seconds(lambda: budget_action(name, cap=0.10))
        line(f"{name}: budget fit / one fvcore count", budget / count, "<= 10")


def benchmark_cap(cap: float) -> None:
    from mscsa_lab.bench.settings import BenchmarkSettings
    from mscsa_lab.workflows.timing import benchmark_action

    print("benchmark time cap:")
    settings = BenchmarkSettings(device="cpu", batch=8, warmup=2, steps=3, repeats=6, max_repeats=200,
                                 target_interval=0.001, max_seconds=cap)  # an interval it cannot reach: the cap ends it
    wall = seconds(lambda: benchmark_action(["resnet18"], settings, input_size=(224, 224)))
    line(f"resnet18 benchmark wall time / its {cap:.0f} s cap", wall / cap, "<= 1.1")


def app_actions(names: list[str]) -> None:
    from mscsa_lab.workflows.spec import _unit_cost
    from webapp.context import AppContext
    from webapp.tabs.build import run_build
    from webapp.tabs.profile import run_profile
    from webapp.tabs.saliency import run_saliency

    sample = str(sorted((ROOT / "assets" / "samples").glob("*.png"))[0])
    print("the app's actions at 224x224 (first request for each model, nothing cached; absolute seconds):")
    context = AppContext(runs_dir="/tmp/mscsa_app_speed_runs")
    _unit_cost.cache_clear()  # nothing known about any model yet
    worst = 0.0
    for name in names:
        form = dict(profile=name, height=224, width=224)
        build = seconds(lambda: run_build(context, form))
        spec = run_build(context, form)[-1]
        profile = seconds(lambda: run_profile(context, spec, "mac", 1, False, 1, False))
        # as the tab runs it by default: maps without the deletion/insertion curves (a checkbox adds them)
        saliency = seconds(lambda: run_saliency(context, sample, "gradxact", ["key", "value"], 0, 1, "top-1", "pad",
                                                "build", None, spec, faithfulness=False))
        worst = max(worst, build, profile, saliency)
        print(f"  {name:<16} Build {build:5.2f} s   Profile {profile:5.2f} s   Saliency {saliency:5.2f} s", flush=True)
    line("slowest of all of them", worst, "< 2 s", unit=" s")


def main() -> None:
    from mscsa_lab.presets import list_profiles

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="Table 7 profiles (default: all 13)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timed command or build (default: 3)")
    parser.add_argument("--cap", type=float, default=30.0, help="the benchmark's time cap in seconds (default: 30)")
    parser.add_argument("--skip-commands", action="store_true", help="leave out the command-line start times")
    args = parser.parse_args()
    names = args.models or [p.name for p in list_profiles() if p.available]
    import torch

    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads\n", flush=True)
    if not args.skip_commands:
        command_start(args.repeats)
    build_ratios(names, args.repeats)
    profile_and_budget(names)
    benchmark_cap(args.cap)
    app_actions(names)


if __name__ == "__main__":
    main()
