"""Profiler, comparison tables, FLOPs budget, exports and the command line."""
import math

import numpy as np

import pandas as pd
import pytest
import timm
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mscsa_lab import create_mscsa_model
from mscsa_lab.analysis.budget import fit_flops_budget
from mscsa_lab.cli import main as cli_main
from mscsa_lab.analysis.compare import compare_backbones
from mscsa_lab.io.export import ResultTable, read_table
from mscsa_lab.io.numbers import format_number
from mscsa_lab.analysis.flops import flop_analysis
from mscsa_lab.analysis.profiler import profile_model


@pytest.fixture(scope="module")
def pvt_b1_report():
    return profile_model(create_mscsa_model("pvt_v2_b1"))


def test_table1_through_the_profiler(pvt_b1_report):
    report = pvt_b1_report
    frame = report.to_frame().set_index("Component")
    assert frame.loc["CSA 1 (block 1)", "FLOPs (G)"] == pytest.approx(0.049, rel=0.05)
    assert frame.loc["FFN (block 1)", "FLOPs (G)"] == pytest.approx(0.081, rel=0.05)
    assert frame.loc["Intra-FFN (block 1)", "FLOPs (G)"] == pytest.approx(0.030, rel=0.05)
    assert frame.loc["CSA 1 (block 1)", "FLOPs share (%)"] == pytest.approx(2.1, abs=0.1)
    assert frame.loc["FFN (block 1)", "FLOPs share (%)"] == pytest.approx(3.5, abs=0.1)
    assert frame.loc["Intra-FFN (block 1)", "FLOPs share (%)"] == pytest.approx(1.3, abs=0.1)


def test_components_partition_the_model(pvt_b1_report):
    report = pvt_b1_report
    top = [r for r in report.rows if r.level == 0]
    assert sum(r.flops for r in top) == report.total_flops
    assert sum(r.params for r in top) == report.total_params
    names = [r.name for r in report.rows]
    index = names.index("CSA 1 (block 1)")
    subparts = []
    for row in report.rows[index + 1:]:
        if row.level == 0:
            break
        if row.level == 1:
            subparts.append(row)
    assert [r.name for r in subparts] == ["Q projection", "K/V projections (3 scales)", "attention matmuls",
                                          "parallel conv path", "output projection"]
    assert sum(r.flops for r in subparts) == report.rows[index].flops
    matmuls = next(r for r in subparts if r.name == "attention matmuls")
    assert matmuls.flops == 8 * 49 * (49 + 16 + 9) * (24 + 48)
    stages = [r for r in report.rows if r.name.startswith("stage ")]
    assert len(stages) == 4 and all(r.flops > 0 for r in stages)
    assert report.group_flops("csa") == 2 * report.rows[index].flops


def test_two_macs_convention_doubles(pvt_b1_report):
    mac = pvt_b1_report.to_frame("mac")
    doubled = pvt_b1_report.to_frame("2x")
    assert (doubled["FLOPs (G)"] == 2 * mac["FLOPs (G)"]).all()
    assert (doubled["FLOPs share (%)"] == mac["FLOPs share (%)"]).all()
    assert "2 x multiply-adds" in pvt_b1_report.to_table("2x").notes[0]


@pytest.mark.parametrize("name", ["pvt_v2_b0", "pvt_v2_b0_mscsa"])
def test_fvcore_agrees_with_pytorch_flop_counter(name):
    """PyTorch's FlopCounterMode counts 2 per multiply-add; with the math SDPA backend it sees the
    attention matmuls too. fvcore (with our handle) also counts norms, hence 'within 2%'."""
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = flop_analysis(model, x).total()
        counter = FlopCounterMode(display=False)
        with sdpa_kernel(SDPBackend.MATH), counter:
            model(x)
    theirs = counter.get_total_flops() / 2
    assert ours == pytest.approx(theirs, rel=0.02)


def test_dense_profile_has_fusion_and_no_head():
    report = profile_model(create_mscsa_model("pvt_v2_b0", task="dense"), (256, 320))
    names = [r.name for r in report.rows]
    assert "dense fusion" in names and "classification head" not in names
    assert report.row("dense fusion").flops > 0 and report.input_size == (256, 320)


def test_uncounted_operators_are_listed(pvt_b1_report):
    assert "aten::gelu" in pvt_b1_report.uncounted_ops  # PVTv2's MLP activation
    note = pvt_b1_report.to_table().notes[1]
    assert "aten::gelu (x8)" in note and "aten::scaled_dot_product_attention" not in note


