"""Distillation on the synthetic shapes: agreement with the teacher, and where the distilled run's
per-scale maps peak, against a peak at the image centre.

    nice -n 10 python benchmarks/distill_maps.py                              # trains its teacher
    nice -n 10 python benchmarks/distill_maps.py --teacher T.safetensors --steps 300 --images 100

The teacher is a plain timm backbone (its own classifier) trained here on shapes of another seed
and saved as safetensors with a ``classes.json`` beside it (or ``--teacher``: such a file). The
run distills it (``mode="distill"``) from a flat folder of unlabelled shape images; held-out shape
images (another seed) with their boxes then give:

* agreement: the student's top class is the teacher's (%), and KL(teacher || student);
* peak-in-box per scale: for each key scale of CSA layer 1 of block 0 (gradxact, the teacher's
  class as target), the token with the highest value; a hit when the centre of that token's cell
  (on the scale's own grid, mapped onto the image) lies inside the object's box. The centre
  baseline: the image centre inside the box. Images go in whole (resized, no crop), so the boxes
  keep their coordinates.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mscsa_lab.data.shapes_dataset import write_shapes_folder  # noqa: E402
from mscsa_lab.data.synthetic import CLASSES, make_sample  # noqa: E402

NARROW = {"channels": [32, 64, 128, 256]}
MSCSA = dict(pool_stride=8, squeeze_ratio=0.25, depth=1, num_heads=4, key_dim=16, mlp_ratio=2.0)


def train_teacher(path: Path, size: int, steps: int, min_fraction: float, batch: int = 32) -> None:
    import safetensors.torch
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=len(CLASSES), **NARROW)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps, pct_start=0.1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for step in range(steps):
        samples = [make_sample(step * batch + i, seed=17, size=size, min_fraction=min_fraction) for i in range(batch)]
        x = torch.stack([(torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 - mean) / std for s in samples])
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([s.label for s in samples]), label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def peak_in_box(model, meta: dict, folder: Path, teacher) -> dict:
    """Hits per key scale and for the image centre over the images of ``folder`` (boxes.json)."""
    from PIL import Image

    from mscsa_lab.explain.saliency import compute_saliency

    boxes = json.loads((folder / "boxes.json").read_text())
    mean = torch.tensor(meta["preprocessing"]["mean"]).view(3, 1, 1)
    std = torch.tensor(meta["preprocessing"]["std"]).view(3, 1, 1)
    height, width = meta["input_size"]
    hits: list[list[bool]] = []
    centre: list[bool] = []
    for name, record in boxes.items():
        image = Image.open(folder / name).convert("RGB")
        scale_x, scale_y = width / image.width, height / image.height
        x0, y0, x1, y1 = record["box"][0] * scale_x, record["box"][1] * scale_y, record["box"][2] * scale_x, \
            record["box"][3] * scale_y
        pixels = torch.from_numpy(np.array(image.resize((width, height), Image.BICUBIC))).permute(2, 0, 1)
        x = ((pixels.float() / 255 - mean) / std)[None]
        with torch.no_grad():
            target = int(teacher(x).argmax(-1))
        result = compute_saliency(model, x, "gradxact", "key", target=target)
        row = []
        for grid in result.grid_maps:
            rows, cols = grid.shape
            i, j = np.unravel_index(int(np.argmax(grid)), grid.shape)
            cx, cy = (j + 0.5) * width / cols, (i + 0.5) * height / rows
            row.append(bool(x0 <= cx < x1 and y0 <= cy < y1))
        hits.append(row)
        centre.append(bool(x0 <= width / 2 < x1 and y0 <= height / 2 < y1))
    per_scale = (100.0 * np.mean(hits, axis=0)).round(1).tolist()
    return {"images": len(centre), "peak_in_box_per_scale": per_scale, "centre_in_box": round(100.0 * np.mean(centre), 1),
            "grids": [list(g.shape) for g in result.grid_maps]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default=None, help="weights file of a plain resnet10t (narrow) with its classifier")
    parser.add_argument("--teacher-steps", type=int, default=300)
    parser.add_argument("--min-fraction", type=float, default=0.3,
                        help="smallest object side / image side (0.3: a teacher learns them in a few hundred steps)")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--photos", type=int, default=60, help="unlabelled training images")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=100, help="held-out images scored")
    parser.add_argument("--score-min-fraction", type=float, default=None,
                        help="object sizes of the scored images (default: --min-fraction)")
    parser.add_argument("--reuse", action="store_true", help="score the run already in --work instead of training")
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "mscsa_lab" / "distill_maps"))
    args = parser.parse_args()
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    started = time.perf_counter()

    if args.teacher:
        teacher_file = Path(args.teacher)
    else:
        teacher_file = work / f"teacher-resnet10t-{args.img_size}px-{args.teacher_steps}-{args.min_fraction}.safetensors"
        if not teacher_file.is_file():
            train_teacher(teacher_file, args.img_size, args.teacher_steps, args.min_fraction)
    classes_file = work / "classes.json"
    classes_file.write_text(json.dumps(list(CLASSES)))

    from mscsa_lab.io.checkpoints import load_trained
    from mscsa_lab.train import TrainConfig, train
    from mscsa_lab.train.teacher import load_teacher

    photos = write_shapes_folder(work / f"photos-{args.photos}-{args.min_fraction}", args.photos, args.img_size, seed=3,
                                 flat=True, min_fraction=args.min_fraction)
    scored = args.min_fraction if args.score_min_fraction is None else args.score_min_fraction
    held_out = write_shapes_folder(work / f"held-out-{args.images}-{scored}", args.images, args.img_size,
                                   seed=4, flat=True, boxes=True, min_fraction=scored)
    out = work / "run"
    config = TrainConfig(data=str(photos), mode="distill", backbone="resnet10t", backbone_kwargs=NARROW, mscsa=MSCSA,
                         pretrained_file=str(teacher_file), teacher_classes=str(classes_file), img_size=args.img_size,
                         batch_size=args.batch, epochs=10_000, max_steps=args.steps, workers=0, out=str(out))
    if args.reuse and (out / "model.json").is_file():
        model, meta = load_trained(out)
        result = argparse.Namespace(steps=meta["training"]["steps"], metrics=meta["metrics"])
    else:
        result = train(config)
        model, meta = load_trained(out)
    teacher = load_teacher("resnet10t", pretrained_file=str(teacher_file), backbone_kwargs=NARROW).model

    # agreement on the scored held-out images too (whole images, as the maps see them)
    maps = peak_in_box(model, meta, held_out, teacher)
    from PIL import Image

    mean = torch.tensor(meta["preprocessing"]["mean"]).view(3, 1, 1)
    std = torch.tensor(meta["preprocessing"]["std"]).view(3, 1, 1)
    right, wanted, got = [], [], []
    for name, record in json.loads((held_out / "boxes.json").read_text()).items():
        pixels = torch.from_numpy(np.array(Image.open(held_out / name).convert("RGB"))).permute(2, 0, 1)
        x = ((pixels.float() / 255 - mean) / std)[None]
        with torch.no_grad():
            wanted.append(int(teacher(x).argmax()))
            got.append(int(model(x).argmax()))
        right.append(CLASSES[wanted[-1]] == record["label"])
    chance = 100.0 * np.bincount(wanted).max() / len(wanted)
    print(f"teacher {teacher_file.name}: top-1 {100 * np.mean(right):.1f}% on {len(right)} held-out shape images")
    print(f"distilled {result.steps} steps x batch {args.batch} on {args.photos} unlabelled images at {args.img_size} px: "
          f"agreement on its own held-out split {result.metrics['agreement_top1']:.1f}% (top-5 "
          f"{result.metrics['agreement_top5']:.1f}%, KL {result.metrics['kl']:.4f}, {result.metrics['images']} images); "
          f"on the {len(wanted)} scored images {100 * np.mean(np.array(wanted) == np.array(got)):.1f}% "
          f"(chance, the teacher's most common class: {chance:.1f}%)")
    print(f"tokens per scale {meta['tokens']['tokens_per_scale']} (grids {meta['tokens']['scale_grids']})")
    print(f"peak-in-box on {maps['images']} held-out images (objects of {scored:g}-0.8 of the side), gradxact on keys, block 0 layer 1, per scale "
          f"X0/X1/X2: {maps['peak_in_box_per_scale']} %; image centre in the box: {maps['centre_in_box']} %")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
