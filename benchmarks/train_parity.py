"""Our training engine against timm's own ``train.py``: the same ImageFolder, model, image size,
batch and number of optimizer steps; held-out top-1 at the end and training images/s, side by side.

    nice -n 10 python benchmarks/train_parity.py                      # digits + shapes, scratch + mscsa-only
    nice -n 10 python benchmarks/train_parity.py --datasets digits --modes scratch --epochs 2
    nice -n 10 python benchmarks/train_parity.py --seeds 3      # each row: the mean of seeds 0, 1, 2 per side
    python benchmarks/train_parity.py --timm-train ~/src/pytorch-image-models/train.py

Datasets, made offline in ``--cache`` (default ``~/.cache/mscsa_lab/parity``), never in the tree:

* ``digits``: scikit-learn's 1797 handwritten digits (8x8 grey, 10 classes), upscaled to the image
  size, 20% of each class held out (``pip install scikit-learn``; the data ships with it);
* ``shapes``: ``mscsa_lab.data.synthetic`` shapes on clutter, written as PNGs (``train/``, ``val/``).

Modes: ``scratch`` (everything from random weights) and ``mscsa-only`` (backbone frozen, in eval
mode, with trained weights: a plain timm backbone trained here on other synthetic shapes, saved as
safetensors in the cache; MSCSA and its head train).

timm's side: its ``train.py`` run as a subprocess with its standard recipe for AdamW (cosine per
update, one warm-up epoch, label smoothing 0.1, its default augmentation and the model's data
config), ``--epochs`` equal to ours so the step counts match. ``train.py`` is not part of timm's
wheel, nor of the source distribution of recent versions; the script looks for it in
``--timm-train``, then in the cache, then in the source distribution of the installed timm version
(``pip download --no-binary :all: --no-deps timm==VERSION``), and otherwise says where to put it.
The model: ``create_mscsa_model`` with the same arguments on both sides (registered with timm for
``train.py`` under the name ``parity_mscsa`` by this script, which imports mscsa_lab first).

Both sides train with one recipe: timm's AdamW recipe above, given to the engine as its own settings, and
the engine's augmentation for small images (crop range, flips, no colour jitter), given to ``train.py``
through its flags; the engines' own defaults differ (the engine starts without warm-up and keeps more of
a small image in its crops), and comparing defaults would measure those choices rather than the engines.

Both sides run one after the other in fresh processes with the same thread count (``--threads``)
and no loader workers, so their images/s compare within one run of this script. A few hundred steps on
a few hundred held-out images move top-1 by a few points from one seed to the next on either side
(initialisation, loader order); ``--seeds N`` trains each side with seeds 0..N-1 and compares the means
(each seed's pair is printed too, and the spread across seeds beside the mean).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's mscsa_lab, also in the subprocesses (PYTHONPATH)
CACHE = Path.home() / ".cache" / "mscsa_lab" / "parity"
BACKBONE = "resnet10t"
BACKBONE_KWARGS = {"channels": [32, 64, 128, 256]}
MSCSA = dict(pool_stride=8, squeeze_ratio=0.25, depth=1, num_heads=4, key_dim=16, mlp_ratio=2.0)
# timm's train.py recipe for AdamW at these run lengths (everything else: train.py's defaults).
TIMM_RECIPE = ["--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.05", "--sched", "cosine", "--sched-on-updates",
               "--warmup-epochs", "1", "--warmup-lr", "1e-6", "--min-lr", "0", "--smoothing", "0.1"]


# ---------------------------------------------------------------------- timm's train.py
def find_timm_train(explicit: str | None, cache: Path) -> Path:
    import timm

    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            sys.exit(f"--timm-train {path} does not exist")
        return path
    folder = cache / f"timm-{timm.__version__}"
    target = folder / "train.py"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"timm-{timm.__version__}.tar.gz"
    if not archive.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                        f"timm=={timm.__version__}", "-d", str(folder)], check=False, capture_output=True)
    if archive.is_file():
        with tarfile.open(archive) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("/train.py") and m.name.count("/") == 1),
                          None)
            if member is not None:
                target.write_bytes(tar.extractfile(member).read())
                return target
    sys.exit(f"timm {timm.__version__}'s train.py was not found: its source distribution on PyPI does not include "
             f"it. Put the train.py of the timm repository (tag v{timm.__version__}, or the nearest) at {target}, or "
             f"pass --timm-train PATH.")


def timm_wrapper_main(train_py: str, seed: int, argv: list[str]) -> None:
    """Run timm's train.py in this process with ``parity_mscsa`` registered (called in the subprocess)."""
    import runpy

    import torch
    from timm.models import register_model
    from torch import nn

    from mscsa_lab.registry import create_mscsa_model

    @register_model
    def parity_mscsa(pretrained: bool = False, backbone: str = BACKBONE, backbone_kwargs: dict | None = None,
                     config: dict | None = None, pretrained_file: str | None = None, freeze: bool = False,
                     num_classes: int = 1000, drop_rate: float = 0.0, img_size: int | None = None, **unused):
        model = create_mscsa_model(backbone=backbone, config=config, num_classes=num_classes, drop_rate=drop_rate,
                                   pretrained_file=pretrained_file, backbone_kwargs=backbone_kwargs,
                                   img_size=img_size)
        if freeze:  # as the engine's mscsa-only: no gradients, BatchNorm statistics kept
            model.backbone.requires_grad_(False)

            def train_mode(self, mode: bool = True):
                nn.Module.train(self, mode)
                self.backbone.eval()
                return self

            model.train = train_mode.__get__(model)
        return model

    torch.manual_seed(seed)
    sys.argv = [train_py, *argv]
    runpy.run_path(train_py, run_name="__main__")


