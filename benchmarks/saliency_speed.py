"""Seconds to render one image's per-scale maps (all three scales, one method) on this machine, and
how well the demo model's maps localise the objects of held-out synthetic images.

    python benchmarks/saliency_speed.py [--localisation 200]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

import torch

from mscsa_lab.paths import ASSETS_DIR
from mscsa_lab.io.checkpoints import load_demo_model
from mscsa_lab.registry import create_mscsa_model
from mscsa_lab.explain.saliency import METHODS, compute_saliency
from mscsa_lab.explain.evaluation import evaluate_localisation

SAMPLE = ASSETS_DIR / "samples" / "star_large.png"


def time_methods(model, size: tuple[int, int], label: str, repeats: int = 3) -> None:
    from mscsa_lab.io.images import prepare_image

    image = prepare_image(SAMPLE, size).tensor
    for method in METHODS:
        compute_saliency(model, image, method)  # warm-up
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            compute_saliency(model, image, method)
            seconds.append(time.perf_counter() - start)
        print(f"| {label} | {size[0]}x{size[1]} | {method} | {statistics.median(seconds):.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--localisation", type=int, default=200, help="held-out images for the localisation check")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    print("| Model | input | method | seconds (median of 3) |")
    print("|---|---|---|---:|")
    for name in ("pvt_v2_b1", "resnet50"):
        time_methods(create_mscsa_model(name).eval(), (224, 224), f"{name}+MSCSA (random weights)")
    model, meta = load_demo_model()
    time_methods(model, tuple(meta["input_size"]), "demo model")
    if args.localisation:
        for method in ("gradxact", "gradcam"):
            for kind in ("key", "value"):
                report = evaluate_localisation(model, meta, args.localisation, method, kind)
                print("\n".join(report.lines()))


if __name__ == "__main__":
    main()
