"""Command line: ``python -m mscsa_lab {profiles,profile,compare,budget,export} ...``.

Tables print as Markdown on stdout; ``-o FILE`` (repeatable) writes CSV, Markdown, LaTeX or JSON
by the file's suffix, ``--plot FILE`` writes PNG or SVG figures. Same functions as the app.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from mscsa_lab.models.config import ConfigError

__all__ = ["main", "build_parser"]

EXAMPLES = """examples:
  python -m mscsa_lab profiles
  python -m mscsa_lab profile pvt_v2_b1 -o table1.csv -o table1.tex --plot table1.png
  python -m mscsa_lab profile --backbone efficientnet_b0 --set squeeze_ratio=1/2 --set num_heads=4
  python -m mscsa_lab compare resnet50 pvt_v2_b0 pvt_v2_b1 -o table6.md --plot table6.svg
  python -m mscsa_lab compare --all --task dense --input 512x512 -o seg.csv
  python -m mscsa_lab budget pvt_v2_b1 --cap 0.10
  python -m mscsa_lab export table6.json -o table6.tex --plot table6.png
  python -m mscsa_lab benchmark pvt_v2_b0 resnet50 --batch 16 -o fps.csv
  python -m mscsa_lab latency pvt_v2_b1 --batch 8 -o latency.md --plot latency.png
