"""Commands that time: benchmark (FPS with and without MSCSA) and latency (per component)."""
from __future__ import annotations

import argparse

from mscsa_lab.cli.common import (Formatter, add_model_options, add_output_options, graceful_stop, limits_from_args,
                                  print_result, progress_printer, spec_from_args)

EXAMPLES = """examples:
  mscsa-lab benchmark pvt_v2_b0 resnet50 -b 16 -o fps.csv
  mscsa-lab benchmark resnet18 --max-seconds 40 --compile
  mscsa-lab latency pvt_v2_b1 -b 8 -o latency.md --plot latency.png
"""


def _add_timing_options(parser: argparse.ArgumentParser, repeats: int) -> None:
    parser.add_argument("--device", default="auto", help="auto (GPU if present, else CPU), cpu or cuda (default: auto)")
    parser.add_argument("-b", "--batch", "--batch-size", dest="batch", type=int, default=8,
                        help="batch size (default: 8)")
    parser.add_argument("--precision", choices=["fp32", "tf32", "fp16", "bf16"], default="fp32",
                        help="fp32, tf32 (CUDA matmuls), or fp16/bf16 autocast (default: fp32)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default: 3)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block (default: 5)")
    parser.add_argument("--repeats", type=int, default=repeats,
                        help=f"timed blocks (rounds; the minimum when adaptive); the median is reported "
                             f"(default: {repeats})")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")


def register(commands: argparse._SubParsersAction) -> None:
    benchmark = commands.add_parser("benchmark", help="FPS of backbones alone and with MSCSA, measured interleaved",
                                    epilog=EXAMPLES, formatter_class=Formatter)
    benchmark.add_argument("names", nargs="*", help="profile or timm backbone names")
    benchmark.add_argument("--all", action="store_true", help="every profile that can be built here")
    benchmark.add_argument("--no-fast", action="store_true", help="skip the fast inference path")
    benchmark.add_argument("--compile", action="store_true",
                           help="also time torch.compile'd models beside the eager ones (compile time reported "
                                "separately)")
    benchmark.add_argument("--max-repeats", type=int, default=60,
                           help="keep timing rounds until every ratio's 95%% interval is within --target-interval, "
                                "up to this many rounds (default: 60; equal to --repeats = fixed rounds)")
    benchmark.add_argument("--target-interval", type=float, default=0.02,
                           help="wanted half-width of the ratio's 95%% interval, as a fraction (default: 0.02)")
    benchmark.add_argument("--max-seconds", type=float, default=120.0,
                           help="time cap per backbone, building and warm-up included (default: 120)")
    _add_timing_options(benchmark, repeats=6)
    add_model_options(benchmark, settings=False)
    add_output_options(benchmark, precision_alias=False)
    benchmark.set_defaults(func=run_benchmark, _parser=benchmark)

    latency = commands.add_parser("latency", help="per-component latency of one model beside its FLOPs shares",
                                  epilog=EXAMPLES, formatter_class=Formatter)
    latency.add_argument("name", help="a profile or timm backbone name")
    _add_timing_options(latency, repeats=5)
    add_model_options(latency)
    add_output_options(latency, precision_alias=False)
    latency.set_defaults(func=run_latency, _parser=latency)


def _settings(args: argparse.Namespace, adaptive: bool):
    from mscsa_lab.bench.settings import BenchmarkSettings

    extra = dict(max_repeats=args.max_repeats, target_interval=args.target_interval,
                 max_seconds=args.max_seconds) if adaptive else {}
    return BenchmarkSettings(device=args.device, batch=args.batch, precision=args.precision,
                             channels_last=args.channels_last, compile=getattr(args, "compile", False),
                             warmup=args.warmup, steps=args.steps, repeats=args.repeats, threads=args.threads,
                             **extra).validate()


def run_benchmark(args: argparse.Namespace) -> int:
    from mscsa_lab.cli.inspecting import _names
    from mscsa_lab.workflows.result import check_output_paths
    from mscsa_lab.workflows.timing import benchmark_action

    check_output_paths(args.output, args.plot)
    with graceful_stop("timed block") as stop:
        result = benchmark_action(_names(args), _settings(args, adaptive=True), input_size=args.input, task=args.task,
                                  fast=not args.no_fast, progress=progress_printer, stop=stop,
                                  limits=limits_from_args(args))
    print_result(result, args)
    return 0


def run_latency(args: argparse.Namespace) -> int:
    from mscsa_lab.workflows.profiling import latency_action
    from mscsa_lab.workflows.result import check_output_paths

    check_output_paths(args.output, args.plot)
    with graceful_stop("timed block") as stop:
        result = latency_action(spec_from_args(args), _settings(args, adaptive=False), limits=limits_from_args(args),
                                stop=stop)
    print_result(result, args)
    return 0