@pytest.mark.parametrize("suffix", [".csv", ".md", ".tex", ".json"])
def test_exports_parse_back_to_the_same_numbers(tmp_path, pvt_b1_report, suffix):
    table = pvt_b1_report.to_table()
    path = table.write(tmp_path / f"table{suffix}", digits=4)
    back = read_table(path)
    assert back.title == table.title
    assert back.metadata["input_size"] == "224x224" and back.metadata["libraries"]["timm"] == timm.__version__
    assert "device" in back.metadata and "date" in back.metadata and back.metadata["batch"] == 1
    assert back.notes == table.notes
    # LaTeX keeps the columns a paper needs; the other formats keep them all.
    expected_columns = table.latex_columns() if suffix == ".tex" else list(table.frame.columns)
    assert list(back.frame.columns) == expected_columns
    assert back.frame["Component"].tolist() == table.frame["Component"].tolist()
    for column in ("FLOPs (G)", "FLOPs share (%)", "Params (M)") + (("Level",) if suffix != ".tex" else ()):
        expected = table.frame[column].to_numpy(dtype=float)
        if suffix in (".md", ".tex"):  # as printed: the one number rule at 4 significant figures
            expected = np.array([float(format_number(v, column, 4)) for v in expected])
        assert back.frame[column].to_numpy(dtype=float) == pytest.approx(expected, abs=1e-12)


def test_latex_is_booktabs_and_escaped(pvt_b1_report):
    table = pvt_b1_report.to_table()
    text = table.to_latex()
    assert "\\toprule" in text and "\\midrule" in text and "\\bottomrule" in text
    assert "\\begin{table}[t]" in text and "FLOPs share (\\%)" in text  # four columns: fits a paper column
    assert "Group" not in text.split("\\toprule")[1] and "% columns left out (in the CSV/JSON): Level, Group" in text
    chosen = table.to_latex(columns=["Component", "Group", "FLOPs (G)"])
    assert "intra\\_ffn" in chosen and "FLOPs share" not in chosen.split("\\toprule")[1]
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['Nope'\]"):
        table.to_latex(columns=["Component", "Nope"])


def test_one_number_rule_for_every_format():
    from mscsa_lab.io.numbers import format_number, human_count

    assert format_number(3797.0, "FPS") == "3797" and format_number(79.49, "+MSCSA FPS") == "79"
    assert format_number(4.2, "FPS") == "4.20"  # below 10 FPS the significant figures rule
    assert format_number(0.0000479, "FLOPs (G)") == "0.0000479" and format_number(0.0479, "FLOPs (G)") == "0.0479"
    assert format_number(12.345, "dFLOPs (%)") == "12.3" and format_number(-0.04, "d (%)") == "0.0"
    assert format_number(9.996, "x") == "10.0" and format_number(123456.7, "x") == "123457"
    assert format_number(np.int64(3), "Batch") == "3" and format_number(float("nan"), "x") == "-"
    assert human_count(13496000) == "13.5 M" and human_count(2.34e9) == "2.34 G"
    frame = pd.DataFrame({"Model": ["a"], "FPS": [3797.123], "FLOPs (G)": [0.0479123], "dFPS (%)": [-9.87]})
    table = ResultTable("t", frame)
    row = table.to_markdown().splitlines()[4]
    assert row == "| a | 3797 | 0.0479 | -9.9 |"
    assert "a & 3797 & 0.0479 & -9.9 \\\\" in table.to_latex()


@pytest.fixture(scope="module")
def comparison():
    return compare_backbones(["pvt_v2_b0", "resnet18"])


def test_comparison_in_table6_form(comparison):
    frame = comparison.frame.set_index("Model")
    b0 = frame.loc["PVTv2-B0"]
    assert b0["FLOPs (G)"] == pytest.approx(0.57, rel=0.05) and b0["+MSCSA FLOPs (G)"] == pytest.approx(0.65, rel=0.05)
    assert b0["dFLOPs (%)"] == pytest.approx(100 * (b0["+MSCSA FLOPs (G)"] / b0["FLOPs (G)"] - 1))
    assert b0["Paper FLOPs (G)"] == 0.57 and b0["Paper +MSCSA FPS (A100)"] == 3479
    assert b0["Paper dFPS (%)"] == pytest.approx(100 * (3479 / 3797 - 1))
    assert math.isnan(frame.loc["ResNet-18", "Paper FLOPs (G)"])  # not in Table 6
    assert frame.loc["ResNet-18", "Params (M)"] == pytest.approx(11.69, abs=0.01)  # timm's resnet18
    assert comparison.metadata["input_size"] == "224x224"


def test_comparison_at_dense_resolution_has_no_paper_figures():
    table = compare_backbones(["pvt_v2_b0"], (256, 320), task="dense")
    row = table.frame.iloc[0]
    assert row["+MSCSA FLOPs (G)"] > row["FLOPs (G)"] > 0
    assert math.isnan(row["Paper FLOPs (G)"]) and table.metadata["task"] == "dense"


