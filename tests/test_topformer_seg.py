"""TopFormer + MSCSA for semantic segmentation (the paper's Table 3): MSCSA in place of SASE,
TopFormer's semantic injection and light head kept, compared with TopFormerSeg at 512x512."""
from __future__ import annotations

import math

import pytest
import timm
import torch

import mscsa_lab  # noqa: F401 - registers the models
from mscsa_lab.analysis.compare import build_pair, compare_backbones, paper_figures
from mscsa_lab.models.config import ConfigError
from mscsa_lab.models.topformer import TopFormerSeg, TopFormerSegMSCSA
from mscsa_lab.presets import load_profile
from mscsa_lab.registry import create_mscsa_model

# Table 3 of Shang et al. (2023): FLOPs (G) at 512x512, TopFormer and TopFormer + MSCSA.
PAPER = {"TopFormer-T": (0.576, 0.580), "TopFormer-B": (1.820, 1.814)}


@pytest.fixture(scope="module")
def seg_table():
    return compare_backbones(["topformer_tiny", "topformer_base"], (512, 512), "segmentation")


def _row(table, model):
    frame = table.frame
    return frame[frame["Model"] == model].iloc[0]


@pytest.mark.parametrize("model", ["TopFormer-T", "TopFormer-B"])
def test_segmentation_flops_match_table3(seg_table, model):
    row = _row(seg_table, model)
    base, with_mscsa = PAPER[model]
    assert row["FLOPs (G)"] == pytest.approx(base, rel=0.05)
    assert row["+MSCSA FLOPs (G)"] == pytest.approx(with_mscsa, rel=0.05)
    # The difference is small (a few MFLOPs) but its sign is the paper's: T grows, B shrinks.
    diff = row["+MSCSA FLOPs (G)"] - row["FLOPs (G)"]
    paper_diff = with_mscsa - base
    assert math.copysign(1, diff) == math.copysign(1, paper_diff)
    assert abs(diff - paper_diff) < 0.003  # G: within 3 MFLOPs of the paper's change


def test_segmentation_table_has_paper_columns_and_params(seg_table):
    tiny, base = _row(seg_table, "TopFormer-T"), _row(seg_table, "TopFormer-B")
    assert (tiny["Paper FLOPs (G)"], tiny["Paper +MSCSA FLOPs (G)"]) == pytest.approx((0.576, 0.580))
    assert (base["Paper FLOPs (G)"], base["Paper +MSCSA FLOPs (G)"]) == pytest.approx((1.820, 1.814))
    assert base["Paper dFLOPs (%)"] == pytest.approx(100 * (1.814 - 1.820) / 1.820)
    assert math.isnan(tiny["Paper FPS (A100)"])  # Table 3 has no FPS: nothing borrowed from Table 6
    assert tiny["Params (M)"] == pytest.approx(1.39, abs=0.01)
    assert tiny["+MSCSA Params (M)"] == pytest.approx(1.67, abs=0.01)
    assert base["Params (M)"] == pytest.approx(5.06, abs=0.01)
    assert base["+MSCSA Params (M)"] == pytest.approx(5.70, abs=0.01)
    assert seg_table.metadata["task"] == "segmentation"
    assert any("Table 3" in note for note in seg_table.notes)
    assert not any("Table 6" in note for note in seg_table.notes)


def test_paper_figures_only_for_their_setting():
    profile = load_profile("topformer_tiny")
    assert paper_figures(profile, "segmentation", (512, 512)) == {"flops_g": 0.576, "flops_mscsa_g": 0.580}
    assert paper_figures(profile, "segmentation", (480, 640)) == {}
    classification = paper_figures(profile, "classification", (224, 224))
    assert classification["flops_g"] == 0.13 and "seg_flops_g" not in classification
    assert paper_figures(profile, "dense", (512, 512)) == {}


def test_pair_is_topformerseg_against_the_mscsa_model():
    label, _, base, model = build_pair("topformer_tiny", (512, 512), "segmentation")
    assert label == "TopFormer-T"
    assert type(base) is TopFormerSeg and type(model) is TopFormerSegMSCSA
    # Same TPM, injection and head: only SASE differs.
    base_keys = {k for k in base.state_dict() if not k.startswith("sase.")}
    model_keys = {k for k in model.state_dict() if not k.startswith("mscsa.")}
    assert base_keys == model_keys
    assert not any(k.startswith("sase.") for k in model.state_dict())


