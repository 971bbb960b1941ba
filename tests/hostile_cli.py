"""The hostile-input corpus for the command line: arguments a careless or hostile user types, each with the
message the terminal must show (exit 2, no trace) or the usage error argparse gives. Files the cases need
are written from ``tests/hostile_corpus.py``'s generators (no binaries committed).

``heavy`` cases would allocate many GB if anything were built before it was costed: they run in a child
process whose address space is capped, so a regression fails the test instead of the machine."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["CliCase", "cli_cases"]


@dataclass(frozen=True)
class CliCase:
    name: str
    argv: tuple[str, ...]
    expect: str  # a regex of what the terminal shows (stdout and stderr)
    code: int = 2
    heavy: bool = False  # run in a memory-capped child process


def cli_cases(folder: Path) -> list[CliCase]:
    """Every case, with the files they name written into ``folder``."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "random.safetensors").write_bytes(os.urandom(4096))
    (folder / "not_a_table.csv").write_text("this,is\nnot,ours\n")
    (folder / "garbage.json").write_text("{" * 5000)
    huge = ("--set", "depth=24", "--set", "num_heads=64", "--set", "key_dim=512", "--set", "mlp_ratio=16")
    cases = [
        CliCase("unknown model", ("profile", "resnet9"), r"unknown timm backbone 'resnet9'.*Similar timm names"),
        CliCase("traversal as a model", ("profile", "../../etc/passwd"), r"unknown timm backbone '\.\./\.\./etc"),
        CliCase("20 MB name", ("profile", "x" * 20_000_000), r"unknown timm backbone .x{10,}"),
        CliCase("size 0", ("profile", "resnet18", "--input", "0"), r"input height=0"),
        CliCase("size text", ("profile", "resnet18", "--input", "big"), r"input size 'big' must look like 224"),
        CliCase("setting nan", ("profile", "resnet18", "--set", "num_heads=nan"), r"num_heads must be a whole"),
        CliCase("setting inf", ("profile", "resnet18", "--set", "mlp_ratio=1e400"), r"mlp_ratio must be a finite"),
        CliCase("unknown setting", ("profile", "resnet18", "--set", "batch=2"), r"unknown MSCSA setting\(s\) \['batch'\]"),
        CliCase("impossible setting", ("build", "resnet18", "--set", "squeeze_ratio=1/1000"), r"leaves a stage with 0"),
        CliCase("88 G parameters", ("profile", "resnet18", *huge, "--set", "squeeze_ratio=4"),
                r"G parameters, above this server's limit of 1\.00 G", heavy=True),
        CliCase("huge memory profile", ("profile", "resnet18", "--input", "2048", "--memory", "-b", "64"),
                r"needs about .* GiB, but this server allows", heavy=True),
        CliCase("input past the limit", ("profile", "resnet18", "--input", "4096x4096", "--memory", "-b", "64"),
                r"input 4096x4096 is above this server's limit of 2048", heavy=True),
        CliCase("batch past the limit", ("benchmark", "resnet18", "-b", "1000"), r"batch 1000 is above this server.s limit of 256"),
        CliCase("huge training step", ("train", "--data", "synthetic", "--backbone", "resnet18", "--img-size", "1024",
                                       "-b", "256", "--out", str(folder / "runs" / "x")),
                r"needs about .* but this server allows|batch 256", heavy=True),
        CliCase("training folder missing", ("train", "--data", str(folder / "nope"), "--backbone", "resnet10t",
                                            "--out", str(folder / "runs" / "y")), r"nope"),
        CliCase("cuda without a GPU", ("benchmark", "resnet18", "--device", "cuda"), r"no CUDA GPU"),
        CliCase("someone else's plain CSV (a table all the same)",
                ("export", str(folder / "not_a_table.csv"), "-o", str(folder / "t.md")), r"wrote .*t\.md", code=0),
        CliCase("nested JSON table", ("export", str(folder / "garbage.json"), "-o", str(folder / "t.md")),
                r"not a table written by MSCSA Lab"),
        CliCase("table missing", ("export", str(folder / "none.json")), r"no table at"),
        CliCase("output format", ("profile", "resnet18", "-o", str(folder / "t.xlsx")), r"cannot write table"),
        CliCase("plot format", ("profile", "resnet18", "--plot", str(folder / "t.pdfx")), r"cannot write figure"),
        CliCase("run folder missing", ("evaluate", str(folder / "no_run"), "--data", "synthetic"),
                r"does not exist|no_run"),
        CliCase("corrupt pretrained file", ("train", "--data", "synthetic", "--backbone", "resnet10t",
                                            "--pretrained-file", str(folder / "random.safetensors"),
                                            "--out", str(folder / "runs" / "z")),
                r"safetensors|truncated|not a valid"),
        CliCase("unknown option", ("train", "--data", "synthetic", "--batchsize", "4"),
                r"usage: mscsa-lab train.*unrecognized arguments: --batchsize", code=2),
        CliCase("unknown command", ("frobnicate",), r"invalid choice: 'frobnicate'", code=2),
        CliCase("bad variant", ("ablate", "demo", "--variant", "nope"), r"unknown ablation variant\(s\) \['nope'\]"),
        CliCase("limit flag zero", ("--max-batch", "0", "profile", "resnet18"), r"max_batch must be a positive"),
    ]
    return cases