@pytest.mark.slow
def test_budget_finds_the_closest_configuration_under_the_cap():
    result = fit_flops_budget("pvt_v2_b1", cap=0.10)
    assert result.config is not None and result.added_flops <= 0.10 * result.backbone_flops
    fitting = result.candidates[result.candidates["fits"]]
    assert result.added_flops / 1e9 == pytest.approx(fitting["added_gflops"].max())
    # The next larger squeeze ratio (1/16 more) would pass the cap.
    from fractions import Fraction

    ratio = Fraction(result.config.squeeze_ratio).limit_denominator(16)
    bigger = create_mscsa_model("pvt_v2_b1", squeeze_ratio=float(ratio + Fraction(1, 16))).eval()
    bigger_flops = flop_analysis(bigger, torch.zeros(1, 3, 224, 224)).total()
    assert bigger_flops - result.backbone_flops > 0.10 * result.backbone_flops
    assert (result.config.num_heads, result.config.key_dim) == (8, 24)  # a squeeze ratio sufficed
    assert "chose squeeze ratio" in result.message and "% of pvt_v2_b1" in result.message
    # A real model with that configuration adds what the helper said.
    model_flops = flop_analysis(create_mscsa_model("pvt_v2_b1", config=result.config).eval(),
                                torch.zeros(1, 3, 224, 224)).total()
    assert model_flops - result.backbone_flops == result.added_flops


def test_budget_shrinks_heads_when_squeezing_is_not_enough():
    result = fit_flops_budget("resnet18", cap=0.005)
    assert result.config is not None and result.added_flops <= 0.005 * result.backbone_flops
    assert (result.config.num_heads, result.config.key_dim) != (8, 24)
    assert "reduced from 8 x 24" in result.message
    impossible = fit_flops_budget("resnet18", cap=0.0001)
    assert impossible.config is None and "raise the cap" in impossible.message


def test_cli_profile_writes_every_format_and_lists_uncounted_ops(tmp_path, capsys):
    outputs = [tmp_path / f"t1.{s}" for s in ("csv", "md", "tex", "json")]
    figures = [tmp_path / "t1.png", tmp_path / "t1.svg"]
    args = ["profile", "pvt_v2_b0", "--set", "depth=2", "--convention", "2x"]
    for path in outputs:
        args += ["-o", str(path)]
    for path in figures:
        args += ["--plot", str(path)]
    assert cli_main(args) == 0
    printed = capsys.readouterr()
    assert "CSA 1 (block 2)" in printed.out and "mscsa-lab-metadata" not in printed.out  # metadata: files only
    assert "Operators fvcore does not count" in printed.err and "aten::gelu" in printed.err
    json_table = read_table(outputs[3])
    plain = pd.read_csv(outputs[0])  # the CSV is the table alone: plain pandas reads it
    assert plain.columns.tolist() == json_table.frame.columns.tolist()
    assert plain["FLOPs (G)"].to_numpy() == pytest.approx(json_table.frame["FLOPs (G)"].to_numpy(), rel=1e-9)
    for path in outputs[:3]:
        other = read_table(path)
        assert other.frame["Component"].tolist() == json_table.frame["Component"].tolist()
        # three significant figures by default: within half a unit of the third digit
        assert other.frame["FLOPs (G)"].to_numpy() == pytest.approx(json_table.frame["FLOPs (G)"].to_numpy(), rel=5e-3)
    assert json_table.metadata["flops_convention"] == "2x"
    assert figures[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figures[1].read_text().lstrip().startswith("<?xml") and "<svg" in figures[1].read_text()


def test_cli_compare_and_export(tmp_path, capsys):
    json_path = tmp_path / "t6.json"
    assert cli_main(["compare", "pvt_v2_b0", "-o", str(json_path)]) == 0
    assert "PVTv2-B0" in capsys.readouterr().out
    tex, png = tmp_path / "t6.tex", tmp_path / "t6.png"
    assert cli_main(["export", str(json_path), "-o", str(tex), "--plot", str(png)]) == 0
    assert read_table(tex).frame["Model"].tolist() == ["PVTv2-B0"] and png.stat().st_size > 1000


def test_cli_errors_and_help(tmp_path, capsys):
    assert cli_main(["profile", "resnet9"]) == 2
    assert "unknown timm backbone 'resnet9'" in capsys.readouterr().err
    assert cli_main(["profile", "pvt_v2_b0", "-o", str(tmp_path / "t.xlsx")]) == 2
    assert "cannot write table" in capsys.readouterr().err
    assert cli_main(["profile", "pvt_v2_b0", "--set", "depth=0"]) == 2
    assert "depth=0 is out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["profile", "--help"])
    help_text = capsys.readouterr().out
    for option in ("--backbone", "--batch", "--level", "--input", "--task", "--set", "--convention", "--output",
                   "--plot", "--precision"):
        assert option in help_text


def test_cli_review_fixes(capsys):
    # --set takes MSCSA settings only; clashing keys get a message, not a traceback
    assert cli_main(["compare", "resnet18", "--set", "task=dense"]) == 2
    assert "unknown MSCSA setting(s) ['task']" in capsys.readouterr().err
    # latency accepts any timm backbone, not just profiles
    assert cli_main(["latency", "resnet18", "--device", "cpu", "--batch", "1", "--warmup", "0", "--steps", "1",
                     "--repeats", "1", "--input", "64"]) == 0
    assert "CSA 1 (block 1)" in capsys.readouterr().out


def test_budget_on_backbones_too_narrow_to_squeeze():
    from mscsa_lab.models.config import ConfigError

    with pytest.raises(ConfigError, match="too narrow to squeeze"):
        fit_flops_budget("mobilenetv3_small_050", 0.1, (64, 64))
