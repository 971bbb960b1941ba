"""End to end in a real browser: Debian's Chromium driven by Playwright (no browser download).

Opens the app, builds a model, profiles it, uploads an image and sees the saliency grid, downloads a
CSV from the Compare tab and checks its contents, triggers a bad input and sees the error, and
takes a screenshot of every tab into assets/screenshots/ (used by the README).
"""
import time
from pathlib import Path
import re

import pandas as pd
import pytest
from playwright.sync_api import expect

from mscsa_lab.io.export import read_table
from mscsa_lab.workflows.limits import ResourceLimits

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.integration]

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "assets" / "screenshots"
SAMPLE = ROOT / "assets" / "samples" / "star_large.png"


# This module's app times FPS for 6 s per model in a comparison (the app's --max-fps-seconds): the page's FPS
# columns are what is checked here, and the default 30 s per model took most of this module's time.
APP_LIMITS = ResourceLimits(max_fps_seconds=6)


@pytest.fixture(scope="module")
def page(browser_page):
    return browser_page  # conftest: Debian's Chromium, 1400 px wide


def screenshot(page, name: str, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_whole_workflow_in_the_browser(page, tmp_path):
    timings = {}

    # Build
    open_tab(page, "Build")
    start = time.perf_counter()
    page.locator("#build-button").click()
    expect(page.locator("#build-status")).to_contain_text("pvt_v2_b1 + MSCSA")
    timings["build"] = time.perf_counter() - start
    assert screenshot(page, "build").stat().st_size > 10_000

    # Profile the model just built
    open_tab(page, "Profile")
    start = time.perf_counter()
    page.locator("#profile-button").click()
    expect(page.locator("#profile-table")).to_contain_text("attention matmuls")
    expect(page.locator("#profile-table")).to_contain_text("CSA 1 (block 1)")
    timings["profile"] = time.perf_counter() - start
    screenshot(page, "profile")

    # Saliency: upload an image, render, see the grid
    open_tab(page, "Saliency")
    page.locator("#saliency-image input[type=file]").set_input_files(str(SAMPLE))
    start = time.perf_counter()
    page.locator("#saliency-button").click()
    expect(page.locator("#saliency-prediction")).to_contain_text("Prediction: star")
    expect(page.locator("#saliency-grid img")).to_be_visible()
    timings["saliency"] = time.perf_counter() - start
    screenshot(page, "saliency")

    # Benchmark tab: the device is stated plainly
    open_tab(page, "Benchmark")
    expect(page.locator("#device-note")).to_contain_text("GPU")
    screenshot(page, "benchmark")

    # Compare, then download the CSV and check it
    open_tab(page, "Compare")
    start = time.perf_counter()
    page.locator("#compare-button").click()
    expect(page.locator("#compare-table")).to_contain_text("PVTv2-B1")
    timings["compare"] = time.perf_counter() - start
    screenshot(page, "compare")
    with page.expect_download() as download_info:
        page.locator('#compare-files a[download^="compare_pvt_v2_b0-pvt_v2_b1_cls_224x224_"][download$=".csv"]').click()
    path = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(path)
    plain = pd.read_csv(path)  # what a user's pandas or spreadsheet sees
    assert plain["Model"].tolist() == ["PVTv2-B0", "PVTv2-B1"]
    assert plain["+MSCSA FLOPs (G)"].iloc[1] == pytest.approx(2.34, abs=0.01)
    with page.expect_download() as download_info:
        page.locator('#compare-files a[download$=".csv.meta.json"]').click()
    download_info.value.save_as(tmp_path / download_info.value.suggested_filename)
    assert read_table(path).metadata["input_size"] == "224x224"

    # A bad input: the error is shown in the page and the app keeps working
    open_tab(page, "Build")
    depth = page.get_by_label("Depth (blank = profile)")
    depth.fill("99")
    page.locator("#build-button").click()
    expect(page.get_by_text("depth=99 is out of range").first).to_be_visible()
    page.wait_for_timeout(800)  # the toast fades in
    screenshot(page, "error", full_page=False)  # the message is a toast fixed to the viewport
    depth.fill("")
    page.locator("#build-button").click()
    expect(page.locator("#build-status")).to_contain_text("pvt_v2_b1 + MSCSA")
    print("slowest user actions (s):", {k: round(v, 2) for k, v in sorted(timings.items(), key=lambda kv: -kv[1])})


def test_train_a_run_then_render_its_maps_in_the_browser(page):
    open_tab(page, "Train")
    fields = (("backbone", "resnet10t"), ("epochs", "1"), ("steps", "4"), ("batch", "8"), ("size", "64"),
              ("name", "browser-run"))
    for field, value in fields:
        page.locator(f"#train-{field} textarea, #train-{field} input").first.fill(value)
    for field, value in fields:  # a tab first drawn on a busy machine once put a default back after its fill
        box = page.locator(f"#train-{field} textarea, #train-{field} input").first
        if box.input_value() != value:
            box.fill(value)
        expect(box).to_have_value(value)
    start = time.perf_counter()
    page.locator("#train-button").click()
    expect(page.locator("#train-status")).to_contain_text("browser-run reached its step limit", timeout=240_000)
    expect(page.locator("#train-status")).to_contain_text("val top-1")
    print(f"browser training run of 4 steps: {time.perf_counter() - start:.1f} s")
    screenshot(page, "train")

    # The run is offered in the Saliency tab and renders with its own classes
    open_tab(page, "Saliency")
    upload = page.locator("#saliency-image input[type=file]")
    if upload.count():  # the file input is replaced by the file once one is uploaded (the workflow test did)
        upload.set_input_files(str(SAMPLE))
    page.locator("#saliency-source input").click()
    page.get_by_role("option", name="trained run browser-run").click()
    page.locator("#saliency-button").click()
    expect(page.locator("#saliency-prediction")).to_contain_text("Weights: trained run browser-run (resnet10t, 5 classes")
    expect(page.locator("#saliency-prediction")).to_contain_text("Prediction:")
    expect(page.locator("#saliency-grid img")).to_be_visible()


def visible_toasts(page) -> int:
    return sum(1 for toast in page.locator(".toast-body").all() if toast.is_visible())


def test_results_are_titled_cleared_and_shared_between_tabs(page, tmp_path):
    """What a user meets after the first workflow: the diagram, readable numbers, stale results
    cleared, one error at a time, the budget applied to Build, configurations pinned and compared
    side by side with FPS, and memory beside FLOPs."""
    open_tab(page, "Build")
    page.get_by_label("or any timm backbone (overrides the profile)").fill("resnet10t")
    for field in ("height", "width"):
        page.locator(f"#build-{field} input").fill("64")
    page.locator("#build-button").click()
    expect(page.locator("#build-status")).to_contain_text("resnet10t + MSCSA")
    expect(page.locator("#build-diagram img, #build-diagram svg").first).to_be_visible()
    expect(page.locator("#build-params")).to_contain_text(" M")  # readable parameter counts
    expect(page.locator('#build-files a[download$=".svg"]')).to_have_count(1)
    page.locator("#pin-button").click()
    expect(page.locator("#pinned-note")).to_contain_text("resnet10t")

    # Changing an input clears what no longer matches it
    depth = page.get_by_label("Depth (blank = profile)")
    depth.fill("2")
    expect(page.locator("#build-status")).not_to_contain_text("resnet10t + MSCSA")
    page.locator("#build-button").click()
    expect(page.locator("#build-status")).to_contain_text("resnet10t (depth 2) + MSCSA")
    page.locator("#pin-button").click()
    expect(page.locator("#pinned-note")).to_contain_text("resnet10t (depth 2)")

    # Two errors in a row: one message on screen, the old results gone
    depth.fill("99")
    page.locator("#build-button").click()
    expect(page.get_by_text("depth=99 is out of range").first).to_be_visible()
    depth.fill("-1")
    page.locator("#build-button").click()
    expect(page.get_by_text("depth=-1 is out of range").first).to_be_visible()
    page.wait_for_timeout(500)
    assert visible_toasts(page) == 1
    expect(page.locator("#build-status")).not_to_contain_text("+ MSCSA")
    screenshot(page, "error", full_page=False)
    depth.fill("2")

    # Profile with memory beside FLOPs, titled with the model and size
    page.locator("#build-button").click()
    expect(page.locator("#build-status")).to_contain_text("resnet10t (depth 2) + MSCSA")
    open_tab(page, "Profile")
    page.locator("#profile-memory input").check()
    page.locator("#profile-button").click()
    expect(page.locator("#profile-title")).to_contain_text("resnet10t (depth 2) + MSCSA (classification, 64x64)")
    expect(page.locator("#profile-table")).to_contain_text("Activations MiB")

    # The budget helper's choice applied to Build (and built)
    page.locator("#budget-name input").fill("pvt_v2_b0")
    page.keyboard.press("Enter")
    page.get_by_role("button", name="Fit").click()
    expect(page.locator("#budget-message")).to_contain_text("chose")
    page.locator("#budget-apply").click()
    open_tab(page, "Build")
    # the label names each setting the fit changed from the profile's ("pvt_v2_b0 (squeeze 9/16)")
    expect(page.locator("#build-status")).to_contain_text(re.compile(r"Built pvt_v2_b0 \(.+\) \+ MSCSA"),
                                                          timeout=120_000)

    # The pinned configurations side by side, with FPS and its interval
    open_tab(page, "Compare")
    page.locator("#compare-fps input").check()
    page.locator("#compare-height input").fill("64")
    page.locator("#compare-width input").fill("64")
    remove = page.locator("#compare-names .token-remove")
    for _ in range(5):  # the default backbones out: only the pinned configurations remain
        if not remove.count():
            break
        remove.first.click()
        page.wait_for_timeout(200)
    assert remove.count() == 0
    page.locator("#compare-button").click()
    expect(page.locator("#compare-title")).to_contain_text("64x64", timeout=240_000)
    table = page.locator("#compare-table")
    expect(table).to_contain_text("resnet10t (depth 2)")
    expect(table).to_contain_text("dFPS low (%)")
    screenshot(page, "compare")


def test_hostile_files_in_the_browser(page, tmp_path):
    """A few corpus cases as a user meets them: each message shows in the page, the app keeps working."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hostile_corpus import PAYLOAD_MARKER, checkpoint_cases, image_cases, write_corpus

    images = {case.name: path for case, path in write_corpus(tmp_path / "images", image_cases())}
    marker = tmp_path / PAYLOAD_MARKER
    checkpoints = {case.name: path for case, path in write_corpus(tmp_path / "ckpt", checkpoint_cases(marker))}
    open_tab(page, "Build")
    page.locator("#build-button").click()
    expect(page.locator("#build-status")).to_contain_text("+ MSCSA")
    open_tab(page, "Saliency")
    clear = page.locator("#saliency-image button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.locator("#saliency-image input[type=file]").set_input_files(str(images["zero-byte"]))
    expect(page.get_by_text("the image file is empty").first).to_be_visible()
    page.locator("#saliency-image button[aria-label='Clear']").first.click()
    page.locator("#saliency-image input[type=file]").set_input_files(str(images["decompression bomb"]))
    expect(page.get_by_text("decompression bomb").first).to_be_visible()
    page.locator("#saliency-image button[aria-label='Clear']").first.click()
    page.locator("#saliency-image input[type=file]").set_input_files(str(SAMPLE))
    page.locator("#saliency-source input").click()
    page.get_by_role("option", name="the Build tab's model").click()
    page.locator("#saliency-checkpoint input[type=file]").set_input_files(str(checkpoints["pickle that runs code"]))
    page.locator("#saliency-button").click()
    expect(page.get_by_text("besides tensors it holds Python objects or code").first).to_be_visible()
    assert not marker.exists()
    page.locator("#saliency-source input").click()
    page.get_by_role("option", name="demo model (5 synthetic shapes)").click()
    page.locator("#saliency-checkpoint button[aria-label='Clear']").first.click()
    page.locator("#saliency-button").click()
    expect(page.locator("#saliency-prediction")).to_contain_text("Prediction:")  # still serving
