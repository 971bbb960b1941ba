"""Faithfulness (deletion/insertion with random and centre references) and the batch explain
function on a folder with a corrupt file among good ones."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mscsa_lab.data.synthetic import make_sample
from mscsa_lab.errors import UserError
from mscsa_lab.explain.batch import collect_images, explain_images, load_model_for_explain
from mscsa_lab.explain.evaluation import held_out_samples
from mscsa_lab.explain.faithfulness import baseline_image, evaluate_faithfulness, faithfulness
from mscsa_lab.explain.targets import TargetError


@pytest.fixture(scope="module")
def demo():
    return load_model_for_explain("demo")


def test_deletion_and_insertion_reward_the_map_that_points_at_the_object(demo):
    model, meta = demo
    sample, tensor = next(held_out_samples(meta, 1, offset=1_000_003))
    x0, y0, x1, y1 = sample.box
    on_object = np.zeros((96, 96), np.float32)
    on_object[y0:y1, x0:x1] = 1.0
    report = faithfulness(model, tensor, {"object": on_object, "background": 1.0 - on_object}, target=sample.label,
                          steps=4)
    assert set(report.deletion) == {"object", "background", "random", "centre"}
    assert report.deletion["object"] < report.deletion["background"]
    assert report.insertion["object"] > report.insertion["background"]
    assert report.fractions == [0.0, 0.25, 0.5, 0.75, 1.0]
    for curves in (report.deletion_curves, report.insertion_curves):
        assert len({c[0] for c in curves.values()}) == 1 and len({c[-1] for c in curves.values()}) == 1  # shared ends
    from mscsa_lab.explain.render import faithfulness_chart

    assert len(faithfulness_chart(report).axes) == 2
    data = json.loads(json.dumps(report.as_dict()))
    assert data["deletion"]["object"] == pytest.approx(report.deletion["object"])
    assert data["beats_random"].keys() == {"object", "background"}


def test_padding_is_never_perturbed_and_baselines_are_checked(demo):
    model, _ = demo
    image = torch.randn(1, 3, 96, 96)
    box = (0, 36, 96, 60)
    saliency = np.full((96, 96), np.nan, np.float32)
    saliency[36:60] = np.random.default_rng(0).random((24, 96))
    report = faithfulness(model, image, {"map": saliency}, valid_box=box, steps=3, references=False)
    assert set(report.deletion) == {"map"}
    blurred = baseline_image(image, "blur")
    assert blurred.shape == image.shape and blurred.std() < image.std() / 2
    with pytest.raises(UserError, match="baseline='noise' is unknown"):
        faithfulness(model, image, {"map": saliency}, deletion_baseline="noise")
    with pytest.raises(UserError, match="full-size maps"):
        faithfulness(model, image, {"map": saliency[:10]})


@pytest.mark.slow
def test_the_demo_models_maps_beat_the_random_map_on_held_out_shapes(demo):
    model, meta = demo
    areas = evaluate_faithfulness(model, meta, count=8, steps=8)
    print(areas)
    for name in ("X0", "combined"):
        assert areas["deletion"][name] < areas["deletion"]["random"], name
        assert areas["insertion"][name] > areas["insertion"]["random"], name


def _save(path, array):
    Image.fromarray(array).save(path)
    return path


@pytest.mark.slow
def test_explain_a_folder_with_a_corrupt_file_among_good_ones(tmp_path, demo):
    model, meta = demo
    folder = tmp_path / "images"
    folder.mkdir()
    _save(folder / "circle.png", make_sample(1_000_001, 0, 96).image)
    wide = np.concatenate([make_sample(1_000_002, 0, 96).image] * 2, axis=1)  # 192x96: letterboxed
    _save(folder / "wide.jpg", wide)
    (folder / "broken.png").write_bytes((folder / "circle.png").read_bytes()[:120])
    (folder / "notes.txt").write_text("not an image")
    seen = []
    summary = explain_images(model, [folder], tmp_path / "out", method="gradxact", kinds=["key"], meta=meta,
                             steps=4, progress=lambda done, total, name: seen.append((done, total, name)))
    assert [i.error is None for i in summary.images] == [False, True, True]  # broken, circle, wide (sorted)
    assert "corrupt or truncated" in summary.failed[0].error and summary.skipped == [str(folder / "notes.txt")]
    assert seen[-1][:2] == (3, 3)
    record = json.loads((tmp_path / "out" / "wide.json").read_text())
    assert record["valid_box"] == [0, 24, 96, 72] and record["top"][0]["name"] in meta["classes"]
    assert sum(record["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert len(record["attention_mass"]["per_scale"]) == 3 and sum(record["attention_mass"]["per_scale"]) == \
        pytest.approx(1.0, abs=1e-4)
    for curve in ("deletion", "insertion"):
        assert set(record[curve]["key"]) == {"X0", "X1", "X2", "combined", "random", "centre"}
    assert set(record["area_above_half_max"]["key"]) == {"X0", "X1", "X2"}
    maps = np.load(tmp_path / "out" / "wide_maps.npz")
    assert np.isnan(maps["key_scale0_map"][:24]).all() and np.isfinite(maps["key_scale0_map"][24:72]).all()
    figures = sorted(p.name for p in (tmp_path / "out").glob("fig1b_*"))
    assert figures == ["fig1b_key.pdf", "fig1b_key.png", "fig1b_key.svg"]
    assert (tmp_path / "out" / "fig1b_key.pdf").read_bytes()[:4] == b"%PDF"
    assert Image.open(tmp_path / "out" / "circle_grid.png").size[0] > 400
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(saved["images"]) == 3 and saved["means"]["deletion"]["key"]["random"] > 0


def test_requests_that_cannot_work_fail_before_the_first_image(tmp_path, demo):
    model, meta = demo
    image = _save(tmp_path / "a.png", make_sample(1_000_001, 0, 96).image)
    with pytest.raises(TargetError, match="did you mean 'circle'"):
        explain_images(model, [image], tmp_path / "out", target="circel", meta=meta, progress=False)
    with pytest.raises(UserError, match="method='lime' is unknown"):
        explain_images(model, [image], tmp_path / "out", method="lime", meta=meta, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        collect_images([tmp_path / "empty"])
    missing = explain_images(model, [tmp_path / "missing.png", image], tmp_path / "out", kinds=["value"],
                             meta=meta, faithfulness=False, progress=False, target="star")
    assert "does not exist" in missing.failed[0].error and len(missing.succeeded) == 1
    record = json.loads((tmp_path / "out" / "a.json").read_text())
    assert record["target"] == {"index": 4, "label": "star"} and "deletion" not in record
