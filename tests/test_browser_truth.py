"""What the page shows is true and readable, in Debian's Chromium at 1400 px (Playwright, no browser download):
every tab keeps a failed action's message in its status line (after the notice is gone) with its results
cleared, then says what a successful action did; no table header breaks inside a word and no chart is cut.
Refreshes the screenshots in assets/screenshots/."""
from pathlib import Path

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.integration]

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "assets" / "screenshots"
SAMPLE = ROOT / "assets" / "samples" / "star_large.png"
NOTICE_GONE_S = 12  # Gradio's notices fade; the status line must still say what happened

BROKEN_WORDS = """() => {
  const broken = [];
  for (const th of document.querySelectorAll('table th')) {
    if (!th.offsetParent) continue;
    const walker = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
    let node;
    while ((node = walker.nextNode())) {
      const re = /\\S+/g;
      let m;
      while ((m = re.exec(node.textContent))) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const tops = new Set(Array.from(range.getClientRects()).filter(r => r.width > 0).map(r => Math.round(r.top)));
        if (tops.size > 1) broken.push(m[0]);
      }
    }
  }
  return broken;
}"""

CUT_IMAGES = """() => {
  const cut = [];
  for (const img of document.querySelectorAll('img')) {
    if (!img.offsetParent || !img.naturalWidth || img.closest('#saliency-preview')) continue;
    const r = img.getBoundingClientRect();
    const box = img.parentElement.getBoundingClientRect();
    const aspect = Math.abs(r.width / r.height - img.naturalWidth / img.naturalHeight);
    const fit = getComputedStyle(img).objectFit;
    const outside = r.left < box.left - 1 || r.right > box.right + 1;
    if (outside || (aspect > 0.02 && fit !== 'contain' && fit !== 'scale-down')) cut.push(img.alt || img.src.slice(0, 60));
  }
  return cut;
}"""


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def fill(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(value)


def check_failure_stays(page, status: str, message: str, cleared: str | None = None, fade: bool = False) -> None:
    """The status line says what failed once the notice is gone: faded by itself (``fade``, once: that takes
    ``NOTICE_GONE_S``) or closed by the user with its x."""
    expect(page.locator(f"#{status}")).to_contain_text(message)
    expect(page.locator(".toast-body:visible").first).to_be_visible()  # the notice is up
    if not fade:
        for close in page.locator('[data-testid="toast-close"]').all():
            if close.is_visible():
                close.click()
    # a notice left alone fades within NOTICE_GONE_S: wait for that, not a fixed time
    expect(page.locator(".toast-body:visible")).to_have_count(0, timeout=NOTICE_GONE_S * 1000)
    expect(page.locator(f"#{status}")).to_contain_text("Failed")
    expect(page.locator(f"#{status}")).to_contain_text(message)
    if cleared:
        assert page.locator(f"#{cleared} tbody tr").count() in (0, 1)  # empty (Gradio keeps one blank row)


def check_readable(page) -> None:
    assert page.evaluate(BROKEN_WORDS) == [], "a table header breaks inside a word"
    assert page.evaluate(CUT_IMAGES) == [], "a chart or picture is cut"


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_every_tab_keeps_its_last_message_and_clears_failed_results(browser_page):
    page = browser_page
    open_tab(page, "Build")
    fill(page, "build-depth", "99")
    page.locator("#build-button").click()
    check_failure_stays(page, "build-status", "depth=99 is out of range", cleared="build-stages", fade=True)
    screenshot(page, "error")
    fill(page, "build-depth", "")
    page.locator("#build-button").click()
    expect(page.locator("#build-status")).to_contain_text("Built pvt_v2_b1 + MSCSA in")
    expect(page.locator("#build-stages")).to_contain_text("stride")
    check_readable(page)
    screenshot(page, "build")

    open_tab(page, "Profile")
    page.locator("#profile-memory input").check()
    fill(page, "profile-batch", "100000")
    page.locator("#profile-button").click()
    check_failure_stays(page, "profile-status", "memory batch must be a whole number from 1 to 256",
                        cleared="profile-table")
    fill(page, "profile-batch", "2")
    page.locator("#profile-button").click()
    expect(page.locator("#profile-status")).to_contain_text("Profiled pvt_v2_b1 + MSCSA in")
    expect(page.locator("#profile-table")).to_contain_text("Activations MiB")
    page.locator("#profile-table-wide input").check()
    expect(page.locator("#profile-table")).to_contain_text("Params share (%)")
    fill(page, "budget-cap", "0")
    page.locator("#budget-button").click()
    check_failure_stays(page, "budget-status", "cap 0% is out of range")
    fill(page, "budget-cap", "10")
    page.locator("#budget-button").click()
    expect(page.locator("#budget-status")).to_contain_text("Searched")
    check_readable(page)
    screenshot(page, "profile")

    open_tab(page, "Benchmark")
    page.locator("#bench-names .token-remove").first.click()
    page.locator("#bench-names input").fill("resnet18")
    page.keyboard.press("Enter")
    for elem_id, value in (("bench-batch", "0"), ("bench-steps", "1"), ("bench-repeats", "2"), ("bench-cap", "5"),
                           ("bench-size", "64")):
        fill(page, elem_id, value)
    page.locator("#bench-button").click()
    check_failure_stays(page, "bench-status", "batch must be a whole number", cleared="bench-table")
    fill(page, "bench-batch", "1")
    page.locator("#bench-button").click()
    expect(page.locator("#bench-status")).to_contain_text("Benchmarked 1 model(s) in", timeout=240_000)
    expect(page.locator("#bench-table")).to_contain_text("not stable")  # two rounds: said, in the table
    check_readable(page)
    screenshot(page, "benchmark")

    open_tab(page, "Saliency")
    page.locator("#saliency-button").click()
    check_failure_stays(page, "saliency-status", "upload an image or pick a sample first")
    page.locator("#saliency-image input[type=file]").set_input_files(str(SAMPLE))
    page.locator("#saliency-button").click()
    expect(page.locator("#saliency-status")).to_contain_text("Rendered")
    expect(page.locator("#saliency-grid img")).to_be_visible()
    check_readable(page)
    screenshot(page, "saliency")

    open_tab(page, "Compare")
    fill(page, "compare-height", "5")
    page.locator("#compare-button").click()
    check_failure_stays(page, "compare-status", "input height=5", cleared="compare-table")
    fill(page, "compare-height", "224")
    page.locator("#compare-button").click()
    expect(page.locator("#compare-status")).to_contain_text("Compared 2 model(s) in", timeout=240_000)
    expect(page.locator("#compare-table")).to_contain_text("Paper FLOPs (G)")
    check_readable(page)
    screenshot(page, "compare")

    open_tab(page, "Train")
    fill(page, "train-backbone", "resnet10t")
    fill(page, "train-size", "32")
    fill(page, "train-steps", "2")
    fill(page, "train-batch", "8")
    fill(page, "train-lr", "fast")
    page.locator("#train-button").click()
    check_failure_stays(page, "train-status", "learning rate must be a number")
    fill(page, "train-lr", "")
    fill(page, "train-name", "truth-run")
    page.locator("#train-button").click()
    expect(page.locator("#train-status")).to_contain_text("truth-run reached its step limit", timeout=300_000)
    check_readable(page)
    screenshot(page, "train")
