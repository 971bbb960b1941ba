"""Cost of ALL saliency maps for one image (every method, keys and values, every scale: one shared
pass) as a ratio to one forward+backward of the same model; target: at most 3.

Both are timed in the same run, interleaved, and the medians compared, so machine noise cancels
out. ``--captum`` adds the former way for reference: captum's LayerGradCam and
LayerGradientXActivation called once per scale and per K/V (12 forward+backward passes).

    python benchmarks/saliency_speed.py [--repeats 5] [--threads 1] [--captum] [--localisation 200]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)

import torch  # noqa: E402

from mscsa_lab.explain.capture import select_layer  # noqa: E402
from mscsa_lab.explain.evaluation import evaluate_localisation  # noqa: E402
from mscsa_lab.explain.methods import KINDS, METHODS, attribute_all  # noqa: E402
from mscsa_lab.io.checkpoints import load_demo_model  # noqa: E402
from mscsa_lab.registry import build_named_model  # noqa: E402


def forward_backward(model, image: torch.Tensor, target: int) -> None:
    model.zero_grad(set_to_none=True)
    model(image)[0, target].backward()


def all_maps(model, image: torch.Tensor, target: int) -> None:
    attribute_all(model, image, METHODS, KINDS, target=target)


def captum_per_scale(model, image: torch.Tensor, target: int) -> None:
    from captum.attr import LayerGradCam, LayerGradientXActivation

    layer = select_layer(model)
    for projections in (layer.key_proj, layer.value_proj):
        for module in projections:
            LayerGradCam(model, module).attribute(image, target=target, relu_attributions=True)
            LayerGradientXActivation(model, module).attribute(image, target=target)


def seconds(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def compare(model, size: tuple[int, int], label: str, repeats: int, captum: bool) -> None:
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = int(model(image)[0].argmax())
    candidates = {"forward+backward": forward_backward, "all maps (one pass)": all_maps}
    if captum:
        candidates["captum per scale and K/V"] = captum_per_scale
    for function in candidates.values():
        function(model, image, target)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, function in candidates.items():
            times[name].append(seconds(function, model, image, target))
    model.zero_grad(set_to_none=True)
    base = statistics.median(times["forward+backward"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {label} | {size[0]}x{size[1]} | {name} | {median:.3f} | {median / base:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (medians are compared)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--captum", action="store_true", help="also time the former captum calls per scale")
    parser.add_argument("--localisation", type=int, default=0, help="held-out images for the demo model's scores")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}; methods: {', '.join(METHODS)} x {', '.join(KINDS)}")
    print("| Model | input | what | seconds (median) | ratio to forward+backward |")
    print("|---|---|---|---:|---:|")
    model, meta = load_demo_model()
    compare(model, tuple(meta["input_size"]), "demo model", args.repeats, args.captum)
    compare(build_named_model("resnet18", input_size=(224, 224)), (224, 224), "resnet18+MSCSA (Table 7)",
            args.repeats, args.captum)
    for method, kind in (("gradxact", "key"), ("gradxact", "value"), ("gradcam", "key"), ("attention", "key")):
        if args.localisation:
            print("\n".join(evaluate_localisation(model, meta, args.localisation, method, kind).lines()))


if __name__ == "__main__":
    main()