def test_logits_shape_and_summary():
    model = create_mscsa_model("topformer_tiny", task="segmentation", num_classes=150).eval()
    with torch.no_grad():
        for size, logits in (((512, 512), (64, 64)), ((500, 700), (63, 88))):  # stride 8, rounded up
            out = model(torch.randn(1, 3, *size))
            assert out.shape == (1, 150, *logits)
            assert torch.isfinite(out).all()
    summary = model.summary((500, 700))
    assert [s["map_size"] for s in summary["stages"]] == [[125, 175], [63, 88], [32, 44], [16, 22]]
    assert [s["injected"] for s in summary["stages"]] == [False, True, True, True]
    assert summary["mscsa_grid"] == [8, 11]  # 1/64: the stride-32 map halved, rounded up
    assert summary["tokens_per_scale"] == [88, 24, 12]  # 8x11, 4x6, 3x4
    assert summary["logits_size"] == [63, 88]
    assert summary["params"]["total"] == sum(p.numel() for p in model.parameters())
    assert sum(v for k, v in summary["params"].items() if k != "total") == summary["params"]["total"]
    assert [f["reduction"] for f in model.feature_info] == [8, 16, 32]


def test_base_logits_shape():
    model = create_mscsa_model("topformer_base", task="segmentation", num_classes=150).eval()
    assert model.token_channels == [32, 64, 128, 160] and model.mscsa.dim == 384
    with torch.no_grad():
        assert model(torch.randn(1, 3, 512, 512)).shape == (1, 150, 64, 64)


def test_gradients_reach_mscsa():
    # weight_init="torch": no zero-initialised closing BN, so every parameter gets a non-zero gradient.
    model = create_mscsa_model("topformer_tiny", task="segmentation", num_classes=5, weight_init="torch").train()
    torch.manual_seed(0)
    out = model(torch.randn(2, 3, 128, 128))
    target = torch.randint(0, 5, out.shape[:1] + out.shape[2:])
    torch.nn.functional.cross_entropy(out, target).backward()
    missing = [n for n, p in model.mscsa.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    # g1 is not injected, yet its slice of the last block still shapes g2..g4 through attention.
    stage1_ffn = model.mscsa.blocks[-1].intra_ffn.stage_ffns[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stage1_ffn.parameters())


def test_gradients_with_default_init_reach_closing_norms():
    model = create_mscsa_model("topformer_tiny", task="segmentation", num_classes=5).train()
    out = model(torch.randn(2, 3, 64, 64))
    out.square().mean().backward()
    closing = model.mscsa.blocks[0].attn1.proj.bn.weight
    assert torch.count_nonzero(closing) == 0  # zero-residual init: the branch starts at 0 ...
    assert closing.grad.abs().sum() > 0  # ... and learns


def test_settings_overrides_and_timm_entry_point():
    model = create_mscsa_model("topformer_tiny", task="segmentation", depth=1, num_heads=2)
    assert len(model.mscsa.blocks) == 1 and model.config.num_heads == 2
    assert model.mscsa.aggregation.pool_stride == 64
    assert model.num_classes == 150  # ADE20K unless given
    timm_model = timm.create_model("topformer_base_mscsa", task="segmentation", num_classes=19, depth=1)
    assert isinstance(timm_model, TopFormerSegMSCSA)
    assert timm_model.decode_head.cls.out_channels == 19 and len(timm_model.mscsa.blocks) == 1
    assert timm_model.token_channels == [32, 64, 128, 160]


def test_fuse_keeps_outputs():
    model = create_mscsa_model("topformer_tiny", task="segmentation").eval()
    torch.manual_seed(1)
    for m in model.modules():  # non-trivial BN statistics, so folding has something to do
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        before = model(x)
        after = model.fuse()(x)
    bns = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(".norm" in n for n in bns)  # only MSCSA's pre-norms remain
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4 * before.abs().max().item())


@pytest.mark.parametrize("name", ["resnet18", "pvt_v2_b0", "coat_tiny"])
def test_segmentation_needs_a_topformer_profile(name):
    with pytest.raises(ConfigError, match=r"only for the TopFormer profiles.*use task='dense'"):
        create_mscsa_model(name, task="segmentation")


def test_segmentation_errors_elsewhere():
    with pytest.raises(ConfigError, match="only for the TopFormer profiles"):
        create_mscsa_model(backbone="resnet18", task="segmentation")
    with pytest.raises(ConfigError, match="only for the TopFormer profiles"):
        timm.create_model("resnet50_mscsa", task="segmentation")
    with pytest.raises(ConfigError, match="only for the TopFormer profiles"):
        compare_backbones(["resnet18"], (512, 512), "segmentation")
    with pytest.raises(ConfigError, match="no weights are published"):
        create_mscsa_model("topformer_tiny", task="segmentation", pretrained=True)