"""


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"input size {text!r} must look like 224 or 800x1280") from None
    if len(numbers) == 1:
        numbers = numbers * 2
    if len(numbers) != 2:
        raise argparse.ArgumentTypeError(f"input size {text!r} must look like 224 or 800x1280")
    return numbers[0], numbers[1]


def _parse_setting(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set takes NAME=VALUE (e.g. depth=2), got {text!r}")
    key, raw = text.split("=", 1)
    lowered = raw.strip().lower()
    if lowered in ("true", "false"):
        return key.strip(), lowered == "true"
    for cast in (int, float):
        try:
            return key.strip(), cast(raw)
        except ValueError:
            pass
    return key.strip(), raw.strip()


def _add_common(parser: argparse.ArgumentParser, outputs: bool = True, segmentation: bool = False) -> None:
    parser.add_argument("--input", type=_parse_size, default=(224, 224), metavar="HxW",
                        help="input size, e.g. 224 (square), 512x512 or 800x1280 (default: 224x224)")
    parser.add_argument("--task", choices=["classification", "dense"] + (["segmentation"] if segmentation else []),
                        default="classification",
                        help="classification: MSCSA head gives logits; dense: four fused maps"
                             + ("; segmentation (TopFormer profiles only, Table 3): TopFormer's segmentation model "
                                "with MSCSA in place of SASE" if segmentation else "")
                             + " (default: classification)")
    parser.add_argument("--set", dest="settings", type=_parse_setting, action="append", default=[], metavar="NAME=VALUE",
                        help="change one MSCSA setting of the profile, e.g. --set depth=2 --set squeeze_ratio=1/2 "
                             "--set use_pcp=false (repeatable)")
    if outputs:
        parser.add_argument("--convention", choices=["mac", "2x"], default="mac",
                            help="mac: 1 multiply-add = 1 FLOP, as in the paper (default); 2x: FLOPs = 2 MACs")
        parser.add_argument("-o", "--output", action="append", default=[], metavar="FILE",
                            help="write the table; format from the suffix: .csv .md .tex .json (repeatable)")
        parser.add_argument("--plot", action="append", default=[], metavar="FILE",
                            help="write the figure: .png or .svg (repeatable)")
        parser.add_argument("--digits", "--precision", dest="digits", type=_parse_digits, default=3,
                            help="significant figures in Markdown/LaTeX (percentages: 1 decimal; FPS: integers) (default: 3)")
        parser.add_argument("--latex-columns", type=_parse_columns, default=None, metavar="A,B,...",
                            help="columns of the .tex table (default: the ones a paper needs; CSV/JSON keep all)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mscsa_lab",
        description="Profile and compare backbones with Multi-Stage Cross-Scale Attention (MSCSA).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("profiles", help="list the Table 7 profiles and whether each can be built here")

    profile = commands.add_parser("profile", help="per-component FLOPs and parameters of one model (Table 1)",
                                  epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    profile.add_argument("name", nargs="?", help="a profile name (see 'profiles'), e.g. pvt_v2_b1")
    profile.add_argument("--backbone", help="any timm backbone with four stages, instead of a profile")
    profile.add_argument("--batch", type=int, default=1, help="batch size (default: 1)")
    profile.add_argument("--level", type=int, default=2, choices=[0, 1, 2],
                         help="detail: 0 top-level parts, 1 with sub-parts, 2 with per-scale K/V (default: 2)")
    profile.add_argument("--memory", action="store_true",
                         help="memory per component beside FLOPs: parameters, activations (and, with --training, "
                              "saved-for-backward, gradients, AdamW state) at --batch, like torchinfo's summary")
    profile.add_argument("--training", action="store_true", help="with --memory: a training step's memory")
    _add_common(profile)

    compare = commands.add_parser("compare", help="backbones with and without MSCSA (Table 6)",
                                  epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    compare.add_argument("names", nargs="*", help="profile or timm backbone names")
    compare.add_argument("--all", action="store_true", help="every profile that can be built here")
    _add_common(compare, segmentation=True)

    budget = commands.add_parser("budget", help="fit MSCSA under a FLOPs cap (the paper's ~10%% rule)")
    budget.add_argument("name", help="a profile or timm backbone name")
    budget.add_argument("--cap", type=float, default=0.10, help="added FLOPs as a fraction of the backbone's (default: 0.10)")
    _add_common(budget, outputs=False)

    for command, text in (("benchmark", "FPS of backbones alone and with MSCSA, measured interleaved"),
                          ("latency", "per-component latency of one model beside its FLOPs shares")):
        sub = commands.add_parser(command, help=text, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
        if command == "benchmark":
            sub.add_argument("names", nargs="*", help="profile or timm backbone names")
            sub.add_argument("--all", action="store_true", help="every profile that can be built here")
            sub.add_argument("--no-fast", action="store_true", help="skip the fast inference path")
            sub.add_argument("--max-repeats", type=int, default=60,
                             help="keep timing rounds until every ratio's 95%% interval is within --target-interval, "
                                  "up to this many rounds (default: 60; equal to --repeats = fixed rounds)")
            sub.add_argument("--target-interval", type=float, default=0.02,
                             help="wanted half-width of the ratio's 95%% interval, as a fraction (default: 0.02 = +-2%%)")
            sub.add_argument("--max-seconds", type=float, default=120.0,
                             help="stop adding rounds after this many seconds per backbone (default: 120)")
        else:
            sub.add_argument("name", help="a profile or timm backbone name")
        sub.add_argument("--device", default="auto", help="auto (GPU if present, else CPU), cpu or cuda (default: auto)")
        sub.add_argument("--batch", type=int, default=8, help="batch size (default: 8)")
        sub.add_argument("--precision", choices=["fp32", "tf32", "fp16", "bf16"], default="fp32",
                         help="fp32, tf32 (CUDA matmuls), or fp16/bf16 autocast (default: fp32)")
        sub.add_argument("--channels-last", action="store_true", help="channels_last memory format")
        sub.add_argument("--compile", action="store_true", help="torch.compile the models first (benchmark only)")
        sub.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default: 3)")
        sub.add_argument("--steps", type=int, default=5, help="steps per timed block (default: 5)")
        sub.add_argument("--repeats", type=int, default=6 if command == "benchmark" else 5,
                         help="timed blocks (rounds; the minimum when adaptive); the median is reported "
                              f"(default: {6 if command == 'benchmark' else 5})")
        sub.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
        sub.add_argument("--input", type=_parse_size, default=(224, 224), metavar="HxW", help="input size (default: 224x224)")
        sub.add_argument("--task", choices=["classification", "dense"], default="classification", help="model task")
        sub.add_argument("-o", "--output", action="append", default=[], metavar="FILE",
                         help="write the table; format from the suffix: .csv .md .tex .json (repeatable)")
        sub.add_argument("--plot", action="append", default=[], metavar="FILE", help="write the figure: .png or .svg")
        sub.add_argument("--digits", "--precision-digits", dest="digits", type=_parse_digits, default=3,
                         help="significant figures in Markdown/LaTeX (percentages: 1 decimal; FPS: integers) (default: 3)")
        sub.add_argument("--latex-columns", type=_parse_columns, default=None, metavar="A,B,...",
                         help="columns of the .tex table (default: the ones a paper needs; CSV/JSON keep all)")

    export = commands.add_parser("export", help="convert a saved table (.json/.csv) to other formats and figures")
    export.add_argument("table", help="a table written by 'profile' or 'compare' (-o FILE.json or .csv)")
    export.add_argument("-o", "--output", action="append", default=[], metavar="FILE",
                        help="write the table; format from the suffix: .csv .md .tex .json (repeatable)")
    export.add_argument("--plot", action="append", default=[], metavar="FILE", help="write the figure: .png or .svg")
    export.add_argument("--digits", "--precision", dest="digits", type=_parse_digits, default=3,
                        help="significant figures in Markdown/LaTeX (percentages: 1 decimal; FPS: integers) (default: 3)")
    export.add_argument("--latex-columns", type=_parse_columns, default=None, metavar="A,B,...",
                        help="columns of the .tex table (default: the ones a paper needs; CSV/JSON keep all)")
    _add_training_commands(commands)
    _add_ablate_command(commands)
    return parser


def _parse_digits(text: str) -> int:
    try:
        digits = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a whole number of significant figures, got {text!r}") from None
    if not 1 <= digits <= 15:
        raise argparse.ArgumentTypeError(f"significant figures must be from 1 to 15, got {digits}")
    return digits


def _parse_columns(text: str) -> list[str]:
    columns = [c.strip() for c in text.split(",") if c.strip()]
    if not columns:
        raise argparse.ArgumentTypeError("give column names separated by commas")
    return columns


def _write_outputs(table, outputs: Sequence[str], plots: Sequence[str], args: argparse.Namespace) -> list[Path]:
    from mscsa_lab.io.figures import plot_comparison, plot_component_breakdown, plot_latency, plot_throughput, save_figure

    written = [table.write(path, args.digits, args.latex_columns) for path in outputs]
    for path in plots:
        if "Time share (%)" in table.frame.columns:
            figure = plot_latency(table.frame, table.title)
        elif "Component" in table.frame.columns:
            figure = plot_component_breakdown(table.frame, table.title)
        elif "FLOPs (G)" in table.frame.columns:
            figure = plot_comparison(table.frame, table.title)
        else:
            figure = plot_throughput(table.frame, table.title)
        written.append(save_figure(figure, path))
    return written


def _check_paths(outputs: Sequence[str], plots: Sequence[str]) -> None:
    """Reject bad output names before minutes of work, not after."""
    from mscsa_lab.io.export import format_for_path
    from mscsa_lab.io.figures import FIGURE_FORMATS

    for path in outputs:
        format_for_path(path)
    for path in plots:
        if Path(path).suffix.lower() not in FIGURE_FORMATS:
            raise ValueError(f"cannot write figure {path!r}: use a .png or .svg file name")


def _run(args: argparse.Namespace) -> int:
    settings = dict(args.settings) if hasattr(args, "settings") else {}
    if settings:
        from mscsa_lab.models.config import MSCSAConfig

        known = set(MSCSAConfig.__dataclass_fields__) - {"extra"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"--set takes MSCSA settings only ({', '.join(sorted(known))}); not {unknown}: "
                              "use the command's own options for input size, task, batch...")
    if args.command == "profiles":
        from mscsa_lab.presets import list_profiles

        for p in list_profiles():
            state = "available" if p.available else f"not available: {p.unavailable_reason}"
            c = p.config
            print(f"{p.name:16s} {p.title:12s} pool 1/{c.pool_stride}, squeeze {c.squeeze_ratio or '-'}, depth {c.depth}, "
                  f"heads {c.num_heads}, d {c.key_dim}, mlp {c.mlp_ratio}  [{state}]")
        return 0

    if args.command == "profile":
        from mscsa_lab.registry import build_model
        from mscsa_lab.analysis.profiler import profile_model

        if not args.name and not args.backbone:
            raise ValueError("name a profile (e.g. pvt_v2_b1) or give --backbone NAME")
        _check_paths(args.output, args.plot)
        model = build_model(args.name, args.backbone, args.task, args.input, **settings)
        report = profile_model(model, args.input, args.batch)
        table = report.to_table(args.convention)
        if args.memory or args.training:
            from mscsa_lab.analysis.memory import memory_profile
            from mscsa_lab.analysis.merge import merge_with_profile

            profiled = memory_profile(model, args.input, batch_size=args.batch, training=args.training)
            table.frame = merge_with_profile(table.frame, profiled.to_frame())
            table.notes += profiled.notes()
            print(profiled.totals_table().to_markdown(args.digits))
        table.frame = table.frame[table.frame["Level"] <= args.level].reset_index(drop=True)
        print(table.to_markdown(args.digits))
        for path in _write_outputs(table, args.output, args.plot, args):
            print(f"wrote {path}", file=sys.stderr)
        return 0

    if args.command == "compare":
        from mscsa_lab.analysis.compare import compare_backbones
        from mscsa_lab.presets import list_profiles

        names = list(args.names) + ([p.name for p in list_profiles() if p.available] if args.all else [])
        if not names:
            raise ValueError("name at least one backbone or profile, or use --all")
        _check_paths(args.output, args.plot)
        table = compare_backbones(names, args.input, args.task, convention=args.convention,
                                  progress=lambda f, m: print(f"[{100 * f:5.1f}%] {m}", file=sys.stderr, flush=True),
                                  **settings)
        print(table.to_markdown(args.digits))
        for path in _write_outputs(table, args.output, args.plot, args):
            print(f"wrote {path}", file=sys.stderr)
        return 0

    if args.command == "budget":
        from mscsa_lab.analysis.budget import fit_flops_budget

        result = fit_flops_budget(args.name, args.cap, args.input, args.task, **settings)
        print(result.message)
        if result.config is not None:
            print(json.dumps(result.config.to_dict(), indent=2))
        return 0 if result.config is not None else 1

    if args.command in ("benchmark", "latency"):
        from mscsa_lab.bench.settings import BenchmarkSettings

        _check_paths(args.output, args.plot)
        settings = BenchmarkSettings(device=args.device, batch=args.batch, precision=args.precision,
                                     channels_last=args.channels_last, compile=args.compile, warmup=args.warmup,
                                     steps=args.steps, repeats=args.repeats, threads=args.threads,
                                     **(dict(max_repeats=args.max_repeats, target_interval=args.target_interval,
                                             max_seconds=args.max_seconds) if args.command == "benchmark" else {})
                                     ).validate()
        if args.command == "benchmark":
            from mscsa_lab.bench.comparison import throughput_comparison
            from mscsa_lab.presets import list_profiles

            names = list(args.names) + ([p.name for p in list_profiles() if p.available] if args.all else [])
            if not names:
                raise ValueError("name at least one backbone or profile, or use --all")
            table = throughput_comparison(names, args.input, settings, args.task, fast=not args.no_fast,
                                          progress=lambda f, m: print(f"[{100 * f:5.1f}%] {m}", file=sys.stderr))
        else:
            from mscsa_lab.registry import build_named_model
            from mscsa_lab.bench.latency import component_latency

            from mscsa_lab.analysis.merge import merge_with_latency
            from mscsa_lab.analysis.traffic import traffic_profile

            model = build_named_model(args.name, args.task, args.input)
            table = component_latency(model, args.input, settings).to_table()
            traffic = traffic_profile(model, args.input, batch_size=settings.batch)
            table.frame = merge_with_latency(table.frame, traffic.to_frame())
            table.notes.append("Bytes moved: module inputs + outputs + parameters per forward pass (eager: every "
                               "operator's reads and writes); intensity = FLOPs / bytes moved.")
        print(table.to_markdown(args.digits))
        for path in _write_outputs(table, args.output, args.plot, args):
            print(f"wrote {path}", file=sys.stderr)
        return 0

    if args.command == "export":
        from mscsa_lab.io.export import read_table

        _check_paths(args.output, args.plot)
        table = read_table(args.table)
        if not args.output and not args.plot:
            print(table.to_markdown(args.digits))
        for path in _write_outputs(table, args.output, args.plot, args):
            print(f"wrote {path}", file=sys.stderr)
        return 0
    if args.command == "train":
        return _run_train(args, settings)
    if args.command == "evaluate":
        return _run_evaluate(args)
    if args.command == "ablate":
        return _run_ablate(args, settings)
    raise AssertionError(args.command)


# ---------------------------------------------------------------------- train / evaluate
TRAIN_EXAMPLES = """examples:
  python -m mscsa_lab train --data synthetic --backbone resnet10t --img-size 96 --epochs 3 --out runs/shapes
  python -m mscsa_lab train --data photos/ --profile resnet18 --mode mscsa-only --pretrained --out runs/r18
  python -m mscsa_lab train --data photos/ --profile resnet18 --out runs/r18 --resume   # continue a run
  python -m mscsa_lab train --data synthetic --backbone resnet10t --set depth=2 --set squeeze_ratio=1/2
  torchrun --nproc_per_node 4 -m mscsa_lab train --data imagenet/ --profile pvt_v2_b1 --amp bf16 --out runs/b1
  python -m mscsa_lab evaluate runs/shapes --data synthetic
