"""``mscsa-lab export-model``: a model as ONNX, TorchScript or torch.export files, each reloaded and checked."""
from __future__ import annotations

import argparse

from mscsa_lab.cli.common import Formatter, add_output_options, limits_from_args, parse_size, print_result

EXAMPLES = """examples:
  mscsa-lab export-model resnet18_mscsa --onnx r18.onnx --torchscript r18.pt --exported r18.pt2 --fuse
  mscsa-lab export-model pvt_v2_b0 --checkpoint weights.safetensors --onnx b0.onnx --input-size 256x256
  mscsa-lab export-model --run runs/shapes --torchscript shapes.pt
  mscsa-lab export-model demo --onnx demo.onnx -o export_report.md
"""


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export-model", help="write a model as ONNX / TorchScript / torch.export, reload it and compare its outputs",
        description="Each file is written, loaded back the way a deployment loads it (onnxruntime when installed, "
                    "torch.jit.load, torch.export.load), run on one random input and compared with PyTorch: the "
                    "largest difference is printed.", epilog=EXAMPLES, formatter_class=Formatter)
    export.add_argument("name", nargs="?", default=None,
                        help="'demo', a registered *_mscsa name, a Table 7 profile or a timm backbone (+ MSCSA)")
    export.add_argument("--run", metavar="DIR", help="a trained run's folder (what 'mscsa-lab train --out' wrote)")
    export.add_argument("--checkpoint", metavar="FILE",
                        help="weights for NAME (.safetensors, or .pth loaded with weights_only); random otherwise")
    export.add_argument("--onnx", metavar="FILE.onnx", help="write ONNX (checked with onnxruntime when installed: "
                                                             "pip install 'mscsa-lab[onnx]')")
    export.add_argument("--torchscript", metavar="FILE.pt", help="write TorchScript (torch.jit.script)")
    export.add_argument("--exported", metavar="FILE.pt2", help="write a torch.export ExportedProgram")
    export.add_argument("--trace", action="store_true",
                        help="TorchScript by torch.jit.trace instead of script (control flow fixed to one input)")
    export.add_argument("--fuse", action="store_true", help="fold BatchNorms into the convs first (inference)")
    export.add_argument("--input-size", "--img-size", dest="input_size", type=parse_size, default=None, metavar="HxW",
                        help="input size the files are made for (default: the model's own; 224x224 for a name)")
    add_output_options(export, plots=False)
    export.set_defaults(func=run_export_model, _parser=export)


def run_export_model(args: argparse.Namespace) -> int:
    from mscsa_lab.workflows.exporting import check_export_requests, export_action
    from mscsa_lab.workflows.explaining import explain_model
    from mscsa_lab.workflows.result import check_output_paths

    check_output_paths(args.output)
    outputs = {fmt: path for fmt, path in (("onnx", args.onnx), ("torchscript", args.torchscript),
                                            ("exported", args.exported)) if path}
    check_export_requests(outputs)  # a wrong file name is said before the model is built
    loaded = explain_model(model=args.name, run=args.run, checkpoint=args.checkpoint,
                           input_size=args.input_size, limits=limits_from_args(args))
    result = export_action(loaded, outputs, fuse=args.fuse, input_size=args.input_size,
                           method="trace" if args.trace else "script")
    args.wide = True
    print_result(result, args)
    return 0
