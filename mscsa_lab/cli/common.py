"""What every command shares: argument types, option groups, the model request from arguments, how a
result reaches the terminal and the files, Ctrl-C handling. Nothing heavy is imported here, so that
``--help`` and argument errors answer as fast as Python can start."""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from typing import Any, Iterator

__all__ = ["parse_size", "parse_setting", "parse_digits", "parse_columns", "add_model_name", "add_model_options",
           "add_output_options",
           "spec_from_args", "print_result", "graceful_stop", "progress_printer", "Formatter", "limits_from_args",
           "TASK_CHOICES"]

TASK_CHOICES = ("classification", "dense")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in the epilog as written."""


def parse_size(text: str) -> tuple[int, int]:
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"input size {text!r} must look like 224 or 800x1280") from None
    if len(numbers) == 1:
        numbers = numbers * 2
    if len(numbers) != 2:
        raise argparse.ArgumentTypeError(f"input size {text!r} must look like 224 or 800x1280")
    return numbers[0], numbers[1]


def parse_setting(text: str) -> tuple[str, Any]:
    """NAME=VALUE for an MSCSA setting: true/false, numbers, or text (fractions such as 1/2 stay text)."""
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


def parse_json_setting(text: str) -> tuple[str, Any]:
    """NAME=VALUE for a timm constructor argument; VALUE as JSON when it parses (lists, numbers)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"takes NAME=VALUE (e.g. channels=[32,64,128,256]), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return parse_setting(text)


def parse_digits(text: str) -> int:
    try:
        digits = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a whole number of significant figures, got {text!r}") from None
    if not 1 <= digits <= 15:
        raise argparse.ArgumentTypeError(f"significant figures must be from 1 to 15, got {digits}")
    return digits


def parse_columns(text: str) -> list[str]:
    columns = [c.strip() for c in text.split(",") if c.strip()]
    if not columns:
        raise argparse.ArgumentTypeError("give column names separated by commas")
    return columns


def add_model_name(parser: argparse.ArgumentParser) -> None:
    """NAME (a profile or any timm backbone) and --backbone, as every single-model command takes them."""
    parser.add_argument("name", nargs="?", help="a Table 7 profile (see 'profiles') or any timm backbone name")
    parser.add_argument("--backbone", help="a timm backbone: alone, or in place of the profile's (keeping its "
                                           "MSCSA settings)")


def add_model_options(parser: argparse.ArgumentParser, tasks: tuple[str, ...] = TASK_CHOICES,
                      settings: bool = True) -> None:
    """Input size, task and MSCSA settings, named as timm names them where it has a name."""
    parser.add_argument("--input", "--img-size", dest="input", type=parse_size, default=(224, 224), metavar="HxW",
                        help="input size, e.g. 224 (square), 512x512 or 800x1280 (default: 224x224)")
    parser.add_argument("--task", choices=tasks, default="classification",
                        help="classification: MSCSA head gives logits; dense: four fused maps"
                             + ("; segmentation (TopFormer profiles only, Table 3): TopFormer's segmentation model "
                                "with MSCSA in place of SASE" if "segmentation" in tasks else "")
                             + " (default: classification)")
    if settings:
        parser.add_argument("--set", dest="settings", type=parse_setting, action="append", default=[],
                            metavar="NAME=VALUE", help="change one MSCSA setting, e.g. --set depth=2 "
                                                       "--set squeeze_ratio=1/2 --set use_pcp=false (repeatable)")


def add_output_options(parser: argparse.ArgumentParser, plots: bool = True, convention: bool = False,
                       precision_alias: bool = True) -> None:
    """-o/--output, --plot, --digits (also --precision where the command has no --precision of its own),
    --latex-columns, --wide, and --convention for FLOPs tables."""
    if convention:
        parser.add_argument("--convention", choices=["mac", "2x"], default="mac",
                            help="mac: 1 multiply-add = 1 FLOP, as in the paper (default); 2x: FLOPs = 2 MACs")
    parser.add_argument("-o", "--output", action="append", default=[], metavar="FILE",
                        help="write the table; format from the suffix: .csv .md .tex .json (repeatable)")
    if plots:
        parser.add_argument("--plot", action="append", default=[], metavar="FILE",
                            help="write the figure: .png or .svg (repeatable)")
    parser.add_argument("--digits", *(("--precision",) if precision_alias else ("--precision-digits",)), dest="digits",
                        type=parse_digits, default=3,
                        help="significant figures in the terminal, Markdown and LaTeX (percentages: 1 decimal; FPS: "
                             "whole numbers from 10 up) (default: 3)")
    parser.add_argument("--latex-columns", type=parse_columns, default=None, metavar="A,B,...",
                        help="columns of the .tex table (default: the ones a paper needs; CSV/JSON keep all)")
    parser.add_argument("--wide", action="store_true", help="print every column (default: the compact set)")


def limits_from_args(args: argparse.Namespace):
    """The resource limits of this run: the defaults, changed by the top-level --max-* flags or lifted
    by --no-limits; messages name the command line's flags."""
    from mscsa_lab.workflows.limits import DEFAULT_LIMITS, NO_LIMITS

    if getattr(args, "no_limits", False):
        return NO_LIMITS.replace(raise_hint="--{flag}")
    changes = {name: getattr(args, name) for name in LIMIT_FLAGS if getattr(args, name, None) is not None}
    return DEFAULT_LIMITS.replace(raise_hint="mscsa-lab's --{flag} (before the command)", **changes)


LIMIT_FLAGS = {"max_side": (int, "pixels per side of an input"), "max_batch": (int, "batch size"),
               "max_params": (int, "parameters of one model"), "max_models": (int, "models per comparison"),
               "memory_fraction": (float, "share of the free memory one command may use")}


def spec_from_args(args: argparse.Namespace, name: str | None = None):
    """The ``ModelSpec`` the arguments describe (``name`` or ``--backbone``, settings, size, task)."""
    from mscsa_lab.workflows.spec import ModelSpec

    name = name if name is not None else getattr(args, "name", None)
    return ModelSpec.resolve(name, backbone=getattr(args, "backbone", None), task=getattr(args, "task", "classification"),
                             input_size=getattr(args, "input", (224, 224)), settings=dict(getattr(args, "settings", [])),
                             pretrained=getattr(args, "pretrained", False),
                             pretrained_file=getattr(args, "pretrained_file", None))


def print_result(result: Any, args: argparse.Namespace) -> None:
    """The summary and the main table on stdout (compact columns unless --wide; no metadata: that is in the
    files), notes and warnings on stderr, then the files asked for with -o and --plot."""
    from mscsa_lab.io.terminal import terminal_table

    if result.summary:
        print(result.summary.replace("**", ""))
    if result.table is not None:
        print(terminal_table(result.table, getattr(args, "digits", 3), getattr(args, "wide", False)))
    for name, table in result.tables.items():
        if getattr(args, "wide", False) or name == "memory_totals":
            print(terminal_table(table, getattr(args, "digits", 3), getattr(args, "wide", False)))
    for note in result.all_notes():
        print(f"note: {note}", file=sys.stderr)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    written = result.write_requested(getattr(args, "output", []) or [], getattr(args, "plot", []) or [],
                                     getattr(args, "digits", 3), getattr(args, "latex_columns", None))
    for path in written:
        print(f"wrote {path}", file=sys.stderr)


def progress_printer(fraction: float, message: str) -> None:
    print(f"[{100 * fraction:5.1f}%] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def graceful_stop(unit: str) -> Iterator[threading.Event]:
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
