"""The command line: ``mscsa-lab COMMAND ...`` (the same as ``python -m mscsa_lab COMMAND ...``).

Each command is an argparse sub-command whose ``func`` calls one ``mscsa_lab.workflows`` action, the
same function the app calls, and prints its result: the summary and a compact table on stdout (every
column with ``--wide``), notes and warnings on stderr; ``-o FILE`` writes the table (CSV, Markdown,
LaTeX or JSON by suffix, metadata in the file or its sidecar), ``--plot FILE`` the figure. Nothing heavy
is imported before a command runs, so ``--help`` and wrong arguments answer at once.

Exit status: 0 done, 1 a budget that nothing fits, a failed training run or an image that explain
could not read (the others are done), 2 a mistake the message explains (wrong argument, unknown name,
impossible configuration, bad file, a request too large), 3 an internal error (a bug: the trace is printed and a reference given).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mscsa_lab.cli import explaining, exporting, inspecting, timing, training
from mscsa_lab.cli.common import LIMIT_FLAGS

__all__ = ["main", "build_parser"]

DESCRIPTION = ("Build, profile, time, train and explain backbones with Multi-Stage Cross-Scale Attention (MSCSA). "
               "'mscsa-lab COMMAND --help' explains each command.")
EXAMPLES = """examples:
  mscsa-lab profiles
  mscsa-lab profile pvt_v2_b1 -o table1.csv --plot table1.png
  mscsa-lab compare --all -o table6.md
  mscsa-lab benchmark pvt_v2_b0 -b 16
  mscsa-lab train --data synthetic --backbone resnet10t --img-size 96 --epochs 2 --out runs/shapes
  mscsa-lab explain assets/samples --model demo -o maps/
  mscsa-lab export-model resnet18_mscsa --onnx r18.onnx --torchscript r18.pt --fuse
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mscsa-lab", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    limits = parser.add_argument_group("limits (what one command may ask for; defaults as in the app)")
    for name, (kind, text) in LIMIT_FLAGS.items():
        limits.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                            help=f"limit on {text}")
    limits.add_argument("--no-limits", action="store_true",
                        help="run whatever is asked, even beyond the memory this machine has free")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (inspecting, timing, training, explaining, exporting):
        module.register(commands)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; an argument the chosen command does not know is reported with that command's usage (argparse
    alone would print the top-level usage, which does not list it)."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        command_parser = getattr(args, "_parser", parser)
        command_parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    # fvcore imports torch.jit.script, which newer torch flags as deprecated on every run.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(build_parser(), argv)
    args.argv = argv  # what was typed, recorded with a training run (main may be called with its own argv)
    from mscsa_lab.errors import UserError, internal_error_message, report_internal_error

    try:
        return args.func(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (| head): nothing more to say to it
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:  # noqa: BLE001 - a bug: trace and reference, never advice
        reference = report_internal_error(error, where=f"mscsa-lab {args.command}", stream=sys.stderr)
        print(f"error: {internal_error_message(reference)}", file=sys.stderr)
        return 3
