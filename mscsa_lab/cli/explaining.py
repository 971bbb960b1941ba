"""The explain command: per-scale maps (the paper's Fig. 1b) for a set of images, with faithfulness scores."""
from __future__ import annotations

import argparse
import sys

from mscsa_lab.cli.common import Formatter, limits_from_args, parse_size

EXAMPLES = """examples:
  mscsa-lab explain assets/samples --model demo -o maps/
  mscsa-lab explain photo1.jpg photo2.jpg --model resnet18 --checkpoint resnet18_mscsa.safetensors -o maps/
  mscsa-lab explain my_images/ --run runs/shapes --method gradcam --kind key --target star -o maps/
  mscsa-lab explain my_images/ --run runs/shapes --method attention --block 0 --layer 2 --no-faithfulness -o maps/

For each image: NAME_grid.png (input + one overlay per scale, a row per kind), NAME_maps.npz (raw maps) and
NAME.json (probabilities, attention mass per scale, deletion/insertion areas beside the random and centre
baselines, area above half maximum per scale); for the set: fig1b_KIND.png/.svg/.pdf and summary.json.
Exit status 1 when some file could not be explained (the others are written), 2 for a mistake in the request.
"""
# The methods of mscsa_lab.explain.methods, named here so that --help needs no torch (a test keeps them equal).
METHODS = ("gradxact", "gradcam", "norm", "eigencam", "attention", "query")
KINDS = ("key", "value")


def parse_kinds(text: str) -> list[str]:
    kinds = [part.strip().lower() for part in text.split(",") if part.strip()]
    bad = [kind for kind in kinds if kind not in KINDS]
    if not kinds or bad:
        raise argparse.ArgumentTypeError(f"--kind takes key, value or key,value; got {text!r}")
    return list(dict.fromkeys(kinds))


def parse_steps(text: str) -> int:
    try:
        steps = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps takes a whole number (at least 2), got {text!r}") from None
    if not 2 <= steps <= 1000:
        raise argparse.ArgumentTypeError(f"--steps must be from 2 to 1000, got {steps}")
    return steps


def parse_block(text: str) -> int:
    try:
        block = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--block takes a block number (0 is the first), got {text!r}") from None
    if block < 0:
        raise argparse.ArgumentTypeError(f"--block counts from 0, got {block}")
    return block


def register(commands: argparse._SubParsersAction) -> None:
    explain = commands.add_parser("explain", help="per-scale saliency maps (Fig. 1b) and faithfulness for images",
                                  epilog=EXAMPLES, formatter_class=Formatter)
    explain.add_argument("images", nargs="+", metavar="IMAGE|DIR",
                         help="image files, or folders whose image files are all explained")
    source = explain.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="'demo' (the bundled model, 5 synthetic shapes), or a Table 7 profile or "
                                        "timm backbone + MSCSA (random weights unless --checkpoint)")
    source.add_argument("--run", metavar="DIR", help="a trained run's folder (what 'mscsa-lab train --out' wrote)")
    explain.add_argument("--checkpoint", metavar="FILE",
                         help="weights for --model NAME (.safetensors, or .pth loaded with weights_only)")
    explain.add_argument("--method", choices=METHODS, default="gradxact",
                         help="gradxact (HiResCAM: gradient x activation, class-targeted), gradcam, norm, eigencam, "
                              "attention (attention each key position receives), query (the attention of one "
                              "position, the grid's centre) (default: gradxact)")
    explain.add_argument("--kind", dest="kinds", type=parse_kinds, default=list(KINDS), metavar="key,value",
                         help="the projections to explain: key, value or key,value (default: key,value)")
    explain.add_argument("--block", type=parse_block, default=0, help="MSCSA block, from 0 (default: 0)")
    explain.add_argument("--layer", type=int, choices=[1, 2], default=1, help="CSA layer of the block (default: 1)")
    explain.add_argument("--target", default=None, metavar="CLASS",
                         help="the class the maps explain: a class name (e.g. star, or an ImageNet name such as "
                              "goldfish) or an index (default: each image's predicted class)")
    explain.add_argument("--input-size", "--img-size", dest="input_size", type=parse_size, default=None,
                         metavar="HxW", help="model input size (default: the run's or demo model's own; 224 for "
                                             "--model NAME)")
    explain.add_argument("--fit", choices=["pad", "crop"], default="pad",
                         help="pad: keep the whole picture (letterbox, padding left out of the maps); crop: "
                              "resize and center-crop as timm's eval transform (default: pad)")
    explain.add_argument("--steps", type=parse_steps, default=16,
                         help="points per deletion/insertion curve (default: 16)")
    explain.add_argument("--no-faithfulness", action="store_true",
                         help="skip the deletion/insertion scores (the slow part: about 2 x steps x 6 forwards "
                              "per image and kind)")
    explain.add_argument("-o", "--out", "--output", dest="out_dir", required=True, metavar="OUT",
                         help="folder for the maps, JSON files and figures (created if missing)")
    explain.add_argument("--quiet", action="store_true", help="no progress bar")
    explain.set_defaults(func=run_explain, _parser=explain)


def run_explain(args: argparse.Namespace) -> int:
    from mscsa_lab.workflows.explaining import explain_action, explain_model

    loaded = explain_model(model=args.model, run=args.run, checkpoint=args.checkpoint, input_size=args.input_size,
                           limits=limits_from_args(args))
    size = args.input_size if args.run is not None or args.model == "demo" else None
    result = explain_action(args.images, loaded, args.out_dir, method=args.method, kinds=args.kinds, block=args.block,
                            layer=args.layer, target=args.target, input_size=size, fit=args.fit,
                            faithfulness=not args.no_faithfulness, steps=args.steps, progress=not args.quiet)
    print(result.summary)
    for note in result.all_notes():
        print(f"note: {note}", file=sys.stderr)
    for failure in result.warnings:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if result.data["failed"] else 0
