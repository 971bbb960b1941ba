"""The paper's Fig. 1b claim (coarser scales cover whole objects, finer ones parts), measured: on
held-out synthetic shapes, the area above half maximum per scale, the share of a large object's
cells it covers, and where each scale's hottest cell falls, with the centre and random baselines.

    python benchmarks/scale_extent.py [--images 200] [--run RUN_DIR] [--faithfulness 20]

``--run`` adds a model trained on the synthetic shapes (``mscsa-lab train --data synthetic``).
"""
from __future__ import annotations

import argparse
import warnings

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

import torch  # noqa: E402

from mscsa_lab.data.synthetic import CLASSES  # noqa: E402
from mscsa_lab.errors import UserError  # noqa: E402
from mscsa_lab.explain.evaluation import evaluate_localisation  # noqa: E402
from mscsa_lab.explain.faithfulness import evaluate_faithfulness  # noqa: E402
from mscsa_lab.io.checkpoints import load_demo_model, load_trained  # noqa: E402

VIEWS = (("gradxact", "key"), ("gradxact", "value"), ("attention", "key"))


def synthetic_meta(meta: dict, label: str) -> dict:
    """The held-out split a model of the synthetic shapes never trained on."""
    if list(meta.get("classes", [])) != list(CLASSES):
        raise UserError(f"{label} was not trained on the synthetic shapes ({', '.join(CLASSES)}): "
                        "the object boxes needed here are known only for them")
    seed = meta.get("seed", meta.get("training", {}).get("seed", 0))
    return {**meta, "seed": seed, "held_out_offset": meta.get("held_out_offset", 1_000_000)}


def report(model, meta: dict, label: str, images: int, faithfulness: int) -> None:
    print(f"\n## {label}")
    for method, kind in VIEWS:
        result = evaluate_localisation(model, meta, images, method, kind)
        print("\n".join(result.lines()))
        if faithfulness:
            areas = evaluate_faithfulness(model, meta, faithfulness, method, kind)
            for curve, values in areas.items():
                print(f"  {curve} area over {faithfulness} images: "
                      + ", ".join(f"{name} {value:.3f}" for name, value in values.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="held-out synthetic images")
    parser.add_argument("--run", default=None, help="a training run's folder (trained on the synthetic shapes)")
    parser.add_argument("--faithfulness", type=int, default=0, help="also deletion/insertion over this many images")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = load_demo_model()
    report(model, meta, "demo model", args.images, args.faithfulness)
    if args.run:
        trained, trained_meta = load_trained(args.run)
        report(trained, synthetic_meta(trained_meta, args.run), f"trained run {args.run}", args.images,
               args.faithfulness)


if __name__ == "__main__":
    main()
