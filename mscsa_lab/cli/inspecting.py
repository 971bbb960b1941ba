"""Commands that count without timing: profiles, build, profile, compare, budget, export."""
from __future__ import annotations

import argparse
import json

from mscsa_lab.cli.common import (Formatter, add_model_name, add_model_options, add_output_options, limits_from_args, print_result,
                                  progress_printer, spec_from_args)

EXAMPLES = """examples:
  mscsa-lab profiles
  mscsa-lab build pvt_v2_b1 --plot diagram.svg -o stages.md
  mscsa-lab profile pvt_v2_b1 -o table1.csv -o table1.tex --plot table1.png
  mscsa-lab profile efficientnet_b0 --set squeeze_ratio=1/2 --set num_heads=4
  mscsa-lab profile pvt_v2_b1 --memory --training -b 32
  mscsa-lab compare resnet50 pvt_v2_b0 pvt_v2_b1 -o table6.md --plot table6.svg
  mscsa-lab compare --all --task dense --input 512x512 -o seg.csv
  mscsa-lab budget pvt_v2_b1 --cap 0.10
  mscsa-lab export table6.json -o table6.tex --plot table6.png
"""


def register(commands: argparse._SubParsersAction) -> None:
    profiles = commands.add_parser("profiles", help="list the Table 7 profiles and whether each can be built here")
    profiles.add_argument("--wide", action="store_true", help="(every column is shown)")
    profiles.set_defaults(func=run_profiles, _parser=profiles)

    build = commands.add_parser("build", help="build one model: stages, key/value scales, parameters and a diagram",
                                epilog=EXAMPLES, formatter_class=Formatter)
    add_model_name(build)
    add_model_options(build)
    add_output_options(build)
    build.set_defaults(func=run_build, _parser=build)

    profile = commands.add_parser("profile", help="per-component FLOPs and parameters of one model (Table 1)",
                                  epilog=EXAMPLES, formatter_class=Formatter)
    add_model_name(profile)
    profile.add_argument("-b", "--batch", "--batch-size", dest="batch", type=int, default=1,
                         help="batch for --memory (FLOPs are per image) (default: 1)")
    profile.add_argument("--level", type=int, default=2, choices=[0, 1, 2],
                         help="detail: 0 top-level parts, 1 with sub-parts, 2 with per-scale K/V (default: 2)")
    profile.add_argument("--memory", action="store_true",
                         help="memory per component beside FLOPs: parameters, activations (and, with --training, "
                              "saved-for-backward, gradients, AdamW state) at --batch, like torchinfo's summary")
    profile.add_argument("--training", action="store_true", help="with --memory: a training step's memory")
    add_model_options(profile)
    add_output_options(profile, convention=True)
    profile.set_defaults(func=run_profile, _parser=profile)

    compare = commands.add_parser("compare", help="backbones with and without MSCSA (Table 6)", epilog=EXAMPLES,
                                  formatter_class=Formatter)
    compare.add_argument("names", nargs="*", help="profile or timm backbone names")
    compare.add_argument("--all", action="store_true", help="every profile that can be built here")
    add_model_options(compare, tasks=("classification", "dense", "segmentation"))
    add_output_options(compare, convention=True)
    compare.set_defaults(func=run_compare, _parser=compare)

    budget = commands.add_parser("budget", help="fit MSCSA under a FLOPs cap (the paper's ~10%% rule)",
                                 epilog=EXAMPLES, formatter_class=Formatter)
    budget.add_argument("name", help="a profile or timm backbone name")
    budget.add_argument("--cap", type=float, default=0.10,
                        help="added FLOPs as a fraction of the backbone's (default: 0.10)")
    add_model_options(budget)
    add_output_options(budget, plots=False)
    budget.set_defaults(func=run_budget, _parser=budget)

    export = commands.add_parser("export", help="convert a saved table (.json/.csv/.md/.tex) to other formats and "
                                                "figures", epilog=EXAMPLES, formatter_class=Formatter)
    export.add_argument("table", help="a table written by any command (-o FILE.json, .csv, .md or .tex)")
    add_output_options(export)
    export.set_defaults(func=run_export, _parser=export)


def run_profiles(args: argparse.Namespace) -> int:
    from mscsa_lab.workflows.comparing import profiles_action

    args.wide = True
    print_result(profiles_action(), args)
    return 0


def run_build(args: argparse.Namespace) -> int:
    from mscsa_lab.workflows.build import build_action
    from mscsa_lab.workflows.result import check_output_paths

    check_output_paths(args.output, args.plot)
    args.wide = True
    print_result(build_action(spec_from_args(args), limits=limits_from_args(args)), args)
    return 0


def run_profile(args: argparse.Namespace) -> int:
    from mscsa_lab.workflows.profiling import profile_action
    from mscsa_lab.workflows.result import check_output_paths

    check_output_paths(args.output, args.plot)
    result = profile_action(spec_from_args(args), convention=args.convention, level=args.level, memory=args.memory
                            or args.training, batch=args.batch, training=args.training, limits=limits_from_args(args))
    print_result(result, args)
    return 0


def _names(args: argparse.Namespace) -> list[str]:
    from mscsa_lab.presets import list_profiles

    return list(args.names) + ([p.name for p in list_profiles() if p.available] if args.all else [])


def run_compare(args: argparse.Namespace) -> int:
    from mscsa_lab.workflows.comparing import compare_action
    from mscsa_lab.workflows.result import check_output_paths
    from mscsa_lab.workflows.spec import ModelSpec

    check_output_paths(args.output, args.plot)
    settings = dict(args.settings)
    entries = [ModelSpec.resolve(name, task=args.task, input_size=args.input, settings=settings) if settings else name
               for name in _names(args)]
    result = compare_action(entries, input_size=args.input, task=args.task, convention=args.convention,
                            progress=progress_printer, limits=limits_from_args(args))
    print_result(result, args)
    return 0


def run_budget(args: argparse.Namespace) -> int:
    from mscsa_lab.workflows.comparing import budget_action
    from mscsa_lab.workflows.result import check_output_paths

    check_output_paths(args.output)
    result = budget_action(args.name, cap=args.cap, input_size=args.input, task=args.task,
                           settings=dict(args.settings), progress=progress_printer, limits=limits_from_args(args))
    print_result(result, args)
    if result.data["config"] is not None:
        print(json.dumps(result.data["config"], indent=2))
    return 0 if result.data["fits"] else 1


def run_export(args: argparse.Namespace) -> int:
    from mscsa_lab.workflows.comparing import export_table_action
    from mscsa_lab.workflows.result import check_output_paths

    check_output_paths(args.output, args.plot)
    result = export_table_action(args.table)
    if not args.output and not args.plot:
        print_result(result, args)
        return 0
    for path in result.write_requested(args.output, args.plot, args.digits, args.latex_columns):
        print(f"wrote {path}")
    return 0
