"""The model diagram (``mscsa_lab.analysis.diagram``): its numbers are the model's, it changes with
the model, and nothing in it is clipped.

Expected numbers are computed here from the model (its attributes, ``architecture_tables`` and a
forward pass), never copied from the diagram's own helpers, so a diagram that drifted from the model
fails. Small inputs and backbones keep the module fast on two CPU cores.
"""
from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from mscsa_lab.analysis.architecture import architecture_tables  # noqa: E402
from mscsa_lab.analysis.diagram import (  # noqa: E402
    MAX_BLOCKS_DRAWN,
    diagram_svg,
    figure_svg,
    model_diagram,
    save_diagram,
)
from mscsa_lab.registry import create_mscsa_model  # noqa: E402

SVG_TEXT = "{http://www.w3.org/2000/svg}text"
SMALL = dict(num_heads=2, key_dim=8, squeeze_ratio="1/4")  # a cheap MSCSA for the configuration tests


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small convolutions run faster on one thread, above all on a busy two-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def resnet18():
    return create_mscsa_model(None, backbone="resnet18", num_classes=7, config=dict(num_heads=4, key_dim=16,
                                                                                    squeeze_ratio="1/2")).eval()


@pytest.fixture(scope="module")
def pvt_v2_b0():
    return create_mscsa_model("pvt_v2_b0").eval()


@pytest.fixture(scope="module")
def dense_model():
    return create_mscsa_model(None, backbone="efficientnet_b0", task="dense", config=dict(SMALL, depth=2)).eval()


@pytest.fixture(scope="module")
def segmentation_model():
    return create_mscsa_model("topformer_tiny", task="segmentation").eval()


def svg_lines(svg: str) -> list[str]:
    """The text of every <text> element of an SVG document (which must parse as XML)."""
    root = ET.fromstring(svg.encode("utf-8"))
    return ["".join(element.itertext()) for element in root.iter(SVG_TEXT)]


def assert_drawn(lines: list[str], expected: str) -> None:
    assert any(expected in line for line in lines), f"{expected!r} not in the diagram: {lines}"


def assert_model_numbers(model, input_size: tuple[int, int], lines: list[str]) -> None:
    """Stages, squeeze widths, concat width, token counts per scale, depth and heads as the model has them."""
    tables = architecture_tables(model, input_size)
    for row in tables["stages"].itertuples(index=False):
        stage, stride, channels, mscsa_channels, map_size = row
        assert_drawn(lines, f"Stage {stage} · stride {stride}")
        assert_drawn(lines, f"{channels} ch · {map_size}")
        if mscsa_channels != channels:
            assert_drawn(lines, f"squeeze 1x1 conv+BN {channels} → {mscsa_channels} ch")
    grid = "x".join(map(str, tables["summary"]["mscsa_grid"]))
    assert_drawn(lines, f"= {model.mscsa.dim} ch · {grid}")
    assert_drawn(lines, " + ".join(str(c) for c in model.mscsa.split_channels))
    for row in tables["scales"].itertuples(index=False):
        scale, scale_grid, tokens = row
        assert_drawn(lines, f"K/V {scale}: {scale_grid} = {tokens} tokens")
    assert_drawn(lines, f"keys per query: {int(tables['scales']['tokens'].sum())}")
    depth = len(model.mscsa.blocks)
    attention = model.mscsa.blocks[0].attn1
    assert_drawn(lines, f"{attention.num_heads} heads")
    assert_drawn(lines, f"key dim {attention.key_dim} · value dim {attention.value_dim}")
    assert_drawn(lines, f"MSCSA: {depth} block")
    if depth <= MAX_BLOCKS_DRAWN:
        for number in range(1, depth + 1):
            assert_drawn(lines, f"MSCSA block {number} of {depth}")
        assert sum(line.startswith("CSA ") for line in lines) == 2 * depth


