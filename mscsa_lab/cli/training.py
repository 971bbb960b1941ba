"""Commands that train: train, evaluate, ablate."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from mscsa_lab.cli.common import (Formatter, add_output_options, graceful_stop, limits_from_args, parse_json_setting,
                                  parse_setting, parse_size, print_result, progress_printer)

TRAIN_EXAMPLES = """examples:
  mscsa-lab train --data synthetic --backbone resnet10t --img-size 96 --epochs 3 --out runs/shapes
  mscsa-lab train --data photos/ --profile resnet18 --mode mscsa-only --pretrained --out runs/r18
  mscsa-lab train --data photos/ --profile resnet18 --out runs/r18 --resume   # continue a run
  mscsa-lab train --mode distill --data photos/ --backbone resnet50 --pretrained --out runs/r50   # explain it
  mscsa-lab train --mode distill --data photos/ --backbone resnet10t --pretrained-file t.safetensors \
      --teacher-classes classes.json --img-size 384 --max-steps 300 --out runs/mine
  mscsa-lab train --data synthetic --backbone resnet10t --set depth=2 --set squeeze_ratio=1/2 -b 16
  torchrun --nproc_per_node 4 -m mscsa_lab train --data imagenet/ --profile pvt_v2_b1 --amp bf16 --out runs/b1
  mscsa-lab evaluate runs/shapes --data synthetic
  mscsa-lab evaluate runs/r50 --data more_photos/ --split all   # a distilled run: agreement with its teacher
"""
ABLATE_EXAMPLES = """examples:
  mscsa-lab ablate demo --table 4 --seeds 0 1 --max-steps 300 -o table4_study.md -o table4_study.csv
  mscsa-lab ablate topformer_tiny --table 5 --img-size 96 --input 224 --no-fps
  mscsa-lab ablate topformer_tiny --table 4 --flops-only --digits 4
