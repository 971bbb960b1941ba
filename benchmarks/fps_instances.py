"""Is a disagreement between two benchmark runs the models or the machine?

    python benchmarks/fps_instances.py [profile] [--batch 8] [--rounds 30]

Builds the backbone and backbone+MSCSA twice (instances a and b, separately initialised) and times
all four interleaved in one run. If the two +MSCSA/backbone ratios agree with each other while
separate runs of `mscsa-lab benchmark` disagree, the drift comes from the machine between runs,
not from the models (their weights or memory placement). Prints both ratios and b/a with their
95% intervals.
"""
from __future__ import annotations

import argparse
import warnings

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

from mscsa_lab.analysis.compare import build_pair
from mscsa_lab.bench.fps import compare_fps
from mscsa_lab.bench.settings import BenchmarkSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", nargs="?", default="pvt_v2_b0", help="a Table 7 profile (default: pvt_v2_b0)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    models = {}
    for tag in ("a", "b"):  # built the way `mscsa-lab benchmark` builds its pair
        _, _, models[f"backbone {tag}"], models[f"+MSCSA {tag}"] = build_pair(args.profile, (224, 224), "classification")
    settings = BenchmarkSettings(device=args.device, batch=args.batch, repeats=args.rounds, max_repeats=args.rounds)
    result = compare_fps(models, (224, 224), settings)

    def show(label: str, numerator: str, denominator: str) -> None:
        interval = result.pair_interval(numerator, denominator)
        print(f"{label:28s} {interval.median:.3f} [{interval.low:.3f}, {interval.high:.3f}]")

    print(f"{args.profile}, batch {args.batch}, {result.rounds} rounds interleaved, 224x224")
    show("+MSCSA a / backbone a", "+MSCSA a", "backbone a")
    show("+MSCSA b / backbone b", "+MSCSA b", "backbone b")
    show("backbone b / backbone a", "backbone b", "backbone a")
    show("+MSCSA b / +MSCSA a", "+MSCSA b", "+MSCSA a")


if __name__ == "__main__":
    main()