def assert_nothing_clipped(figure) -> None:
    """Every text inside the figure, every box's text inside its box, and top-level boxes apart,
    at screen and at print resolution."""
    for dpi in (100, 150):
        figure.set_dpi(dpi)
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        bounds = figure.bbox
        patches = {p.get_gid(): p.get_window_extent(renderer) for p in figure.findobj(FancyBboxPatch) if p.get_gid()}
        texts = [t for t in figure.findobj(Text) if t.get_text() and t.get_visible()]
        assert texts
        for text in texts:
            extent = text.get_window_extent(renderer)
            assert (extent.x0 >= bounds.x0 - 0.5 and extent.y0 >= bounds.y0 - 0.5
                    and extent.x1 <= bounds.x1 + 0.5 and extent.y1 <= bounds.y1 + 0.5), text.get_text()
            match = re.fullmatch(r"(.+)-text-\d+", text.get_gid() or "")
            if match and match.group(1) in patches:
                box = patches[match.group(1)]
                assert (extent.x0 >= box.x0 and extent.x1 <= box.x1 and extent.y0 >= box.y0
                        and extent.y1 <= box.y1), f"{text.get_text()!r} leaves its box {match.group(1)}"
        top_level = {gid: box for gid, box in patches.items() if re.fullmatch(r"box-[^-]+", gid)}
        for (name_a, a), (name_b, b) in itertools.combinations(top_level.items(), 2):
            assert not a.overlaps(b), f"{name_a} overlaps {name_b}"
        for gid, box in patches.items():
            parent = gid.rsplit("-", 1)[0]
            if gid.count("-") == 2 and parent in patches:
                outer = patches[parent]
                assert outer.x0 <= box.x0 and box.x1 <= outer.x1 and outer.y0 <= box.y0 and box.y1 <= outer.y1


def test_classification_diagram_has_the_model_numbers(resnet18):
    figure = model_diagram(resnet18, (224, 224))
    lines = svg_lines(figure_svg(figure))
    assert_model_numbers(resnet18, (224, 224), lines)
    assert_drawn(lines, f"{resnet18.num_features} → {resnet18.num_classes} classes")
    assert_drawn(lines, f"logits: {resnet18(torch.zeros(1, 3, 64, 64)).shape[1]}")
    assert_drawn(lines, "Backbone: resnet18")
    assert_drawn(lines, "3 ch · 224x224")
    assert not any("fuse g" in line for line in lines)
    assert_nothing_clipped(figure)


def test_profile_diagram_matches_architecture_tables(pvt_v2_b0):
    figure = model_diagram(pvt_v2_b0, (224, 224))
    lines = svg_lines(figure_svg(figure))
    assert_model_numbers(pvt_v2_b0, (224, 224), lines)
    assert_drawn(lines, "Intra-FFN (per-stage FFNs)")
    for part, ffn in enumerate(pvt_v2_b0.mscsa.blocks[0].intra_ffn.stage_ffns, start=1):
        width, hidden = ffn.fc1.conv.in_channels, ffn.fc1.conv.out_channels
        assert_drawn(lines, f"part {part}: {width} → {hidden} → {width} ch")
    assert_drawn(lines, "PCP on · MSP dwconv")
    assert_nothing_clipped(figure)


def test_dense_diagram_shows_the_fusion_back_into_each_stage(dense_model):
    size = (96, 128)
    figure = model_diagram(dense_model, size)
    lines = svg_lines(figure_svg(figure))
    assert_model_numbers(dense_model, size, lines)
    with torch.no_grad():
        fused = dense_model(torch.zeros(1, 3, *size))
    for number, (fused_map, part, channels) in enumerate(
            zip(fused, dense_model.mscsa.split_channels, dense_model.backbone.channels), start=1):
        assert_drawn(lines, f"fuse g{number} into F{number}")
        assert_drawn(lines, f"1x1 conv+BN {part} → {channels} ch")
        assert_drawn(lines, f"→ {fused_map.shape[1]} ch · {fused_map.shape[2]}x{fused_map.shape[3]}")
    assert_drawn(lines, "backbone maps F1..F4 (skip) into the fusion")
    assert not any("classes" in line for line in lines)
    assert_nothing_clipped(figure)


