"""The MSCSA part alone (on fixed backbone features): reference modules vs fuse() vs the fast path.

    python benchmarks/fast_path.py [profiles...] [--batch 16]

Timing only the add-on removes the backbone's run-to-run noise, which on a CPU is larger than the
differences between the three MSCSA implementations. All three are measured interleaved.
"""
from __future__ import annotations

import argparse
import warnings

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

import torch
from torch import nn

from mscsa_lab.bench.fps import compare_fps
from mscsa_lab.bench.settings import BenchmarkSettings
from mscsa_lab.models.fast import make_fast
from mscsa_lab.registry import create_mscsa_model
from mscsa_lab.presets import list_profiles


class OnFixedFeatures(nn.Module):
    """Runs an MSCSA module on stage maps computed once (the 'input' is ignored)."""

    def __init__(self, mscsa: nn.Module, features: list[torch.Tensor]) -> None:
        super().__init__()
        self.mscsa, self.features = mscsa, features

    def forward(self, _: torch.Tensor) -> torch.Tensor:
        return self.mscsa(self.features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    names = args.names or [p.name for p in list_profiles() if p.available]
    settings = BenchmarkSettings(device=args.device, batch=1, warmup=3, steps=10, repeats=args.repeats)
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    print(f"| Model | reference (ms) | fused (ms) | fast (ms) | fast speed-up |   (batch {args.batch}, {device})")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        reference = create_mscsa_model(name).eval().to(device)
        with torch.inference_mode():
            features = [f.clone() for f in reference.backbone(torch.randn(args.batch, 3, 224, 224, device=device))]
        fused = create_mscsa_model(name).eval().to(device)
        fused.load_state_dict(reference.state_dict())
        fused.fuse()
        parts = {"reference": reference.mscsa, "fused": fused.mscsa, "fast": make_fast(reference).mscsa}
        result = compare_fps({k: OnFixedFeatures(v, features) for k, v in parts.items()}, (8, 8), settings)
        ms = {k: 1000.0 / r.fps_median for k, r in result.results.items()}
        print(f"| {name} | {ms['reference']:.2f} | {ms['fused']:.2f} | {ms['fast']:.2f} | "
              f"{result.ratio('fast'):.2f}x |", flush=True)


if __name__ == "__main__":
    main()
