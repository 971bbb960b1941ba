"""The paper's ablation and dense-prediction FLOPs (Tables 2, 4, 5), beside our counts.

What reproduces and what does not (docs/DESIGN.md, section 7):
- Table 4 with the FFN ratio rule (2 without Intra-FFN, 3 with it, as the paper says it raised the ratio
  only thanks to Intra-FFN): the PCP and Intra-FFN steps are the paper's within 1 M; the MSP step is
  +4.6 M against the paper's +2 M. Table 3 (TopFormer segmentation, both T and B) pins MSP's cost to
  our construction (one K/V projection per scale), so no reading fits all three tables; every row sits
  2-5 M under the paper's.
- Table 5: each strategy's change against the parallel depthwise convs is the paper's within 1 M;
  the rows sit a constant ~2.2 M under the paper's (the same offset as Table 4's full model).
- Table 2 (800x1280, dense): MSCSA's increment is the paper's within rounding for PVTv2/P2T/Swin/ConvNeXt,
  but +15.3 G for ResNet-50 against the paper's +11 G: the 2048-channel stage's squeeze conv (1.05 G)
  and its injection convs (2.11 G) plus stage 3's (0.79 G) make the 4 G; no reading of Table 7 and
  Fig. 5 we found gives +11 G without breaking the other rows or Table 6.
"""
import pytest

from mscsa_lab.analysis.ablation import PAPER_TABLE2_INCREMENT_G, ablation_flops
from mscsa_lab.analysis.compare import measure_pair
from mscsa_lab.models.config import TABLE4_VARIANTS, TABLE5_VARIANTS
from mscsa_lab.presets import load_profile


@pytest.fixture(scope="module")
def table4():
    return ablation_flops("topformer_tiny", list(TABLE4_VARIANTS)).frame.set_index("Variant")


@pytest.fixture(scope="module")
def table5():
    return ablation_flops("topformer_tiny", list(TABLE5_VARIANTS)).frame.set_index("Variant")


def test_topformer_profiles_carry_the_ffn_ratio_rule():
    for name in ("topformer_tiny", "topformer_base"):
        config = load_profile(name).config
        assert config.mlp_ratio == 3.0 and config.mlp_ratio_without_intra == 2.0
        assert config.with_ablation("+pcp").ffn_ratio == 2.0 and config.with_ablation("+msp").ffn_ratio == 3.0


@pytest.mark.parametrize("variant, ours", [("none", 124.40), ("+pcp", 124.60), ("+intra_ffn", 125.23), ("+msp", 129.81)])
def test_table4_rows(table4, variant, ours):
    row = table4.loc[variant]
    assert row["FLOPs (M)"] == pytest.approx(ours, abs=0.1)  # our count, fixed
    assert row["Paper FLOPs (M)"] - 5.0 < row["FLOPs (M)"] < row["Paper FLOPs (M)"]  # 2-5 M under the paper
    assert row["FFN ratio"] == (3.0 if variant in ("+intra_ffn", "+msp") else 2.0)


def test_table4_steps(table4):
    steps, paper = table4["Step (M)"], table4["Paper step (M)"]
    assert steps["+pcp"] == pytest.approx(paper["+pcp"], abs=1.0)
    assert steps["+intra_ffn"] == pytest.approx(paper["+intra_ffn"], abs=1.0)
    assert steps["+intra_ffn"] > 0  # the sign the paper reports, thanks to the ratio rule
    assert steps["+msp"] == pytest.approx(4.58, abs=0.1) and paper["+msp"] == 2.0  # documented gap


@pytest.mark.parametrize("variant", list(TABLE5_VARIANTS))
def test_table5_rows(table5, variant):
    row = table5.loc[variant]
    assert row["Paper FLOPs (M)"] - 3.0 < row["FLOPs (M)"] < row["Paper FLOPs (M)"] - 1.9
    ours_change = row["FLOPs (M)"] - table5.loc["dwconv", "FLOPs (M)"]
    paper_change = row["Paper FLOPs (M)"] - table5.loc["dwconv", "Paper FLOPs (M)"]
    assert ours_change == pytest.approx(paper_change, abs=1.0)


@pytest.mark.parametrize("name, ours", [("pvt_v2_b0", 2.755), pytest.param("resnet50", 15.284, marks=pytest.mark.slow)])
def test_table2_dense_increments(name, ours):
    pair = measure_pair(name, (800, 1280), "dense")
    increment = (pair.flops_mscsa - pair.flops) / 1e9
    assert increment == pytest.approx(ours, abs=0.01)
    if name == "resnet50":
        assert increment - PAPER_TABLE2_INCREMENT_G[name] == pytest.approx(4.3, abs=0.1)  # the documented gap
    else:
        assert increment == pytest.approx(PAPER_TABLE2_INCREMENT_G[name], abs=0.65)
