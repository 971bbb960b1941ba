"""Training on the synthetic shapes for a fixed number of steps: accuracy, images/s and wall time of
the backbone alone (a linear head on its pooled stride-32 map) and of backbone + MSCSA, with the
backbone frozen (MSCSA-only vs. a linear probe) and fully trained, at equal steps and batch.

    python benchmarks/train_speed.py                                  # demo-sized model, 96x96
    python benchmarks/train_speed.py --steps 300 --modes frozen       # longer, frozen backbone only
    python benchmarks/train_speed.py --profile resnet18 --img-size 224 --steps 20
    python benchmarks/train_speed.py --throughput resnet18 pvt_v2_b0 resnet50 --img-size 224 --batch 16

``--throughput`` only measures training images/s of full models (profiles or timm backbones): a few
steps each, the first (warm-up) step not counted.
"""
from __future__ import annotations

import argparse
import time
import warnings

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

import torch
from torch import nn

from mscsa_lab.models.backbones import StageFeatures
from mscsa_lab.registry import create_mscsa_model, resolve_name
from mscsa_lab.train import TrainConfig, train

DEMO_BACKBONE = "resnet10t"
DEMO_BACKBONE_KWARGS = {"channels": [32, 64, 128, 256]}
DEMO_MSCSA = dict(pool_stride=8, squeeze_ratio=0.25, depth=1, num_heads=4, key_dim=16, mlp_ratio=2.0)
MODES = {"frozen": "mscsa-only", "full": "scratch"}


class LinearProbe(nn.Module):
    """The same backbone, global-average-pooled stride-32 map, one linear layer: the baseline."""

    def __init__(self, backbone: str, num_classes: int, **backbone_kwargs) -> None:
        super().__init__()
        self.backbone = StageFeatures(backbone, **backbone_kwargs)
        self.head = nn.Linear(self.backbone.channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[-1].mean(dim=(2, 3)))


def run(model: nn.Module, config: TrainConfig) -> dict:
    steps: list[tuple[float, int]] = []

    def on_event(event) -> None:
        if event.kind == "step":
            steps.append((time.perf_counter(), event.step))

    start = time.perf_counter()
    result = train(config, callbacks=[on_event], model=model)
    wall = time.perf_counter() - start
    # images/s after the first (warm-up) step, evaluation excluded
    global_batch = config.batch_size * config.accum_steps
    rate = ((steps[-1][1] - steps[0][1]) * global_batch / (steps[-1][0] - steps[0][0])) if len(steps) > 1 else 0.0
    return dict(top1=result.metrics.get("top1"), rate=rate, wall=wall, steps=result.steps,
                params=sum(p.numel() for p in model.parameters()),
                trainable=sum(p.numel() for p in model.parameters() if p.requires_grad))


def comparison(args: argparse.Namespace) -> None:
    if args.profile:
        label, profile = resolve_name(args.profile)
        backbone = profile.backbone if profile is not None else label
        backbone_kwargs, mscsa = {}, {}
        profile_name = profile.name if profile is not None else None
    else:
        backbone, backbone_kwargs, mscsa, profile_name, label = (DEMO_BACKBONE, DEMO_BACKBONE_KWARGS, DEMO_MSCSA, None,
                                                                 "demo (resnet10t/2 + MSCSA 1/8)")
    print(f"synthetic shapes, {args.synthetic_train} training / {args.synthetic_val} held-out images at "
          f"{args.img_size} px; {args.steps} steps of batch {args.batch}; {torch.get_num_threads()} CPU threads; "
          f"model {label}\n")
    print("| Mode | Model | Trainable params (M) | Held-out top-1 (%) | Train images/s | Wall (s) |")
    print("|---|---|---:|---:|---:|---:|")
    for mode in args.modes:
        config = TrainConfig(data="synthetic", backbone=backbone, profile=profile_name, mode=MODES[mode],
                             img_size=args.img_size, epochs=10_000, max_steps=args.steps, batch_size=args.batch,
                             lr=args.lr, synthetic_train=args.synthetic_train, synthetic_val=args.synthetic_val,
                             workers=args.workers, seed=args.seed, eval_every=0)
        for name in ("backbone + linear", "backbone + MSCSA"):
            torch.manual_seed(args.seed)  # the same backbone initialisation for both
            if name == "backbone + linear":
                model = LinearProbe(backbone, 5, **backbone_kwargs)
            else:
                model = create_mscsa_model(profile_name, backbone=backbone, num_classes=5, img_size=args.img_size,
                                           backbone_kwargs=backbone_kwargs or None, **mscsa)
            row = run(model, config)
            print(f"| {mode} | {name} | {row['trainable'] / 1e6:.3f} | {row['top1']:.1f} | {row['rate']:.1f} | "
                  f"{row['wall']:.1f} |", flush=True)


def throughput(args: argparse.Namespace) -> None:
    print(f"training images/s (fp32, batch {args.batch}, {args.img_size}x{args.img_size}, {args.steps} steps, first "
          f"not counted; {torch.get_num_threads()} CPU threads; frozen = mscsa-only, full = every parameter)\n")
    print("| Model | Mode | Params (M) | Trainable (M) | Train images/s | s/step |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.throughput:
        label, profile = resolve_name(name)
        for mode in args.modes:
            config = TrainConfig(data="synthetic", profile=profile.name if profile else None,
                                 backbone=None if profile else label, mode=MODES[mode], img_size=args.img_size,
                                 epochs=1, max_steps=args.steps, batch_size=args.batch,
                                 synthetic_train=args.batch * args.steps, synthetic_val=0, workers=args.workers,
                                 augment=False, eval_every=0)
            torch.manual_seed(args.seed)
            model = create_mscsa_model(config.profile, backbone=config.backbone, num_classes=5,
                                       img_size=args.img_size)
            row = run(model, config)
            model_name = f"{profile.name}_mscsa" if profile else f"{label} + MSCSA"
            print(f"| {model_name} | {mode} | {row['params'] / 1e6:.2f} | {row['trainable'] / 1e6:.2f} | "
                  f"{row['rate']:.1f} | {args.batch / row['rate']:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="a Table 7 profile or timm backbone (default: the demo-sized model)")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per run (default: 150)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--synthetic-train", type=int, default=5000)
    parser.add_argument("--synthetic-val", type=int, default=500)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--throughput", nargs="+", metavar="NAME", help="only measure training images/s of these")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.throughput:
        throughput(args)
    else:
        comparison(args)


if __name__ == "__main__":
    main()
