"""Scoring maps on the token grid (hottest cell, ties shared, chance baselines), the grid layouts,
letterbox padding left out of maps and scores, and clicks mapped onto the query grid."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from mscsa_lab.explain.evaluation import (area_above_half_max, box_coverage, centre_cell_in_box, peak_cells,
                                          peak_in_box, pixel_peak_in_box, random_cell_in_box)
from mscsa_lab.explain.geometry import ScaleGeometry, cell_centre_on_shown, map_click, map_on_original
from mscsa_lab.explain.methods import attribute_all
from mscsa_lab.explain.render import overlay, paper_figure
from mscsa_lab.io.checkpoints import load_demo_model
from mscsa_lab.io.images import prepare_image


@pytest.fixture(scope="module")
def demo():
    return load_demo_model()


def _png(width, height, colour=(200, 30, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------ grid scoring
def test_the_hottest_cell_scores_by_its_centre_and_ties_are_shared():
    grid = np.zeros((4, 4), np.float32)
    grid[3, 3] = 1.0  # bottom-right cell of a 96x96 input: pixels 72..95, centre (84, 84)
    assert peak_in_box(grid, (70, 70, 96, 96), (96, 96)) == 1.0
    assert peak_in_box(grid, (0, 0, 80, 80), (96, 96)) == 0.0  # covers the cell's corner, not its centre
    grid[0, 0] = 1.0  # a tie: one of the two hottest cells inside
    assert peak_in_box(grid, (70, 70, 96, 96), (96, 96)) == 0.5
    flat = np.zeros((4, 4), np.float32)  # no evidence at all: every cell ties, i.e. chance
    assert peak_in_box(flat, (0, 0, 48, 96), (96, 96)) == random_cell_in_box((4, 4), (0, 0, 48, 96), (96, 96)) == 0.5
    valid = np.ones((4, 4), bool)
    valid[3] = False  # padding row: its hot cell is ignored
    assert peak_cells(grid, valid).sum() == 1 and peak_cells(grid, valid)[0, 0]


def test_baselines_and_area_above_half_maximum():
    box = (0, 0, 48, 48)  # the top-left quadrant
    assert random_cell_in_box((4, 4), box, (96, 96)) == 0.25
    assert centre_cell_in_box((4, 4), box, (96, 96)) == 0.25  # the four middle cells tie, one is inside
    assert centre_cell_in_box((3, 3), (32, 32, 64, 64), (96, 96)) == 1.0
    grid = np.zeros((4, 4), np.float32)
    grid[0, 0], grid[0, 1], grid[1, 0], grid[2, 2] = 1.0, 0.6, 0.5, 0.4
    assert area_above_half_max(grid) == 3 / 16
    valid = np.ones((4, 4), bool)
    valid[:, 3] = False
    assert area_above_half_max(grid, valid) == 3 / 12
    assert box_coverage(grid, box, (96, 96)) == 3 / 4
    assert np.isnan(area_above_half_max(np.ones((4, 4))))
    full = np.zeros((96, 96), np.float32)
    full[60, 10] = 1.0
    assert pixel_peak_in_box(full, box) == 0.0 and pixel_peak_in_box(full, (0, 48, 48, 96)) == 1.0


def test_aligned_layout_puts_coarse_tokens_where_their_convolution_centres_them():
    tiled = ScaleGeometry((4, 4), (96, 96))
    aligned = ScaleGeometry((4, 4), (96, 96), base_size=(12, 12), stride=3)
    assert tiled.centres()[1][0].tolist() == [12, 36, 60, 84]
    assert aligned.centres()[1][0].tolist() == [4, 28, 52, 76]  # X0 cells 0, 3, 6, 9 of 8 px
    one_hot = torch.zeros(4, 4)
    one_hot[1, 1] = 1.0
    for layout, centre in ((tiled, 36), (aligned, 28)):
        up = layout.upsample(one_hot)
        row, col = np.unravel_index(np.argmax(up), up.shape)
        assert abs(row - centre) <= 1 and abs(col - centre) <= 1
    x0 = ScaleGeometry((12, 12), (96, 96), base_size=(12, 12), stride=1)
    np.testing.assert_allclose(x0.upsample(one_hot.repeat(3, 3)), ScaleGeometry((12, 12), (96, 96)).upsample(
        one_hot.repeat(3, 3)), atol=1e-6)  # X0 is the same in both layouts


# ---------------------------------------------------------------------------------- padding
def test_letterbox_padding_is_left_out_of_maps_and_scores(demo):
    model, meta = demo
    prepared = prepare_image(_png(200, 50), (96, 96), fit="pad", mean=meta["preprocessing"]["mean"],
                             std=meta["preprocessing"]["std"])
    assert prepared.content_box == (0, 36, 96, 60)
    results = attribute_all(model, prepared.tensor, ["gradxact", "attention"], ["key"], valid_box=prepared.content_box)
    for result in results.values():
        for scale, full in enumerate(result.maps):
            assert np.isnan(full[:36]).all() and np.isnan(full[60:]).all() and np.isfinite(full[36:60]).all()
            centres_y = result.geometries()[scale].centres()[0][:, 0]
            valid_rows = result.valid(scale)[:, 0]
            assert valid_rows.any() and not valid_rows.all()
            assert ((centres_y[valid_rows] > 30) & (centres_y[valid_rows] < 66)).all()
        combined = result.combined_map()
        assert np.isnan(combined[:36]).all() and np.isfinite(combined[36:60]).all()
    archive = results[("gradxact", "key")].as_arrays()
    assert archive["valid_box"].tolist() == [0, 36, 96, 60] and archive["scale0_valid"].shape == (12, 12)
    blended = overlay(prepared.display, results[("gradxact", "key")].maps[0])
    assert (blended[:36] == prepared.display[:36]).all() and not (blended[36:60] == prepared.display[36:60]).all()
    figure = paper_figure([(prepared.display, r, "wide") for r in results.values()])
    assert len(figure.axes) == 2 * 4 + 1  # two rows of input + three scales, one colorbar


# ----------------------------------------------------------------------------------- clicks
def test_a_click_on_the_large_preview_maps_to_the_query_grid():
    prepared = prepare_image(_png(200, 50), (96, 96), fit="pad")
    assert prepared.placement == (0.48, 0.48, 0.0, 36.0)
    # The original 200x50 picture drawn at 800x200; a click far from the centre, near the right end.
    click = map_click(prepared, 780, 20, (12, 12), shown="original", shown_size=(800, 200))
    assert click.inside and click.input_xy == pytest.approx((93.6, 38.4))
    assert click.cell == (4, 11)
    x, y = cell_centre_on_shown(prepared, click.cell, (12, 12), "original", (800, 200))
    assert abs(x - 780) < 800 / 12 and abs(y - 20) < 200 / 2  # the marker lands near the click
    padding = map_click(prepared, 48, 10, (12, 12), shown="input")
    assert not padding.inside and "padding" in padding.message
    outside = map_click(prepared, 900, 10, (12, 12), shown_size=(800, 200))
    assert not outside.inside and "outside the picture" in outside.message


def test_a_click_on_a_part_cropped_away_says_so():
    tall = prepare_image(_png(50, 200), (96, 96), fit="crop")
    assert tall.placement[1] == pytest.approx(96 / 50) and tall.placement[3] == -144
    top = map_click(tall, 25, 5, (12, 12))
    assert not top.inside and "cropped away" in top.message
    middle = map_click(tall, 25, 100, (12, 12))
    assert middle.inside and middle.cell == (6, 6)


def test_maps_redrawn_over_the_original_picture_follow_its_placement():
    padded = prepare_image(_png(200, 50), (96, 96), fit="pad")
    ramp = np.tile(np.arange(96, dtype=np.float32) + 0.5, (96, 1))  # each input pixel's own x centre
    ramp[:36] = ramp[60:] = np.nan  # the padding
    drawn = map_on_original(padded, ramp)
    assert drawn.shape == (50, 200) and np.isfinite(drawn).all()
    expected = (np.arange(200) + 0.5) * 0.48
    assert np.abs(drawn[25, 2:-2] - expected[2:-2]).max() < 1e-3  # an original pixel shows its input pixel's value
    cropped = prepare_image(_png(50, 200), (96, 96), fit="crop")
    shown = map_on_original(cropped, np.ones((96, 96), np.float32), max_side=100)
    assert shown.shape == (100, 25)
    assert np.isnan(shown[:37]).all() and np.isfinite(shown[38:62]).all() and np.isnan(shown[63:]).all()