"""
# The engine's choices (mscsa_lab.train.config.MODES / AMP_MODES), written out so that --help needs no torch.
MODES = ("mscsa-only", "finetune", "scratch", "distill")
AMP_MODES = ("none", "bf16", "fp16")


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train", help="train a backbone+MSCSA classifier on an image folder or the synthetic shapes",
        description="Train with timm's optimizers, schedulers, losses and transforms. Writes OUT/model.safetensors, "
                    "OUT/model.json (everything needed to rebuild the model), OUT/history.csv and the resumable "
                    "OUT/last/ state (every epoch); a finished run in OUT is continued only with --resume and replaced only "
                    "with --overwrite. Several GPUs or machines: start it with torchrun.",
        epilog=TRAIN_EXAMPLES, formatter_class=Formatter)
    train.add_argument("--data", required=True, metavar="DIR|synthetic",
                       help="'synthetic' (built-in shapes, offline) or a folder: train/ and val/ of class folders, or "
                            "one folder of class folders split by --val-fraction; with --mode distill any folder of "
                            "images (labels unused)")
    train.add_argument("--backbone", help="any timm backbone with stages at strides 4..32 (e.g. resnet10t)")
    train.add_argument("--profile", help="a Table 7 profile (see 'profiles'), e.g. resnet18, pvt_v2_b0")
    train.add_argument("--mode", choices=MODES, default=None,
                       help="mscsa-only: backbone frozen, MSCSA+head train; finetune: all train; scratch: all train "
                            "from random weights; distill: no labels needed, MSCSA+head learn to reproduce the "
                            "pretrained backbone's own classifier (the teacher) on any folder of images (default: "
                            "finetune with --pretrained/--pretrained-file, else scratch)")
    train.add_argument("--epochs", type=int, default=10, help="epochs (default: 10)")
    train.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    train.add_argument("-b", "--batch", "--batch-size", dest="batch", type=int, default=32,
                       help="images per process per micro-batch (default: 32)")
    train.add_argument("--accum-steps", type=int, default=1, help="micro-batches per optimizer step (default: 1)")
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate (default: 1e-3 mscsa-only/scratch, 3e-4 finetune)")
    train.add_argument("--opt", default="adamw", help="timm optimizer name (default: adamw)")
    train.add_argument("--weight-decay", type=float, default=0.05, help="weight decay (default: 0.05)")
    train.add_argument("--sched", default="cosine", help="timm scheduler: cosine, step, poly, constant, none...")
    train.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (default: 0)")
    train.add_argument("--smoothing", type=float, default=0.1, help="label smoothing (default: 0.1)")
    train.add_argument("--mixup", type=float, default=0.0, help="mixup alpha, 0 = off (default: 0)")
    train.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha, 0 = off (default: 0)")
    train.add_argument("--ema", action="store_true", help="keep an EMA of the weights (saved as the model)")
    train.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this value")
    train.add_argument("--no-augment", action="store_true", help="no random crops/flips (evaluation transform)")
    train.add_argument("--scale", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                       help="random crop's share of the image area (default: timm's 0.08 1 at 224 px and above, a "
                            "larger LOW below so small objects stay in the crop)")
    train.add_argument("--ratio", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                       help="random crop's aspect ratios (default: 0.75 1.333)")
    train.add_argument("--hflip", type=float, default=0.5, metavar="P", help="horizontal flip probability (default: 0.5)")
    train.add_argument("--color-jitter", type=float, default=None, metavar="F",
                       help="colour jitter strength (default: 0.4 for distill, else 0)")
    train.add_argument("--aa", default=None, metavar="NAME",
                       help="timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1; 'none' = off (default: RandAugment "
                            "for distill, else off)")
    train.add_argument("--repeat", type=int, default=None, metavar="N",
                       help="times each training image is shown per epoch (default: 1; distill: enough for 25 steps "
                            "per epoch, so a few dozen photos suffice)")
    train.add_argument("--img-size", type=int, default=None,
                       help="square input size (default: the backbone's own input size, at least 224; 384 or 448 "
                            "give finer saliency maps)")
    train.add_argument("--val-fraction", type=float, default=0.2,
                       help="share held out when --data is one folder of class folders (default: 0.2)")
    train.add_argument("--synthetic-train", type=int, default=2000, help="synthetic training images (default: 2000)")
    train.add_argument("--synthetic-val", type=int, default=500, help="synthetic held-out images (default: 500)")
    train.add_argument("--out", "--output", dest="out", default=None, metavar="DIR",
                       help="output folder (default: runs/<profile or backbone>)")
    weights = train.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true",
                         help="start from the backbone's timm weights: from the local cache, else downloaded through "
                              "timm (fails at once, with what to do, when offline)")
    weights.add_argument("--pretrained-file", metavar="FILE",
                         help="start from backbone weights in this file (.safetensors, or .pth read weights-only)")
    train.add_argument("--teacher-classes", metavar="FILE",
                       help="distill: a JSON list of the teacher's class names (default: a JSON file beside the weights "
                            "file, ImageNet's names for 1000 classes, else 'class N')")
    train.add_argument("--temperature", type=float, default=1.0, metavar="T",
                       help="distill: softmax temperature of the teacher's and the student's outputs (default: 1)")
    again = train.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in --out from its last/ state")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out (a finished run, or an unfinished run's last/ state, is "
                            "otherwise never replaced)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--amp", choices=AMP_MODES, default="none",
                       help="bf16 or fp16 autocast (fp16 on CUDA only), or none = fp32 (default: none)")
    train.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels_last memory format (default: on for CUDA)")
    train.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda (default: auto)")
    train.add_argument("--workers", type=int, default=None, help="data loading processes (default: from the cores)")
    train.add_argument("--drop-path", type=float, default=None, help="MSCSA drop path rate (same as --set drop_path=F)")
    train.add_argument("--backbone-drop-path", type=float, default=0.0, help="the backbone's drop path rate")
    train.add_argument("--backbone-arg", dest="backbone_args", type=parse_json_setting, action="append", default=[],
                       metavar="NAME=VALUE", help="timm constructor argument for the backbone, e.g. "
                                                  "channels=[32,64,128,256] (repeatable)")
    train.add_argument("--set", dest="settings", type=parse_setting, action="append", default=[],
                       metavar="NAME=VALUE", help="an MSCSA setting, e.g. --set depth=2 --set squeeze_ratio=1/2 "
                                                  "(repeatable)")
    train.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs, 0 = at the end (default: 1)")
    train.add_argument("--log-every", type=int, default=1, help="progress update every N steps (default: 1)")
    train.add_argument("--no-progress", action="store_true", help="one line per epoch instead of a progress bar")
    train.add_argument("--scan-max-files", type=int, default=5_000_000, metavar="N",
                       help="refuse a data folder with more files and folders than this (default: 5000000)")
    train.add_argument("--scan-max-s", type=float, default=600.0, metavar="S",
                       help="refuse a data folder whose scan takes longer than this (default: 600 s)")
    train.set_defaults(func=run_train, _parser=train)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a trained model folder: metrics JSON, per-class CSV, confusion CSV and PNG",
        epilog=TRAIN_EXAMPLES, formatter_class=Formatter)
    evaluate.add_argument("model_dir", metavar="DIR", help="a training run's --out folder (model.safetensors + "
                                                           "model.json)")
    evaluate.add_argument("--data", required=True, metavar="DIR|synthetic", help="'synthetic' or an image folder")
    evaluate.add_argument("--split", choices=["val", "train", "all"], default="val",
                          help="val: the held-out images as in training (default); train; all (a distilled run: "
                               "val or all, its agreement with the teacher)")
    evaluate.add_argument("--out", "--output", dest="out", default=None, metavar="DIR",
                          help="where to write the files (default: DIR/eval)")
    evaluate.add_argument("-b", "--batch", "--batch-size", dest="batch", type=int, default=64,
                          help="batch size (default: 64)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    evaluate.add_argument("--workers", type=int, default=0, help="data loading processes (default: 0)")
    evaluate.add_argument("--synthetic-count", type=int, default=None,
                          help="synthetic images to evaluate (default: as many as were held out in training)")
    evaluate.set_defaults(func=run_evaluate, _parser=evaluate)

    ablate = commands.add_parser(
        "ablate", help="ablation study: train Table 4/5 variants over several seeds, top-1 mean/std beside FLOPs and FPS",
        description="Train every variant with every seed under the same data, then tabulate held-out top-1 (mean, "
                    "std, n) beside FLOPs, parameters, the paper's FLOPs and an interleaved FPS ratio. NAME 'demo' "
                    "is the demo model's shape (resnet10t at half width + a small MSCSA), quick on a CPU.",
        epilog=ABLATE_EXAMPLES, formatter_class=Formatter)
    ablate.add_argument("name", nargs="?", default="demo",
                        help="'demo' (default), a Table 7 profile (e.g. topformer_tiny) or a timm backbone")
    which = ablate.add_mutually_exclusive_group()
    which.add_argument("--table", choices=["4", "5"], default=None,
                       help="Table 4 (components: none, +pcp, +intra_ffn, +msp) or Table 5 (down-sampling) (default: 4)")
    which.add_argument("--variant", dest="variants", action="append", default=[], metavar="NAME",
                       help="a Table 4/5 variant name, e.g. --variant none --variant +msp (repeatable)")
    ablate.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    ablate.add_argument("--data", default="synthetic", metavar="synthetic|DIR",
                        help="'synthetic' (built-in shapes, default) or an image folder")
    ablate.add_argument("--max-steps", type=int, default=300, help="optimizer steps per run (default: 300)")
    ablate.add_argument("-b", "--batch", "--batch-size", dest="batch", type=int, default=32,
                        help="batch size (default: 32)")
    ablate.add_argument("--img-size", type=int, default=64, help="training image size (default: 64)")
    ablate.add_argument("--lr", type=float, default=None, help="learning rate (default: the engine's)")
    ablate.add_argument("--synthetic-train", type=int, default=2000, help="synthetic training images (default: 2000)")
    ablate.add_argument("--synthetic-val", type=int, default=500, help="synthetic held-out images (default: 500)")
    ablate.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda (default: auto)")
    ablate.add_argument("--workers", type=int, default=None, help="data loading processes (default: from the cores)")
    ablate.add_argument("--input", type=parse_size, default=(224, 224), metavar="HxW",
                        help="input size for FLOPs, parameters and FPS (default: 224x224)")
    ablate.add_argument("--no-fps", action="store_true", help="skip the interleaved FPS measurement")
    ablate.add_argument("--flops-only", action="store_true",
                        help="no training: each variant's FLOPs, parameters and step from the previous row at --input, "
                             "the paper's Table 4/5 beside (TopFormer-T at 224x224); seconds")
    ablate.add_argument("--backbone-arg", dest="backbone_args", type=parse_json_setting, action="append", default=[],
                        metavar="NAME=VALUE", help="timm constructor argument for the backbone (repeatable)")
    ablate.add_argument("--set", dest="settings", type=parse_setting, action="append", default=[], metavar="NAME=VALUE",
                        help="an MSCSA setting for every variant (the variant's switches win) (repeatable)")
    ablate.add_argument("--out", default=None, metavar="DIR", help="write each run to DIR/NN-variant/seedK/ "
                                                                  "(default: nothing written per run)")
    add_output_options(ablate, plots=False)
    ablate.set_defaults(func=run_ablate, _parser=ablate)


def run_train(args: argparse.Namespace) -> int:
    from mscsa_lab.train import PrintProgress, TqdmProgress, TrainConfig
    from mscsa_lab.workflows.training import train_action

    settings = dict(args.settings)
    if args.drop_path is not None:
        settings["drop_path"] = args.drop_path
    name = args.profile or args.backbone or "model"
    config = TrainConfig(
        data=args.data, profile=args.profile, backbone=args.backbone, backbone_kwargs=dict(args.backbone_args),
        mscsa=settings, mode=args.mode, pretrained=args.pretrained, pretrained_file=args.pretrained_file,
        img_size=args.img_size, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch,
        accum_steps=args.accum_steps, lr=args.lr, opt=args.opt, weight_decay=args.weight_decay, sched=args.sched,
        warmup_steps=args.warmup_steps, smoothing=args.smoothing, mixup=args.mixup, cutmix=args.cutmix,
        ema=args.ema, clip_grad=args.clip_grad, augment=not args.no_augment, val_fraction=args.val_fraction,
        scale=tuple(args.scale) if args.scale else None, ratio=tuple(args.ratio) if args.ratio else None,
        hflip=args.hflip, color_jitter=args.color_jitter, auto_augment=args.aa, repeat=args.repeat,
        teacher_classes=args.teacher_classes, temperature=args.temperature, overwrite=args.overwrite,
        scan_max_files=args.scan_max_files, scan_max_s=args.scan_max_s,
        synthetic_train=args.synthetic_train, synthetic_val=args.synthetic_val, amp=args.amp,
        channels_last=args.channels_last, device=args.device, workers=args.workers,
        backbone_drop_path=args.backbone_drop_path, seed=args.seed, eval_every=args.eval_every,
        log_every=args.log_every, out=args.out or str(Path("runs") / name), resume=args.resume,
        command="mscsa-lab " + " ".join(shlex.quote(a) for a in args.argv),
    )
    with graceful_stop("step") as stop:
        progress = PrintProgress() if args.no_progress else TqdmProgress()
        result = train_action(config, callbacks=[progress], stop=stop, limits=limits_from_args(args))
    print(result.summary.replace("**", "").replace("`", ""), file=sys.stderr)
    return 0 if result.data["status"] in ("completed", "max_steps", "stopped") else 1


def run_evaluate(args: argparse.Namespace) -> int:
    from mscsa_lab.workflows.training import evaluate_action

    result = evaluate_action(args.model_dir, args.data, out=args.out, split=args.split, batch=args.batch,
                             device=args.device, workers=args.workers, synthetic_count=args.synthetic_count,
                             limits=limits_from_args(args))
    args.wide = True
    print_result(result, args)
    for path in result.files:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from mscsa_lab.workflows.result import check_output_paths
    from mscsa_lab.workflows.training import ablate_action

    check_output_paths(args.output)
    variants = list(args.variants) if args.variants else f"table{args.table or '4'}"
    train = dict(data=args.data, max_steps=args.max_steps, batch_size=args.batch, img_size=args.img_size, lr=args.lr,
                 synthetic_train=args.synthetic_train, synthetic_val=args.synthetic_val, device=args.device,
                 workers=args.workers)
    # Ctrl-C once: the current run stops, the table holds the runs that finished (and is still written).
    with graceful_stop("training step") as stop:
        result = ablate_action(args.name, variants, seeds=args.seeds, train=train, input_size=args.input,
                               fps=not args.no_fps, settings=dict(args.settings),
                               backbone_kwargs=dict(args.backbone_args), out=args.out, flops_only=args.flops_only,
                               progress=progress_printer, stop=stop)
    args.wide = True
    print_result(result, args)
    return 0
