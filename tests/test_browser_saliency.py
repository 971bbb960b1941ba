"""The Saliency tab's preview in a real browser (Debian's Chromium driven by Playwright, no browser download):
the preview fills its large box; a click far from the centre of the picture renders that point's attention
(the status names the cell, the maps appear, a marker is drawn on the preview); a click on the letterbox
padding renders nothing and says why in the status line."""
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.integration]

ROOT = Path(__file__).resolve().parent.parent
CYAN = np.array([0, 255, 255])


@pytest.fixture(scope="module")
def page(browser_page):
    return browser_page  # conftest: Debian's Chromium, 1400 px wide


def picture_rect(image) -> dict:
    """Where the picture lies inside the <img> element (its box, shrunk to fit keeping the aspect)."""
    return image.evaluate("""e => {
        const r = e.getBoundingClientRect();
        const s = Math.min(r.width / e.naturalWidth, r.height / e.naturalHeight, 1);
        const w = e.naturalWidth * s, h = e.naturalHeight * s;
        return {x: (r.width - w) / 2, y: (r.height - h) / 2, width: w, height: h, natural: e.naturalWidth};
    }""")


def test_a_click_far_from_the_centre_of_a_large_preview_gives_that_points_attention(page, tmp_path):
    wide = tmp_path / "wide_star.png"  # 2:1, so the square model input has padding above and below
    Image.open(ROOT / "assets" / "samples" / "star_large.png").resize((384, 192)).save(wide)
    page.get_by_role("tab", name="Saliency").click()
    page.locator("#saliency-image input[type=file]").set_input_files(str(wide))
    preview = page.locator("#saliency-preview img")
    expect(preview).to_be_visible()
    shown = picture_rect(preview)
    assert shown["width"] >= 480 and shown["natural"] == 768  # large: the whole box, not the 96 px input

    # The picture occupies the middle half of the view (rows 25%..75%); click near its top-left corner.
    fx, fy = 0.12, 0.30
    x, y = shown["x"] + fx * shown["width"], shown["y"] + fy * shown["height"]
    preview.click(position={"x": x, "y": y})
    status = page.locator("#saliency-status")
    expect(status).to_contain_text("Rendered the attention of the clicked point", timeout=180_000)
    row, col = map(int, re.search(r"cell (\d+), (\d+) of 12x12", status.inner_text()).groups())
    assert (row, col) == (int(fy * 12), int(fx * 12)) == (3, 1)  # far from the centre cell (6, 6)
    expect(page.locator("#saliency-prediction")).to_contain_text(f"cell ({row}, {col}) of X0's 12x12 grid")
    expect(page.locator("#saliency-prediction")).to_contain_text("Prediction:")
    grid = page.locator("#saliency-grid img")
    expect(grid).to_be_visible()
    assert grid.evaluate("e => e.complete && e.naturalWidth") > 1000  # the rendered per-scale maps
    # The marker: cyan on the clicked cell of the preview, which the click replaced.
    page.wait_for_timeout(500)
    pixels = np.asarray(Image.open(io.BytesIO(preview.screenshot())).convert("RGB")).astype(int)
    cell_w, cell_h = shown["width"] / 12, shown["height"] / 12
    left, top = int(shown["x"] + col * cell_w), int(shown["y"] + row * cell_h)
    around = pixels[top:int(top + cell_h), left:int(left + cell_w)]
    assert (np.abs(around - CYAN).sum(-1) < 60).sum() > 20, "no marker on the clicked cell"

    # A click on the padding (the top stripes): nothing rendered, the status says why.
    preview.click(position={"x": shown["x"] + 0.5 * shown["width"], "y": shown["y"] + 0.15 * shown["height"]})
    expect(status).to_contain_text("the click falls on the padding around the picture")
    expect(status).to_contain_text("Nothing rendered")
