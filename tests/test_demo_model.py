"""The bundled demo model: its files, its accuracy, and whether its maps point at the objects."""
import json

import numpy as np
import pytest

from mscsa_lab.io.checkpoints import DEMO_METADATA, DEMO_WEIGHTS, load_demo_model
from mscsa_lab.explain.evaluation import evaluate_localisation
from mscsa_lab.data.synthetic import CLASSES


@pytest.fixture(scope="module")
def demo():
    return load_demo_model()


def test_demo_files_are_small_safetensors_with_metadata():
    assert DEMO_WEIGHTS.suffix == ".safetensors" and DEMO_WEIGHTS.stat().st_size <= 15 * 2**20
    meta = json.loads(DEMO_METADATA.read_text())
    assert meta["classes"] == list(CLASSES)
    for key in ("input_size", "backbone", "mscsa", "held_out_accuracy", "command", "train_minutes"):
        assert key in meta, key
    assert meta["command"].startswith("python scripts/make_demo_model.py")
    assert meta["train_minutes"] <= 15


@pytest.fixture(scope="module")
def key_report(demo):
    model, meta = demo
    # The first 200 held-out images (never trained on); the closing note reports the same figures.
    return evaluate_localisation(model, meta, count=200, method="gradxact", kind="key")


def test_demo_model_classifies_held_out_images(demo, key_report):
    model, meta = demo
    assert meta["held_out_accuracy"] >= 0.8
    assert key_report.accuracy >= 0.75


def test_class_targeted_maps_peak_inside_the_object(key_report):
    print("\n".join(key_report.lines()))
    assert key_report.peak_in_box[0] >= 0.8  # the finest scale, X0


def test_coarser_scales_light_up_larger_regions_on_large_objects(key_report):
    areas = key_report.hot_area_large
    assert key_report.large_images >= 5
    assert areas[2] > areas[0] and areas[1] > areas[0]
    assert np.isfinite(areas).all()
