"""The GPU figures, in one command, for the day a GPU is there (under 8 minutes on one GPU).

    python benchmarks/gpu_report.py                      # everything, about 7 minutes
    python benchmarks/gpu_report.py --budget-s 240 --models pvt_v2_b0 resnet50

Prints:
1. FPS of the paper's Table 6 backbones with and without MSCSA (and MSCSA's fast path), interleaved, in
   bf16 and fp16 autocast, channels_last, at batch 64 and 256, beside the paper's A100 figures;
2. CUDA memory per model, measured (``torch.cuda.max_memory_allocated``) beside computed
   (``analysis.memory``), for inference and a training step;
3. training images/s of the engine (AdamW, bf16, channels_last, synthetic data) with and without MSCSA.

On a machine without CUDA it says so and exits 0. The whole run keeps to ``--budget-s`` (default 420 s):
every measurement gets its share of the time left.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TABLE6 = ("topformer_tiny", "topformer_base", "coat_tiny", "coat_small", "resnet50", "pvt_v2_b0", "pvt_v2_b1",
          "p2t_tiny", "shunted_tiny", "swin_tiny", "convnext_tiny")


def fps_section(names: list[str], deadline: float) -> None:
    from mscsa_lab.bench.comparison import throughput_comparison
    from mscsa_lab.bench.settings import BenchmarkSettings
    from mscsa_lab.io.terminal import terminal_table

    cases = [(precision, batch) for precision in ("bf16", "fp16") for batch in (64, 256)]
    for index, (precision, batch) in enumerate(cases):
        share = max(5.0, (deadline - time.monotonic()) * 0.6 / ((len(cases) - index) * len(names)))
        settings = BenchmarkSettings(device="cuda", precision=precision, channels_last=True, batch=batch, warmup=5,
                                     steps=10, repeats=6, max_repeats=30, target_interval=0.01, max_seconds=share)
        table = throughput_comparison(names, (224, 224), settings)
        table.paper_columns = ["Model", "Batch", "FPS", "+MSCSA FPS", "+MSCSA fast FPS", "dFPS (%)", "dFPS low (%)",
                               "dFPS high (%)", "dFPS fast (%)", "Paper dFPS (%)", "Check"]
        table.title = f"FPS, {precision} autocast, channels_last, batch {batch}, 224x224"
        print(terminal_table(table), flush=True)


def memory_section(names: list[str]) -> None:
    import torch

    from mscsa_lab.analysis.memory import memory_profile
    from mscsa_lab.registry import build_named_model

    print("CUDA memory, measured beside computed (MiB):")
    for name in names:
        model = build_named_model(name)
        profile = memory_profile(model, (224, 224), batch_size=32, device="cuda", training=True)
        frame = profile.totals_frame()
        for _, row in frame.iterrows():
            if str(row["Quantity"]).startswith(("peak", "saved")):
                print(f"  {name:<16} {row['Quantity']:<28} computed {row['Computed MiB']:9.1f}   "
                      f"measured {row['Measured MiB']:9.1f}", flush=True)
        del model
        torch.cuda.empty_cache()


def training_section(names: list[str]) -> None:
    from mscsa_lab.models.backbones import create_timm_model
    from mscsa_lab.presets import load_profile
    from mscsa_lab.train import TrainConfig, train

    print("training images/s (AdamW, bf16, channels_last, batch 64, 30 steps, synthetic shapes at 224):")
    for name in names:
        profile = load_profile(name)
        common = dict(data="synthetic", img_size=224, batch_size=64, max_steps=30, amp="bf16", channels_last=True,
                      device="cuda", synthetic_train=64 * 32, synthetic_val=64, eval_every=0, workers=4)
        with_mscsa = train(TrainConfig(profile=name, **common))
        alone = train(TrainConfig(profile=name, **common),
                      model=create_timm_model(profile.baseline_model, (224, 224), num_classes=5))
        print(f"  {name:<16} backbone {alone.images_per_s:8.0f} img/s   +MSCSA {with_mscsa.images_per_s:8.0f} img/s"
              f"   ratio {with_mscsa.images_per_s / alone.images_per_s:.3f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(TABLE6), help="Table 7 profiles (default: Table 6's)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="the whole report's time (default: 420 s)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("No CUDA GPU on this machine: the GPU report needs one (FPS at batch 64/256 in bf16/fp16, CUDA memory, "
              "training images/s). CPU figures: python benchmarks/fps_table.py and benchmarks/app_speed.py.")
        return 0
    import mscsa_lab  # noqa: F401 - registers the *_mscsa models

    started = time.monotonic()
    deadline = started + args.budget_s
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}\n", flush=True)
    fps_section(args.models, deadline)
    memory_section(args.models[:4])
    training_section(args.models[:3])
    print(f"\nreport took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
