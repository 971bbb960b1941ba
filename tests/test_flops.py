"""FLOPs with fvcore, attention included: the paper's Table 1 and the SDPA pitfall."""
import pytest
import timm
import torch

from mscsa_lab import create_mscsa_model
from mscsa_lab.analysis.flops import count_flops, flop_analysis, sdpa_flop_jit


def test_table1_one_block_of_pvt_v2_b1_mscsa_at_224():
    model = create_mscsa_model("pvt_v2_b1")
    flops = count_flops(model, torch.randn(1, 3, 224, 224))
    block = "mscsa.blocks.0"
    csa, ffn, intra = flops[f"{block}.attn1"], flops[f"{block}.ffn"], flops[f"{block}.intra_ffn"]
    assert csa / 1e9 == pytest.approx(0.049, rel=0.05)
    assert ffn / 1e9 == pytest.approx(0.081, rel=0.05)
    assert intra / 1e9 == pytest.approx(0.030, rel=0.05)
    assert flops[f"{block}.attn2"] == csa
    total = flops[""]
    assert 100 * csa / total == pytest.approx(2.1, abs=0.1)
    assert 100 * ffn / total == pytest.approx(3.5, abs=0.1)
    assert 100 * intra / total == pytest.approx(1.3, abs=0.1)
    assert total / 1e9 == pytest.approx(2.3, rel=0.05)  # Table 6: PVTv2-B1+MSCSA


def test_attention_matmuls_are_counted():
    """The CSA count includes QK^T and AV: by hand for PVTv2-B1's 7x7 map (49 queries, 74 keys)."""
    model = create_mscsa_model("pvt_v2_b1")
    attention = model.mscsa.blocks[0].attn1
    x = torch.randn(1, 640, 7, 7)
    analysis = flop_analysis(attention.eval(), x)
    matmuls = 8 * 49 * (49 + 16 + 9) * (24 + 48)
    assert analysis.by_operator()["scaled_dot_product_attention"] == matmuls
    attention.attn_impl = "explicit"
    explicit = flop_analysis(attention, x)
    assert explicit.total() == analysis.total()


def test_sdpa_handle_restores_pvt_v2_b0_backbone_flops():
    """fvcore alone drops timm's fused attention (0.534 G); with our handle: 0.572 G."""
    model = timm.create_model("pvt_v2_b0").eval()
    with torch.no_grad():
        analysis = flop_analysis(model, torch.randn(1, 3, 224, 224))
        assert analysis.total() / 1e9 == pytest.approx(0.572, abs=0.002)
        assert "aten::scaled_dot_product_attention" not in analysis.unsupported_ops()


def test_sdpa_flop_formula():
    class Shape:
        def __init__(self, shape):
            self.shape = shape

        def type(self):
            return self

        def sizes(self):
            return self.shape

        def isCompleteTensor(self):  # noqa: N802 - fvcore's jit API
            return True

    flops = sdpa_flop_jit([Shape([2, 4, 10, 8]), Shape([2, 4, 30, 8]), Shape([2, 4, 30, 16])], [])
    assert flops == 2 * 4 * 10 * 30 * (8 + 16)


@pytest.mark.parametrize("profile", ["pvt_v2_b0", "resnet50"])
def test_table6_flops_with_and_without_mscsa(profile):
    """Table 6 of the paper at 224x224: the backbone alone and with MSCSA, within 5%."""
    from mscsa_lab.presets import load_profile

    spec = load_profile(profile)
    x = torch.randn(1, 3, 224, 224)
    backbone = count_flops(timm.create_model(spec.backbone), x)[""] / 1e9
    with_mscsa = count_flops(create_mscsa_model(profile), x)[""] / 1e9
    assert backbone == pytest.approx(spec.paper["flops_g"], rel=0.05)
    assert with_mscsa == pytest.approx(spec.paper["flops_mscsa_g"], rel=0.05)