def run_timm(train_py: Path, data: Path, out: Path, args, mode: str, classes: int, weights: Path | None,
             seed: int = 0) -> dict:
    kwargs = [f"backbone={args.backbone}", f"backbone_kwargs={BACKBONE_KWARGS!r}", f"config={MSCSA!r}"]
    if mode == "mscsa-only":
        kwargs += [f"pretrained_file={weights}", "freeze=True"]
    command = [sys.executable, __file__, "--as-timm", str(train_py), str(seed), "--",
               "--data-dir", str(data), "--train-split", "train", "--val-split", "val", "--model", "parity_mscsa",
               "--model-kwargs", *kwargs, "--num-classes", str(classes), "--img-size", str(args.img_size),
               "-b", str(args.batch), "--epochs", str(args.epochs), *TIMM_RECIPE,
               *timm_augmentation_flags(args.img_size), "-j", "0", "--no-prefetcher",
               "--device", "cpu", "--seed", str(seed), "--log-interval", "10", "--checkpoint-hist", "1",
               "--output", str(out), "--experiment", "run"]
    log = _run(command, args.threads)
    summary = (out / "run" / "summary.csv").read_text().strip().splitlines()
    header = summary[0].split(",")
    last = dict(zip(header, summary[-1].split(",")))
    # the last log line of each epoch: "(avg s per update, avg images/s)"
    seconds, updates = 0.0, 0
    for epoch_lines in _epoch_lines(log):
        match = re.search(r"\[\s*(\d+)/(\d+).*\(([\d.]+)s,\s*([\d.]+)/s\)", epoch_lines[-1])
        if match:
            count = int(match.group(2))
            seconds += float(match.group(3)) * count
            updates += count
    return dict(top1=float(last["eval_top1"]), steps=updates, images_per_s=updates * args.batch / max(seconds, 1e-9))


def _epoch_lines(log: str) -> list[list[str]]:
    by_epoch: dict[str, list[str]] = {}
    for line in log.splitlines():
        match = re.search(r"Train: (\d+) \[", line)
        if match:
            by_epoch.setdefault(match.group(1), []).append(line)
    return [by_epoch[k] for k in sorted(by_epoch, key=int)]


# ---------------------------------------------------------------------- our engine
def engine_main(spec: str) -> None:
    """Train with the engine's defaults (called in the subprocess) and print the result as JSON."""
    from mscsa_lab.train import TrainConfig, train

    values = json.loads(spec)
    result = train(TrainConfig(**values))
    print("RESULT " + json.dumps(dict(top1=result.metrics.get("top1"), steps=result.steps,
                                      images_per_s=result.images_per_s)))


