"""How the training data scan behaves on hostile folders, measured in one run (ratios, not absolute times):

1. a folder of a few images with two symbolic link loops (``ln -s . DATA/a/loop``): the project's scan
   against timm's folder reader (``os.walk(followlinks=True)``, run in a child process killed at
   ``--timm-cap`` seconds);
2. a folder of ``--files`` files: a whole scan, then a run started on it and stopped part-way through its
   scan: seconds from the stop to the run's end, as a share of the whole scan, and the CPU time the
   process uses in the second after.

    python benchmarks/scan_stop.py                  # 300000 files, timm capped at 20 s
    python benchmarks/scan_stop.py --files 50000 --timm-cap 5
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from mscsa_lab.stopping import Cancelled
from mscsa_lab.train import TrainConfig, train
from mscsa_lab.train.data import scan_data


def loop_folder(root: Path) -> Path:
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (40 * i, 90, 10)).save(root / name / f"{i}.png")
    (root / "a" / "loop").symlink_to("..")
    (root / "b" / "loop").symlink_to("../..")  # out of the folder, and back in through its parent
    return root


def _timm_scan(folder: str) -> None:
    from timm.data.readers.reader_image_folder import find_images_and_targets

    find_images_and_targets(folder)


def timed_timm_scan(folder: Path, cap: float) -> tuple[float, bool]:
    """Seconds timm's reader took on ``folder`` and whether it finished within ``cap``."""
    process = multiprocessing.get_context("spawn").Process(target=_timm_scan, args=(str(folder),))
    started = time.perf_counter()
    process.start()
    process.join(cap)
    finished = not process.is_alive()
    if not finished:
        process.kill()
        process.join()
    return time.perf_counter() - started, finished


def big_folder(root: Path, files: int) -> Path:
    per_folder = 1000
    for index in range(files):
        folder = root / f"class{index % 2}" / f"part{index // (2 * per_folder)}"
        if index % (2 * per_folder) < 2:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index}.png").touch()
    return root


def cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=300_000, help="files in the large folder (default: 300000)")
    parser.add_argument("--timm-cap", type=float, default=20.0, help="seconds timm's reader may take (default: 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        loops = loop_folder(root / "loops")
        started = time.perf_counter()
        source = scan_data(str(loops))
        ours = time.perf_counter() - started
        theirs, finished = timed_timm_scan(loops, args.timm_cap)
        print(f"link-loop folder: ours {ours:.4f} s ({source.train_count + source.val_count} images, "
              f"{len(source.notes)} notes); timm's reader "
              + (f"{theirs:.2f} s" if finished else f"still running after {theirs:.1f} s (killed)")
              + f"; ratio {'>' if not finished else ''}{theirs / max(ours, 1e-6):.0f}x")

        big = big_folder(root / "big", args.files)
        started = time.perf_counter()
        scan_data(str(big))
        whole = time.perf_counter() - started
        stop, marks = threading.Event(), {}

        def run() -> None:
            try:
                train(TrainConfig(data=str(big), backbone="resnet10t", img_size=32, workers=0), stop=stop)
            except Cancelled as error:
                marks["message"] = str(error)

        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(whole / 3)
        stop.set()
        asked = time.perf_counter()
        worker.join()
        ended = time.perf_counter() - asked
        before = cpu_seconds()
        time.sleep(1.0)
        busy = cpu_seconds() - before
        print(f"{args.files} files: whole scan {whole:.2f} s; stopped at a third of it, the run ended {ended:.3f} s "
              f"after the stop ({100 * ended / whole:.1f}% of the whole scan), {busy:.2f} CPU s in the next second; "
              f"message: {marks.get('message', 'none')[:140]}")


if __name__ == "__main__":
    main()