def test_segmentation_diagram_shows_injection_and_logits(segmentation_model):
    size = (256, 256)
    figure = model_diagram(segmentation_model, size)
    lines = svg_lines(figure_svg(figure))
    assert_model_numbers(segmentation_model, size, lines)
    with torch.no_grad():
        logits = segmentation_model(torch.zeros(1, 3, *size))
    assert_drawn(lines, f"{logits.shape[1]} classes · {logits.shape[2]}x{logits.shape[3]} logits")
    for index in range(4):
        text = f"inject g{index + 1} into T{index + 1}" if index in segmentation_model.inject_indices \
            else f"g{index + 1}: not injected"
        assert_drawn(lines, text)
    assert_nothing_clipped(figure)


def test_depth_changes_the_drawn_blocks():
    shallow = create_mscsa_model(None, backbone="mobilenetv3_small_050", config=dict(SMALL, depth=2)).eval()
    deep = create_mscsa_model(None, backbone="mobilenetv3_small_050", config=dict(SMALL, depth=3)).eval()
    shallow_lines, deep_lines = (svg_lines(diagram_svg(m, (64, 64))) for m in (shallow, deep))
    assert_model_numbers(shallow, (64, 64), shallow_lines)
    assert_model_numbers(deep, (64, 64), deep_lines)
    assert_drawn(shallow_lines, "MSCSA: 2 blocks")
    assert_drawn(deep_lines, "MSCSA block 3 of 3")
    assert not any("block 3 of" in line for line in shallow_lines)


def test_input_size_changes_stage_sizes_and_token_counts(resnet18):
    small, large = svg_lines(diagram_svg(resnet18, (224, 224))), svg_lines(diagram_svg(resnet18, (320, 320)))
    assert_model_numbers(resnet18, (320, 320), large)
    tokens = {size: architecture_tables(resnet18, size)["scales"]["tokens"].tolist()
              for size in ((224, 224), (320, 320))}
    assert tokens[(224, 224)] != tokens[(320, 320)]
    assert_drawn(small, f"K/V X0: 7x7 = {tokens[(224, 224)][0]} tokens")
    assert_drawn(large, f"K/V X0: 10x10 = {tokens[(320, 320)][0]} tokens")
    assert not any(f"= {tokens[(224, 224)][0]} tokens" in line for line in large)


def test_ablation_switches_are_drawn():
    model = create_mscsa_model(None, backbone="mobilenetv3_small_050",
                               config=dict(SMALL, use_pcp=False, use_msp=False, use_intra_ffn=False)).eval()
    figure = model_diagram(model, (64, 96))
    lines = svg_lines(figure_svg(figure))
    assert_model_numbers(model, (64, 96), lines)
    assert_drawn(lines, "PCP off · MSP off (one scale)")
    assert_drawn(lines, "FFN (Intra-FFN off)")
    assert not any("K/V X1" in line for line in lines)
    assert_nothing_clipped(figure)


def test_deep_models_draw_identical_blocks_once():
    depth = MAX_BLOCKS_DRAWN + 1
    model = create_mscsa_model(None, backbone="mobilenetv3_small_050", config=dict(SMALL, depth=depth)).eval()
    figure = model_diagram(model, (64, 64))
    lines = svg_lines(figure_svg(figure))
    assert_model_numbers(model, (64, 64), lines)
    assert_drawn(lines, f"MSCSA blocks 1–{depth} of {depth} ({depth} identical)")
    assert_nothing_clipped(figure)


def test_save_diagram_writes_svg_and_png_and_leaves_the_model_as_it_was(tmp_path, resnet18):
    resnet18.train()
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    try:
        svg_path = save_diagram(resnet18, tmp_path / "out" / "model.svg", (64, 64))
        png_path = save_diagram(resnet18, tmp_path / "model.png", (64, 64))
        assert resnet18.training
        assert all(torch.equal(before[k], v) for k, v in resnet18.state_dict().items())
    finally:
        resnet18.eval()
    text = svg_path.read_text(encoding="utf-8")
    assert svg_lines(text) and "Stage 4 · stride 32" in text
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.rcParams["svg.fonttype"] == matplotlib.rcParamsDefault["svg.fonttype"]
    with pytest.raises(ValueError, match="svg or .png"):
        save_diagram(resnet18, tmp_path / "model.pdf", (64, 64))


def test_models_without_mscsa_are_refused():
    with pytest.raises(TypeError, match="backbone\\+MSCSA model"):
        model_diagram(torch.nn.Linear(2, 2))
