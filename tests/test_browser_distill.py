"""Explaining a pretrained backbone in a real browser (Debian's Chromium driven by Playwright, no browser
download): upload a few photos and a teacher's weights file with its class names, press Explain, then
render the maps of that run in the Saliency tab, whose prediction names the teacher's classes.

The teacher is a plain timm resnet10t with 5 classes trained a few steps on the synthetic shapes here and
saved as safetensors with a classes.json beside it (nothing is downloaded)."""
import json
import time
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from playwright.sync_api import expect

from mscsa_lab.data.synthetic import CLASSES, make_sample

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.integration]

ROOT = Path(__file__).resolve().parent.parent
TEACHER_CLASSES = [f"teacher's {name}" for name in CLASSES]  # names no other model in the app has


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Path, Path]:
    """(weights file, classes.json beside it) of a resnet10t trained 20 steps on 48 px shapes."""
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=len(CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in range(20):
        samples = [make_sample(step * 16 + i, seed=3, size=48, min_fraction=0.3) for i in range(16)]
        x = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 - 0.5 for s in samples])
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([s.label for s in samples]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weights = folder / "shapes_resnet10t.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    classes = folder / "classes.json"
    classes.write_text(json.dumps(TEACHER_CLASSES))
    return weights, classes


def test_explain_a_backbone_from_uploaded_photos_then_render_its_maps(browser_page, app_context, teacher):
    weights, classes = teacher
    photos = sorted((ROOT / "assets" / "samples").glob("*_large.png"))[:4]
    page = browser_page
    page.get_by_role("tab", name="Train").click()
    page.locator("#explain-photos input[type=file]").set_input_files([str(p) for p in photos])
    page.locator("#explain-backbone textarea, #explain-backbone input").first.fill("resnet10t")
    page.locator("#explain-pretrained input").uncheck()
    page.locator("#explain-weights input[type=file]").set_input_files(str(weights))
    page.locator("#explain-classes input[type=file]").set_input_files(str(classes))
    page.locator("#explain-steps input").fill("2")
    page.locator("#explain-batch input").fill("4")
    page.locator("#explain-name textarea, #explain-name input").first.fill("browser-explained")
    page.locator("#explain-backbone textarea, #explain-backbone input").first.press("Tab")
    expect(page.locator("#explain-tokens")).to_contain_text("at 224x224")  # the tokens before the run
    started = time.perf_counter()
    page.locator("#explain-button").click()
    expect(page.locator("#explain-status")).to_contain_text("browser-explained reached its step limit",
                                                            timeout=300_000)
    expect(page.locator("#explain-status")).to_contain_text("agreement with the teacher")
    expect(page.locator("#explain-status")).to_contain_text("X0 49 (7x7)")  # the tokens, from model.json
    print(f"explaining in the browser (2 steps at 224 px): {time.perf_counter() - started:.1f} s")

    # The run is already the Saliency tab's model: render its maps on a photo
    page.get_by_role("tab", name="Saliency").click()
    expect(page.locator("#saliency-source input")).to_have_value("trained run browser-explained (resnet10t, 5 "
                                                                 "classes)")
    page.locator("#saliency-image input[type=file]").set_input_files(str(photos[0]))
    page.locator("#saliency-button").click()
    prediction = page.locator("#saliency-prediction")
    expect(prediction).to_contain_text("Weights: trained run browser-explained")
    expect(prediction).to_contain_text("Prediction: teacher's")  # one of the teacher's own class names
    expect(page.locator("#saliency-grid img")).to_be_visible()
    meta = json.loads((app_context.runs_dir / "browser-explained" / "model.json").read_text())
    assert meta["mode"] == "distill" and meta["classes"] == TEACHER_CLASSES
    assert meta["teacher"]["weights"].startswith(str(app_context.runs_dir / ".uploads" / "browser-explained"))
    assert len(list((app_context.runs_dir / ".uploads" / "browser-explained" / "photos").iterdir())) == 4