"""


def _parse_backbone_arg(text: str) -> tuple[str, Any]:
    """NAME=VALUE for timm's model constructor; VALUE as JSON when it parses (lists, numbers)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--backbone-arg takes NAME=VALUE (e.g. channels=[32,64,128,256]), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return _parse_setting(text)


def _add_training_commands(commands) -> None:
    from mscsa_lab.train.config import AMP_MODES, MODES

    train = commands.add_parser(
        "train", help="train a backbone+MSCSA classifier on an image folder or the synthetic shapes",
        description="Train with timm's optimizers, schedulers, losses and transforms. Writes OUT/model.safetensors, "
                    "OUT/model.json (everything needed to rebuild the model), OUT/history.csv and the resumable "
                    "OUT/last/ state (every epoch). Several GPUs or machines: start it with torchrun.",
        epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--data", required=True, metavar="DIR|synthetic",
                       help="'synthetic' (built-in shapes, offline) or a folder: train/ and val/ of class folders, or "
                            "one folder of class folders split by --val-fraction")
    train.add_argument("--backbone", help="any timm backbone with stages at strides 4..32 (e.g. resnet10t)")
    train.add_argument("--profile", help="a Table 7 profile (see 'profiles'), e.g. resnet18, pvt_v2_b0")
    train.add_argument("--mode", choices=MODES, default=None,
                       help="mscsa-only: backbone frozen, MSCSA+head train; finetune: all train; scratch: all train "
                            "from random weights (default: finetune with --pretrained/--pretrained-file, else scratch)")
    train.add_argument("--epochs", type=int, default=10, help="epochs (default: 10)")
    train.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    train.add_argument("--batch", type=int, default=32, help="images per process per micro-batch (default: 32)")
    train.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimizer step (default: 1)")
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate (default: 1e-3 mscsa-only/scratch, 3e-4 finetune)")
    train.add_argument("--opt", default="adamw", help="timm optimizer name (default: adamw)")
    train.add_argument("--weight-decay", type=float, default=0.05, help="weight decay (default: 0.05)")
    train.add_argument("--sched", default="cosine", help="timm scheduler: cosine, step, poly, constant, none...")
    train.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (default: 0)")
    train.add_argument("--smoothing", type=float, default=0.1, help="label smoothing (default: 0.1)")
    train.add_argument("--mixup", type=float, default=0.0, help="mixup alpha, 0 = off (default: 0)")
    train.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha, 0 = off (default: 0)")
    train.add_argument("--ema", action="store_true", help="keep an EMA of the weights (saved as the model)")
    train.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this value")
    train.add_argument("--no-augment", action="store_true", help="no random crops/flips (evaluation transform)")
    train.add_argument("--img-size", type=int, default=224, help="square input size (default: 224)")
    train.add_argument("--val-fraction", type=float, default=0.2,
                       help="share held out when --data is one folder of class folders (default: 0.2)")
    train.add_argument("--synthetic-train", type=int, default=2000, help="synthetic training images (default: 2000)")
    train.add_argument("--synthetic-val", type=int, default=500, help="synthetic held-out images (default: 500)")
    train.add_argument("--out", default=None, metavar="DIR", help="output folder (default: runs/<profile or backbone>)")
    weights = train.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true",
                         help="start from the backbone's timm weights already on this machine (never downloads)")
    weights.add_argument("--pretrained-file", metavar="FILE", help="start from backbone weights in this file")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last/ state")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--amp", choices=AMP_MODES, default="none",
                       help="bf16 or fp16 autocast (fp16 on CUDA only), or none = fp32 (default: none)")
    train.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels_last memory format (default: on for CUDA)")
    train.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda (default: auto)")
    train.add_argument("--workers", type=int, default=None, help="data loading processes (default: from the cores)")
    train.add_argument("--drop-path", type=float, default=None, help="MSCSA drop path rate (same as --set drop_path=F)")
    train.add_argument("--backbone-drop-path", type=float, default=0.0, help="the backbone's drop path rate")
    train.add_argument("--backbone-arg", dest="backbone_args", type=_parse_backbone_arg, action="append", default=[],
                       metavar="NAME=VALUE", help="timm constructor argument for the backbone, e.g. "
                                                  "channels=[32,64,128,256] (repeatable)")
    train.add_argument("--set", dest="settings", type=_parse_setting, action="append", default=[],
                       metavar="NAME=VALUE", help="an MSCSA setting, e.g. --set depth=2 --set squeeze_ratio=1/2 "
                                                  "(repeatable)")
    train.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs, 0 = at the end (default: 1)")
    train.add_argument("--log-every", type=int, default=1, help="progress update every N steps (default: 1)")
    train.add_argument("--no-progress", action="store_true", help="one line per epoch instead of a progress bar")

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a trained model folder: metrics JSON, per-class CSV, confusion CSV and PNG",
        epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("model_dir", metavar="DIR", help="a training run's --out folder (model.safetensors + model.json)")
    evaluate.add_argument("--data", required=True, metavar="DIR|synthetic", help="'synthetic' or an image folder")
    evaluate.add_argument("--split", choices=["val", "train", "all"], default="val",
                          help="val: the held-out images as in training (default); train; all")
    evaluate.add_argument("--out", default=None, metavar="DIR", help="where to write the files (default: DIR/eval)")
    evaluate.add_argument("--batch", type=int, default=64, help="batch size (default: 64)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    evaluate.add_argument("--workers", type=int, default=0, help="data loading processes (default: 0)")
    evaluate.add_argument("--synthetic-count", type=int, default=None,
                          help="synthetic images to evaluate (default: as many as were held out in training)")


def _run_train(args: argparse.Namespace, settings: dict[str, Any]) -> int:
    import shlex

    from mscsa_lab.train import PrintProgress, TqdmProgress, TrainConfig, train

    if args.drop_path is not None:
        settings = {**settings, "drop_path": args.drop_path}
    name = args.profile or args.backbone or "model"
    out = args.out or str(Path("runs") / name)
    config = TrainConfig(
        data=args.data, profile=args.profile, backbone=args.backbone, backbone_kwargs=dict(args.backbone_args),
        mscsa=settings, mode=args.mode, pretrained=args.pretrained, pretrained_file=args.pretrained_file,
        img_size=args.img_size, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch,
        accum_steps=args.accum_steps, lr=args.lr, opt=args.opt, weight_decay=args.weight_decay, sched=args.sched,
        warmup_steps=args.warmup_steps, smoothing=args.smoothing, mixup=args.mixup, cutmix=args.cutmix,
        ema=args.ema, clip_grad=args.clip_grad, augment=not args.no_augment, val_fraction=args.val_fraction,
        synthetic_train=args.synthetic_train, synthetic_val=args.synthetic_val, amp=args.amp,
        channels_last=args.channels_last, device=args.device, workers=args.workers,
        backbone_drop_path=args.backbone_drop_path, seed=args.seed, eval_every=args.eval_every,
        log_every=args.log_every, out=out, resume=args.resume,
        command="python -m mscsa_lab " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    with _graceful_stop("step") as stop:
        progress = PrintProgress() if args.no_progress else TqdmProgress()
        result = train(config, callbacks=[progress], stop=stop)
    return 0 if result.status in ("completed", "max_steps", "stopped") else 1


@contextlib.contextmanager
def _graceful_stop(unit: str):
    """Ctrl-C once sets the yielded flag (the work finishes its current ``unit``, keeps what it has and
    returns); Ctrl-C twice aborts. Outside the main thread no handler can be set and the flag stays clear."""
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_interrupt(signum, frame):  # noqa: ARG001
            if stop.is_set():
                raise KeyboardInterrupt
            stop.set()
            print(f"\nstopping after this {unit} (Ctrl-C again to abort)", file=sys.stderr)

        previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield stop
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run_evaluate(args: argparse.Namespace) -> int:
    from mscsa_lab.train import evaluate_trained

    result, paths = evaluate_trained(args.model_dir, args.data, args.out, split=args.split, batch_size=args.batch,
                                     device=args.device, workers=args.workers, synthetic_count=args.synthetic_count)
    print(f"top-1 {result.top1:.2f}%, top-{result.topk} {result.top5:.2f}%, loss {result.loss:.4f} "
          f"on {result.count} images")
    print(result.per_class().to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    for path in paths.values():
        print(f"wrote {path}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------- ablate
ABLATE_EXAMPLES = """examples:
  python -m mscsa_lab ablate demo --table 4 --seeds 0 1 --max-steps 300 -o table4_study.md -o table4_study.csv
  python -m mscsa_lab ablate topformer_tiny --table 5 --img-size 96 --input 224 --no-fps
  python -m mscsa_lab ablate demo --variant none --variant +msp --data photos/ --out runs/ablation
"""


def _add_ablate_command(commands) -> None:
    ablate = commands.add_parser(
        "ablate", help="ablation study: train Table 4/5 variants over several seeds, top-1 mean/std beside FLOPs and FPS",
        description="Train every variant with every seed under the same data, then tabulate held-out top-1 (mean, "
                    "std, n) beside FLOPs, parameters, the paper's FLOPs and an interleaved FPS ratio. NAME 'demo' "
                    "is the demo model's shape (resnet10t at half width + a small MSCSA), quick on a CPU.",
        epilog=ABLATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ablate.add_argument("name", nargs="?", default="demo",
                        help="'demo' (default), a Table 7 profile (e.g. topformer_tiny) or a timm backbone")
    which = ablate.add_mutually_exclusive_group()
    which.add_argument("--table", choices=["4", "5"], default=None,
                       help="Table 4 (components: none, +pcp, +intra_ffn, +msp) or Table 5 (down-sampling) (default: 4)")
    which.add_argument("--variant", dest="variants", action="append", default=[], metavar="NAME",
                       help="a Table 4/5 variant name, e.g. --variant none --variant +msp (repeatable)")
    ablate.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    ablate.add_argument("--data", default="synthetic", metavar="synthetic|DIR",
                        help="'synthetic' (built-in shapes, default) or an image folder")
    ablate.add_argument("--max-steps", type=int, default=300, help="optimizer steps per run (default: 300)")
    ablate.add_argument("--batch", type=int, default=32, help="batch size (default: 32)")
    ablate.add_argument("--img-size", type=int, default=64, help="training image size (default: 64)")
    ablate.add_argument("--lr", type=float, default=None, help="learning rate (default: the engine's)")
    ablate.add_argument("--synthetic-train", type=int, default=2000, help="synthetic training images (default: 2000)")
    ablate.add_argument("--synthetic-val", type=int, default=500, help="synthetic held-out images (default: 500)")
    ablate.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda (default: auto)")
    ablate.add_argument("--workers", type=int, default=None, help="data loading processes (default: from the cores)")
    ablate.add_argument("--input", type=_parse_size, default=(224, 224), metavar="HxW",
                        help="input size for FLOPs, parameters and FPS (default: 224x224)")
    ablate.add_argument("--no-fps", action="store_true", help="skip the interleaved FPS measurement")
    ablate.add_argument("--flops-only", action="store_true",
                        help="no training: each variant's FLOPs, parameters and step from the previous row at --input, "
                             "the paper's Table 4/5 beside (TopFormer-T at 224x224); seconds")
    ablate.add_argument("--backbone-arg", dest="backbone_args", type=_parse_backbone_arg, action="append", default=[],
                        metavar="NAME=VALUE", help="timm constructor argument for the backbone (repeatable)")
    ablate.add_argument("--set", dest="settings", type=_parse_setting, action="append", default=[], metavar="NAME=VALUE",
                        help="an MSCSA setting for every variant (the variant's switches win) (repeatable)")
    ablate.add_argument("--out", default=None, metavar="DIR", help="write each run to DIR/NN-variant/seedK/ "
                                                                  "(default: nothing written per run)")
    ablate.add_argument("-o", "--output", action="append", default=[], metavar="FILE",
                        help="write the table; format from the suffix: .csv .md .tex .json (repeatable)")
    ablate.add_argument("--digits", "--precision", dest="digits", type=_parse_digits, default=3,
                        help="significant figures in Markdown/LaTeX (percentages: 1 decimal; FPS: integers) (default: 3)")
    ablate.add_argument("--latex-columns", type=_parse_columns, default=None, metavar="A,B,...",
                        help="columns of the .tex table (default: the ones a paper needs; CSV/JSON keep all)")


def _run_ablate(args: argparse.Namespace, settings: dict[str, Any]) -> int:
    from mscsa_lab.train.ablation import ablation_costs, run_ablation

    _check_paths(args.output, [])
    variants = list(args.variants) if args.variants else f"table{args.table or '4'}"
    if args.flops_only:
        table = ablation_costs(args.name, variants, args.input, settings, dict(args.backbone_args) or None)
        print(table.to_markdown(args.digits))
        for path in _write_outputs(table, args.output, [], args):
            print(f"wrote {path}", file=sys.stderr)
        return 0
    train = dict(data=args.data, max_steps=args.max_steps, batch_size=args.batch, img_size=args.img_size, lr=args.lr,
                 synthetic_train=args.synthetic_train, synthetic_val=args.synthetic_val, device=args.device,
                 workers=args.workers)
    if args.backbone_args:
        train["backbone_kwargs"] = dict(args.backbone_args)
    # Ctrl-C once: the current run stops, the table holds the runs that finished (and is still written).
    with _graceful_stop("training step") as stop:
        table = run_ablation(args.name, variants, seeds=args.seeds, train=train, input_size=args.input,
                             fps=not args.no_fps, settings=settings, out=args.out, stop=stop,
                             progress=lambda f, m: print(f"[{100 * f:5.1f}%] {m}", file=sys.stderr, flush=True))
    print(table.to_markdown(args.digits))
    for path in _write_outputs(table, args.output, [], args):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    # fvcore imports torch.jit.script, which newer torch flags as deprecated on every run.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ConfigError, ValueError, RuntimeError, KeyError, TypeError, FileNotFoundError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2
