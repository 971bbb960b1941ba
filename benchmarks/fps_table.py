"""FPS of every available Table 7 backbone with and without MSCSA, written as CSV and Markdown.

    python benchmarks/fps_table.py                       # GPU if present, else CPU
    python benchmarks/fps_table.py --device cpu --batch 16 --threads 2 --out results/fps_cpu
    python benchmarks/fps_table.py --device cuda --batch 256 --precision fp16 --channels-last

The backbone alone, +MSCSA (reference modules) and +MSCSA on the fast path are measured
interleaved in one run (see mscsa_lab.bench.fps); the paper's A100 FPS drop is shown beside.
"""
from __future__ import annotations

import argparse
import sys
import warnings

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

import torch

from mscsa_lab.bench.settings import PRECISIONS, BenchmarkSettings
from mscsa_lab.bench.comparison import throughput_comparison
from mscsa_lab.presets import list_profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="profiles to measure (default: every available one)")
    parser.add_argument("--device", default="auto", help="auto (GPU if present), cpu or cuda")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 256 on GPU, 16 on CPU)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model first")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed block (default: 20 GPU, 3 CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--input", type=int, default=224)
    parser.add_argument("--out", default="results/fps", help="output path stem: writes STEM.csv and STEM.md")
    args = parser.parse_args()
    on_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    settings = BenchmarkSettings(
        device=args.device, batch=args.batch or (256 if on_gpu else 16), precision=args.precision,
        channels_last=args.channels_last, compile=args.compile, warmup=args.warmup,
        steps=args.steps or (20 if on_gpu else 3), repeats=args.repeats, threads=args.threads,
    )
    names = args.names or [p.name for p in list_profiles() if p.available]
    table = throughput_comparison(
        names, (args.input, args.input), settings,
        progress=lambda fraction, message: print(f"[{100 * fraction:5.1f}%] {message}", file=sys.stderr, flush=True),
    )
    print(table.to_markdown(digits=3))
    for suffix in (".csv", ".md"):
        print(f"wrote {table.write(args.out + suffix, digits=3)}", file=sys.stderr)


if __name__ == "__main__":
    main()
