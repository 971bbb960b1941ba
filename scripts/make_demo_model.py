"""Train the demo model: a small backbone + MSCSA on the synthetic multi-scale shapes, on the CPU.

    python scripts/make_demo_model.py                 # about 13 minutes on 2 cores
    python scripts/make_demo_model.py --minutes 3 --out /tmp/demo   # a quicker, weaker model

Writes DIR/demo_model.safetensors (fp16 weights) and DIR/demo_model.json (classes, input size,
backbone, MSCSA settings, held-out accuracy, the command that made it). The app and the saliency
tools load it by default, so the maps mean something without any download.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from mscsa_lab.paths import ASSETS_DIR
from mscsa_lab.io.checkpoints import save_checkpoint
from mscsa_lab.registry import create_mscsa_model
from mscsa_lab.data.synthetic import CLASSES, make_sample

BACKBONE = "resnet10t"
BACKBONE_KWARGS = {"channels": [32, 64, 128, 256]}
MSCSA = dict(pool_stride=8, squeeze_ratio=0.25, depth=1, num_heads=4, key_dim=16, mlp_ratio=2.0)
HELD_OUT_OFFSET = 1_000_000
MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None]
STD = torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]


def generate(count: int, offset: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (N x 3 x size x size uint8), labels and object size fractions."""
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    fractions = np.empty(count, dtype=np.float32)
    for i in range(count):
        sample = make_sample(offset + i, seed, size)
        images[i], labels[i], fractions[i] = sample.image, sample.label, sample.size_fraction
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels), torch.from_numpy(fractions)


def normalise(batch: torch.Tensor) -> torch.Tensor:
    return (batch.float() / 255.0 - MEAN) / STD


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 200) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch):
        logits = model(normalise(images[start:start + batch]))
        correct += int((logits.argmax(-1) == labels[start:start + batch]).sum())
    return correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ASSETS_DIR))
    parser.add_argument("--minutes", type=float, default=12.0, help="training time budget (default: 12)")
    parser.add_argument("--train", type=int, default=20000, help="training images (default: 20000)")
    parser.add_argument("--held-out", type=int, default=1000, help="held-out images (default: 1000)")
    parser.add_argument("--size", type=int, default=96, help="image size (default: 96)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--curriculum", type=float, default=0.4,
                        help="fraction of the budget over which small objects are phased in (default: 0.4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()

    train_x, train_y, train_fraction = generate(args.train, 0, args.seed, args.size)
    test_x, test_y, _ = generate(args.held_out, HELD_OUT_OFFSET, args.seed, args.size)
    print(f"generated {args.train} + {args.held_out} images in {time.time() - started:.0f} s", flush=True)

    model = create_mscsa_model(backbone=BACKBONE, config=MSCSA, num_classes=len(CLASSES),
                               backbone_kwargs=BACKBONE_KWARGS)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    budget = args.minutes * 60
    train_start = time.time()
    step = 0
    # Objects from 12% to 80% of the image are hard to learn at once from scratch in a few CPU
    # minutes: start with large objects and phase the small ones in (a size curriculum), with a
    # cosine learning-rate schedule over the time budget.
    generator = torch.Generator().manual_seed(args.seed)
    while (elapsed := time.time() - train_start) < budget:
        progress = elapsed / budget
        smallest = 0.45 * max(0.0, 1.0 - progress / args.curriculum) if args.curriculum > 0 else 0.0
        pool = torch.nonzero(train_fraction >= smallest).flatten()
        index = pool[torch.randint(len(pool), (args.batch,), generator=generator)]
        for group in optimizer.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        model.train()
        images = normalise(train_x[index])
        flip = torch.rand(len(index), generator=generator) < 0.5
        images[flip] = images[flip].flip(-1)
        loss = F.cross_entropy(model(images), train_y[index], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} ({step * args.batch / args.train:.1f} epochs) loss {loss.item():.3f} "
                  f"lr {optimizer.param_groups[0]['lr']:.2e} smallest object {smallest:.2f} {elapsed / 60:.1f} min",
                  flush=True)
    train_minutes = (time.time() - train_start) / 60
    held_out = accuracy(model, test_x, test_y)
    print(f"held-out accuracy {held_out:.3f} after {step} steps ({step * args.batch / args.train:.1f} epochs, "
          f"{train_minutes:.1f} min); {params / 1e6:.2f} M parameters", flush=True)

    out = Path(args.out)
    command = "python scripts/make_demo_model.py " + " ".join(sys.argv[1:])
    weights = save_checkpoint(model, out / "demo_model.safetensors", half=True,
                              metadata={"backbone": BACKBONE, "held_out_accuracy": f"{held_out:.4f}"})
    metadata = {
        "classes": list(CLASSES),
        "input_size": [args.size, args.size],
        "backbone": BACKBONE,
        "backbone_kwargs": BACKBONE_KWARGS,
        "mscsa": MSCSA,
        "held_out_accuracy": round(held_out, 4),
        "held_out_images": args.held_out,
        "train_images": args.train,
        "train_steps": step,
        "train_minutes": round(train_minutes, 1),
        "parameters": params,
        "seed": args.seed,
        "held_out_offset": HELD_OUT_OFFSET,
        "preprocessing": {"mean": MEAN.flatten().tolist(), "std": STD.flatten().tolist(), "fit": "pad"},
        "command": command.strip(),
        "torch": torch.__version__,
    }
    (out / "demo_model.json").write_text(json.dumps(metadata, indent=2) + "\n")
    print(f"wrote {weights} ({weights.stat().st_size / 2**20:.1f} MB) and {out / 'demo_model.json'}")


if __name__ == "__main__":
    main()