def shared_augmentation(img_size: int) -> dict:
    """The training transform both sides use: the engine's crop range for this image size, flips, no colour
    jitter (timm's train.py is given the same through its flags), so the gap measures the engines."""
    from mscsa_lab.train.data import default_crop_scale

    return dict(scale=default_crop_scale(img_size), hflip=0.5, color_jitter=0.0)


def timm_augmentation_flags(img_size: int) -> list[str]:
    shared = shared_augmentation(img_size)
    return ["--scale", *map(str, shared["scale"]), "--hflip", str(shared["hflip"]),
            "--color-jitter", str(shared["color_jitter"])]


def steps_per_epoch(data: Path, batch: int) -> int:
    """timm's warm-up epoch in updates (train.py drops the last partial batch)."""
    images = sum(1 for path in (data / "train").rglob("*.png"))
    return max(1, images // batch)


def run_engine(data: Path, args, mode: str, weights: Path | None, seed: int = 0) -> dict:
    # timm's recipe (TIMM_RECIPE) spelled in the engine's terms: lr, one warm-up epoch per update, label smoothing
    values = dict(data=str(data), backbone=args.backbone, backbone_kwargs=BACKBONE_KWARGS, mscsa=MSCSA,
                  mode=mode, img_size=args.img_size, batch_size=args.batch, epochs=args.epochs, workers=0, seed=seed,
                  eval_every=0, lr=1e-3, weight_decay=0.05, warmup_steps=steps_per_epoch(data, args.batch),
                  warmup_lr=1e-6, min_lr=0.0, smoothing=0.1, **shared_augmentation(args.img_size))
    if mode == "mscsa-only":
        values["pretrained_file"] = str(weights)
    log = _run([sys.executable, __file__, "--as-engine", json.dumps(values)], args.threads)
    line = next(line for line in log.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _run(command: list[str], threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command[:6])} ...\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


# ---------------------------------------------------------------------- data and weights
def write_digits(root: Path, size: int) -> int:
    """scikit-learn's digits as PNGs, 20% of each class in val/ (seeded)."""
    from PIL import Image

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("the digits come with scikit-learn: pip install scikit-learn (or --datasets shapes)")

    if (root / "done").is_file():
        return 10
    digits = load_digits()
    rng = np.random.default_rng(0)
    for label in range(10):
        indices = np.flatnonzero(digits.target == label)
        rng.shuffle(indices)
        held = set(indices[: round(0.2 * len(indices))].tolist())
        for index in indices:
            folder = root / ("val" if index in held else "train") / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
            Image.fromarray(pixels).resize((size, size), Image.BICUBIC).convert("RGB").save(folder / f"{index}.png")
    (root / "done").write_text("ok\n")
    return 10


def write_shapes(root: Path, size: int, train: int, val: int, seed: int = 0) -> int:
    from mscsa_lab.data.shapes_dataset import write_shapes_folder

    if not (root / "done").is_file():
        write_shapes_folder(root / "train", train, size, seed=seed)
        write_shapes_folder(root / "val", val, size, seed=seed, offset=1_000_000)
        (root / "done").write_text("ok\n")
    return 5


def pretrained_backbone(cache: Path, args) -> Path:
    """A plain timm backbone (its own classifier) trained briefly on synthetic shapes of another
    seed than the benchmark's, saved as safetensors: the 'trained weights' of mscsa-only."""
    path = cache / f"{args.backbone}-shapes-{args.img_size}px.safetensors"
    if path.is_file():
        return path
    import safetensors.torch
    import timm
    import torch
    from mscsa_lab.data.synthetic import CLASSES, make_sample

    torch.manual_seed(0)
    model = timm.create_model(args.backbone, num_classes=len(CLASSES), **BACKBONE_KWARGS)
    steps = args.pretrain_steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps, pct_start=0.1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    model.train()
    for step in range(steps):
        samples = [make_sample(step * args.batch + i, seed=17, size=args.img_size) for i in range(args.batch)]
        x = torch.stack([(torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 - mean) / std for s in samples])
        flip = torch.rand(len(x)) < 0.5
        x[flip] = x[flip].flip(-1)
        y = torch.tensor([s.label for s in samples])
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# ---------------------------------------------------------------------- main
def _row(dataset: str, label: str, ours: dict, theirs: dict) -> str:
    return (f"{dataset:8} {label:15} {ours['steps']:>5} {ours['top1']:>10.2f} {theirs['top1']:>10.2f} "
            f"{ours['top1'] - theirs['top1']:>+6.2f} {ours['images_per_s']:>10.1f} {theirs['images_per_s']:>10.1f}"
            + ("" if ours["steps"] == theirs["steps"] else f"  (timm ran {theirs['steps']} steps)"))


def _mean(results: list[dict]) -> dict:
    """The seeds' mean of top-1 and images/s; ``spread``: max - min of top-1."""
    top1 = [r["top1"] for r in results]
    return dict(top1=float(np.mean(top1)), steps=results[0]["steps"], spread=max(top1) - min(top1),
                images_per_s=float(np.mean([r["images_per_s"] for r in results])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,shapes")
    parser.add_argument("--modes", default="scratch,mscsa-only")
    parser.add_argument("--backbone", default=BACKBONE)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of both sides (equal steps)")
    parser.add_argument("--shapes", type=int, nargs=2, default=(1600, 400), metavar=("TRAIN", "VAL"))
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=1, help="seeds per side; rows compare the means (default: 1)")
    parser.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--timm-train", default=None, help="path of timm's train.py")
    parser.add_argument("--cache", default=str(CACHE))
    args = parser.parse_args()
    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    train_py = find_timm_train(args.timm_train, cache)
    import hashlib

    import timm

    import mscsa_lab

    print(f"mscsa_lab from {Path(mscsa_lab.__file__).parent}", flush=True)
    print(f"timm {timm.__version__}; train.py {train_py} (sha256 {hashlib.sha256(train_py.read_bytes()).hexdigest()[:12]})"
          f"; model {args.backbone} {BACKBONE_KWARGS} + MSCSA {MSCSA}; {args.img_size} px, batch {args.batch}, "
          f"{args.epochs} epochs, {args.threads} threads", flush=True)
    modes = args.modes.split(",")
    weights = pretrained_backbone(cache, args) if "mscsa-only" in modes else None
    rows = []
    print(f"{'dataset':8} {'mode':15} {'steps':>5} {'ours top-1':>10} {'timm top-1':>10} {'diff':>6} "
          f"{'ours img/s':>10} {'timm img/s':>10}", flush=True)
    for dataset in args.datasets.split(","):
        folder = cache / f"{dataset}-{args.img_size}px"
        if dataset == "digits":
            classes = write_digits(folder, args.img_size)
        elif dataset == "shapes":
            classes = write_shapes(folder, args.img_size, *args.shapes)
        else:
            sys.exit(f"unknown dataset {dataset!r}: digits or shapes")
        for mode in modes:
            pairs = []
            for seed in range(max(1, args.seeds)):
                ours = run_engine(folder, args, mode, weights, seed)
                theirs = run_timm(train_py, folder, cache / "timm-runs" / f"{dataset}-{mode}-{seed}-{int(time.time())}",
                                  args, mode, classes, weights, seed)
                pairs.append((ours, theirs))
                label = mode if args.seeds <= 1 else f"{mode} s{seed}"
                print(_row(dataset, label, ours, theirs), flush=True)
            if args.seeds > 1:
                ours, theirs = _mean([p[0] for p in pairs]), _mean([p[1] for p in pairs])
                spread = f"  (seed spread: ours {ours['spread']:.2f}, timm {theirs['spread']:.2f} points)"
                print(_row(dataset, f"{mode} mean", ours, theirs) + spread, flush=True)
            rows.append(dict(dataset=dataset, mode=mode, seeds=[dict(seed=i, ours=o, timm=t)
                                                                  for i, (o, t) in enumerate(pairs)],
                             ours=ours, timm=theirs))
    (cache / "last_parity.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--as-timm":
        timm_wrapper_main(sys.argv[2], int(sys.argv[3]), sys.argv[5:])
    elif len(sys.argv) > 2 and sys.argv[1] == "--as-engine":
        engine_main(sys.argv[2])
    else:
        main()
