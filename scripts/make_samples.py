"""Write a few held-out synthetic images to assets/samples/ (the app's bundled samples).

    python scripts/make_samples.py
"""
from __future__ import annotations



from PIL import Image

from mscsa_lab.paths import ASSETS_DIR
from mscsa_lab.data.synthetic import CLASSES, make_sample

OUT = ASSETS_DIR / "samples"
HELD_OUT_OFFSET = 2_000_000  # beyond the demo model's training and held-out ranges


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    wanted = {(name, size): None for name in CLASSES for size in ("large", "small")}
    index = HELD_OUT_OFFSET
    while any(v is None for v in wanted.values()):
        sample = make_sample(index, seed=0, size=128)
        size = "large" if sample.size_fraction > 0.5 else "small" if sample.size_fraction < 0.25 else None
        key = (CLASSES[sample.label], size)
        if size and wanted.get(key, 1) is None:
            wanted[key] = index
            # Saved at 256 px so the samples also exercise resizing.
            Image.fromarray(sample.image).resize((256, 256), Image.NEAREST).save(OUT / f"{key[0]}_{size}.png")
        index += 1
    print(f"wrote {len(wanted)} samples to {OUT}")


if __name__ == "__main__":
    main()
