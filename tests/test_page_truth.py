"""What the tables, charts and exports say agrees with itself: pinned configurations keep their size and
task, the paper's figures stand only beside the paper's configurations, every FPS chart carries its
intervals, rows that are not findings are marked in every format, and trees keep their indentation."""
import matplotlib
import numpy as np
import pandas as pd
import pytest

from mscsa_lab.analysis.compare import as_configuration, compare_backbones
from mscsa_lab.io.export import ResultTable, read_table
from mscsa_lab.io.figures import plot_throughput, wrapped_title
from mscsa_lab.workflows.spec import ModelSpec

matplotlib.use("Agg")
SMALL = dict(num_heads=2, key_dim=8, squeeze_ratio="1/4")


def test_pinned_configurations_keep_their_size_and_task_and_modified_ones_lose_the_paper():
    pinned = ModelSpec.resolve("resnet18", input_size=(64, 96), settings=SMALL)
    assert as_configuration(pinned).input_size == (64, 96) and as_configuration(pinned).modified
    table = compare_backbones([pinned, "pvt_v2_b0"], (224, 224))
    rows = table.frame.set_index("Model")
    assert rows.loc["resnet18 (squeeze 1/4, heads 2, d 8)", "Input"] == "64x96"
    assert rows.loc["PVTv2-B0", "Input"] == "224x224" and "own input size" in table.title
    assert np.isnan(rows.loc["resnet18 (squeeze 1/4, heads 2, d 8)", "Paper FLOPs (G)"])
    assert rows.loc["PVTv2-B0", "Paper FLOPs (G)"] == pytest.approx(0.57)
    small = compare_backbones([ModelSpec.resolve("resnet18", input_size=(64, 96), settings=SMALL)], (224, 224))
    assert small.frame["FLOPs (G)"][0] < 0.3  # counted at 64x96, not at the comparison's 224x224
    unmodified = compare_backbones(["resnet18"], (224, 224))
    assert "Input" not in unmodified.frame.columns


FRAME = pd.DataFrame([
    {"Model": "steady", "dFPS (%)": -8.0, "dFPS low (%)": -9.0, "dFPS high (%)": -7.0, "Paper dFPS (%)": -9.0,
     "Check": "ok"},
    {"Model": "noisy", "dFPS (%)": 10.9, "dFPS low (%)": -16.0, "dFPS high (%)": 65.6, "Paper dFPS (%)": np.nan,
     "Check": "impossible: +MSCSA faster than the backbone it adds work to (noise); interval +-40.8%: not stable"},
])


def test_fps_charts_carry_their_intervals_and_pale_unstable_rows():
    figure = plot_throughput(FRAME, "A title long enough that a narrow figure would cut it on both sides " * 2)
    axis = figure.axes[0]
    error_bars = [c for c in axis.containers if getattr(c, "errorbar", None) is not None
                  and c.errorbar is not None]
    assert error_bars, "the dFPS bars have no error bars"
    segments = error_bars[0].errorbar.lines[2][0].get_segments()
    spans = sorted(round(abs(s[1][1] - s[0][1]), 1) for s in segments)
    assert spans == [2.0, 81.6]  # -9..-7 and -16..+65.6
    bars = [p for p in axis.patches if p.get_height() == pytest.approx(10.9)]
    assert bars and bars[0].get_hatch() == "//" and bars[0].get_alpha() < 1
    steady = [p for p in axis.patches if p.get_height() == pytest.approx(-8.0)]
    assert steady and not steady[0].get_hatch()
    assert "not a finding (see Check)" in [t.get_text() for t in axis.get_legend().get_texts()]
    title = figure._suptitle.get_text()
    assert "\n" in title and title.replace("\n", " ") == ("A title long enough that a narrow figure would cut it on "
                                                         "both sides " * 2).strip()
    assert wrapped_title("short", 6) == "short"


def test_rows_that_are_not_findings_are_marked_in_markdown_and_latex_and_read_back(tmp_path):
    table = ResultTable("FPS", FRAME)
    markdown, latex = table.to_markdown(), table.to_latex(columns=["Model", "dFPS (%)"])
    assert "| noisy † |" in markdown and "> † not a finding: noisy: impossible" in markdown
    assert "noisy$^\\dagger$" in latex and "\\multicolumn{2}" in latex and "not a finding: noisy" in latex
    for suffix in (".md", ".tex"):
        table.write(tmp_path / f"t{suffix}")
        assert read_table(tmp_path / f"t{suffix}").frame["Model"].tolist() == ["steady", "noisy"]


def test_component_trees_keep_their_indentation_and_the_total_its_rule(tmp_path):
    frame = pd.DataFrame([{"Component": "CSA 1 (block 1)", "Level": 0, "FLOPs (G)": 0.05},
                          {"Component": "Q projection", "Level": 1, "FLOPs (G)": 0.01},
                          {"Component": "scale X0", "Level": 2, "FLOPs (G)": 0.004},
                          {"Component": "total", "Level": 0, "FLOPs (G)": 2.0}])
    latex = ResultTable("Profile", frame, paper_columns=["Component", "FLOPs (G)"]).to_latex()
    lines = latex.splitlines()
    assert "\\hspace{1em}Q projection & 0.0100 \\\\" in lines and "\\hspace{2em}scale X0 & 0.00400 \\\\" in lines
    assert lines[lines.index("total & 2.00 \\\\") - 1] == "\\midrule"
    from mscsa_lab.io.terminal import terminal_table

    shown = terminal_table(ResultTable("Profile", frame, paper_columns=["Component", "FLOPs (G)"]))
    assert "\n  Q projection" in shown and "\n    scale X0" in shown and "Level" not in shown.splitlines()[1]


def _text_outside_the_canvas(figure) -> list[str]:
    """Text that a PNG of the figure (drawn as Gradio draws it: no tight bounding box) would cut."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure) if figure.canvas is None or not hasattr(figure.canvas, "get_renderer") \
        else figure.canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = figure.bbox.width, figure.bbox.height
    cut = []
    for text in figure.findobj(matplotlib.text.Text):
        if not text.get_visible() or not text.get_text().strip():
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
            cut.append(text.get_text())
    return cut


def test_no_chart_title_or_label_is_cut_at_the_size_the_page_draws_it():
    from mscsa_lab.io.figures import plot_comparison, plot_component_breakdown, plot_latency, plot_training_curves

    long = ("Throughput with and without MSCSA (classification, 64x64, CPU (x86_64, 2 threads)): 3 model(s), "
            "batch 1, an overly long title that has to wrap")
    components = pd.DataFrame([{"Component": name, "Level": 0, "Group": group, "FLOPs share (%)": share,
                                "Params share (%)": share, "Time share (%)": share + 1}
                               for name, group, share in (("backbone", "backbone", 80.0), ("CSA 1 (block 1)", "csa", 12.0),
                                                          ("FFN (block 1)", "ffn", 8.0))])
    comparison = pd.DataFrame([{"Model": "PVTv2-B0", "FLOPs (G)": 0.57, "+MSCSA FLOPs (G)": 0.65, "dFLOPs (%)": 14.0,
                                "Paper FLOPs (G)": 0.57, "Paper +MSCSA FLOPs (G)": 0.65}])
    figures = {"throughput": plot_throughput(FRAME, long), "components": plot_component_breakdown(components, long),
               "comparison": plot_comparison(comparison, long), "latency": plot_latency(components, long, False),
               "curves": plot_training_curves([{"kind": "step", "step": 1, "loss": 2.0, "accuracy": 10.0}], long)}
    for name, figure in figures.items():
        assert _text_outside_the_canvas(figure) == [], name
