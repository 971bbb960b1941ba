"""The Saliency tab's workflow (``workflows.explaining.saliency_action``) on the demo model: keys and values
from one forward, class names for predictions and targets, maps drawn over the picture with the padding
left out, a click on the large input view mapped to a query cell (or a message when it hits the padding),
and the faithfulness summary with its baselines."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mscsa_lab.explain.targets import TargetError
from mscsa_lab.workflows import saliency_views as views
from mscsa_lab.workflows.explaining import preview_view, saliency_action
from mscsa_lab.workflows.sources import demo_model

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"


@pytest.fixture(scope="module")
def loaded():
    return demo_model()


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A 2:1 picture: letterboxed into the demo model's 96x96 input, 24 rows of padding above and below."""
    path = tmp_path_factory.mktemp("pictures") / "wide.png"
    Image.open(SAMPLES / "star_large.png").resize((384, 192)).save(path)
    return path


def forwards(model):
    """Counts the model's forward calls (a hook, removed by the caller)."""
    calls = []
    return calls, model.register_forward_pre_hook(lambda module, args: calls.append(1))


def test_keys_and_values_come_from_one_forward_and_predictions_have_names(loaded):
    calls, hook = forwards(loaded.model)
    try:
        result = saliency_action(str(SAMPLES / "star_large.png"), loaded, method="gradxact", faithfulness=False)
    finally:
        hook.remove()
    assert len(calls) == 1
    assert [(r.method, r.kind) for r in result.data["results"]] == [("gradxact", "key"), ("gradxact", "value")]
    assert result.data["prediction"].startswith("star: ") and "Maps explain: star" in result.summary
    assert {"grid", "heads"} <= set(result.data["images"]) and "mass" in result.figures
    assert result.data["images"]["grid"].ndim == 3 and "faithfulness" not in result.figures
    circle = saliency_action(str(SAMPLES / "star_large.png"), loaded, kinds=["value"], target="circle",
                             faithfulness=False)
    assert circle.data["target"] == {"index": 0, "label": "circle"} and "Maps explain: circle" in circle.summary
    assert saliency_action(str(SAMPLES / "star_large.png"), loaded, kinds=["key"], target=" 3 ",
                           faithfulness=False).data["target"]["label"] == "cross"
    with pytest.raises(TargetError, match="'stra' is not one of this model's 5 class names; did you mean 'star'"):
        saliency_action(str(SAMPLES / "star_large.png"), loaded, target="stra", faithfulness=False)


def test_maps_leave_the_padding_out_and_are_drawn_smoothly_over_the_picture(loaded, wide):
    result = saliency_action(str(wide), loaded, method="norm", kinds=["key"], faithfulness=False)
    maps = result.data["results"][0].maps
    assert all(np.isnan(m[:24]).all() and np.isnan(m[72:]).all() and np.isfinite(m[24:72]).all() for m in maps)
    from mscsa_lab.io.images import prepare_image

    picture = Image.open(wide).convert("RGB")
    prepared = prepare_image(picture, (96, 96))
    small, drawn, marker = views.on_picture(prepared, picture, result.data["results"], side=300)
    assert small.shape == (150, 300, 3) and marker is None
    coarse = drawn[0].maps[2]  # X2: a 4x4 grid, drawn bilinearly over the whole picture, no padding rows
    assert coarse.shape == (150, 300) and np.isfinite(coarse).all()
    assert len(np.unique(coarse)) > 1000  # smooth, not 16 flat tiles


def test_a_click_far_from_the_centre_gives_that_cells_attention_and_a_marker(loaded, wide):
    width, height = views.view_size((96, 96))
    view = preview_view(str(wide), (96, 96))
    assert view.shape == (height, width, 3) == (768, 768, 3)
    assert tuple(view[0, 0]) == views.PAD_STRIPES[0] and tuple(view[10, 10]) == views.PAD_STRIPES[1]  # striped
    assert tuple(view[384, 384]) not in views.PAD_STRIPES  # the picture
    result = saliency_action(str(wide), loaded, click=(100, 300))
    # (100, 300) on the 768 px view is (12.5, 37.5) on the 96 px input: row 37.5 / 8 = 4, column 12.5 / 8 = 1
    assert result.data["query_cell"] == (4, 1) and result.data["grid_size"] == (12, 12)
    assert [(r.method, r.kind, r.query) for r in result.data["results"]] == [("query", "attention", (4, 1))]
    assert "faithfulness" not in result.data and "cell (4, 1) of X0's 12x12 grid" in result.summary
    marked = result.data["view"]
    centre = (int((1 + 0.5) * 64), int((4 + 0.5) * 64))  # the cell's centre on the view: 64 view pixels a cell
    assert (marked[centre[1], centre[0]] == (0, 255, 255)).all()  # the dot
    assert not (view[centre[1], centre[0]] == (0, 255, 255)).all()


def test_a_click_on_the_padding_says_so_and_renders_nothing(loaded, wide):
    result = saliency_action(str(wide), loaded, click=(400, 30))
    assert result.data["results"] == [] and not result.figures
    assert "padding around the picture, which the model does not see" in result.warnings[0]
    assert (result.data["view"][30, 400] == (230, 30, 30)).all()  # the red cross where the click landed
    cropped = saliency_action(str(wide), loaded, click=(400, 30), fit="crop", faithfulness=False)
    assert cropped.data["query_cell"] == (0, 6)  # cropped, the same point is on the picture


def test_faithfulness_scores_every_map_beside_the_random_and_centre_maps(loaded):
    result = saliency_action(str(SAMPLES / "circle_large.png"), loaded, kinds=["key"], steps=2)
    report = result.data["faithfulness"]
    names = {"K X0", "K X1", "K X2", "K combined", "random", "centre"}
    assert set(report["deletion"]) == set(report["insertion"]) == names
    assert report["fractions"] == [0.0, 0.5, 1.0] and report["target_label"] == "circle"
    assert set(report["beats_random"]) == names - {"random", "centre"}
    text = result.data["faithfulness_text"]
    assert "| K combined |" in text and "*random map (baseline)*" in text and "*centre map (baseline)*" in text
    assert len(result.figures["faithfulness"].axes) == 2


def test_an_imagenet_head_predicts_and_takes_targets_by_imagenet_name():
    from mscsa_lab.workflows.sources import spec_model
    from mscsa_lab.workflows.spec import ModelSpec

    spec = ModelSpec.resolve("resnet10t", input_size=(64, 64), settings=dict(num_heads=2, key_dim=8))
    model = spec_model(spec)
    result = saliency_action(str(SAMPLES / "star_small.png"), model, kinds=["key"], target="goldfish",
                             faithfulness=False)
    assert result.data["target"] == {"index": 1, "label": "goldfish"}
    assert "class " not in result.data["prediction"] and len(result.data["class_names"]) == 1000
