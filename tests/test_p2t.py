"""P2T-Tiny (Pyramid Pooling Transformer) as a timm backbone: shapes, cost against the paper, gradients."""
import math

import pytest
import timm
import torch

import mscsa_lab.models.p2t  # noqa: F401 - registers p2t_tiny with timm
from mscsa_lab import create_mscsa_model
from mscsa_lab.analysis.flops import count_flops, flop_analysis
from mscsa_lab.models.p2t import P2T, pooled_sizes

CHANNELS = [48, 96, 240, 384]
STRIDES = [4, 8, 16, 32]
PAPER_PARAMS = 11.6e6  # P2T-Tiny, ImageNet-1k classifier at 224x224
PAPER_FLOPS = 1.8e9  # one multiply-add = one FLOP
PAPER_MSCSA_FLOPS = 2.0e9  # P2T-Tiny + MSCSA (Table 6)
MSCSA_CONFIG = dict(squeeze_ratio="3/4", depth=1, num_heads=8, key_dim=36, mlp_ratio=2.0)
SIZES = [(224, 224), (197, 263)]


def stage_sizes(height: int, width: int) -> list:
    """A 7x7 stride-4 conv (padding 3), then 3x3 stride-2 convs (padding 1): ceil at every step."""
    sizes, h, w = [], math.ceil(height / 4), math.ceil(width / 4)
    for _ in range(4):
        sizes.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return sizes


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return timm.create_model("p2t_tiny").eval()


@pytest.fixture(scope="module")
def features():
    torch.manual_seed(0)
    return timm.create_model("p2t_tiny", features_only=True).eval()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_classifier_output_shape(classifier, size):
    assert isinstance(classifier, P2T) and classifier.num_classes == 1000
    with torch.no_grad():
        final = classifier.forward_features(torch.randn(1, 3, *size))
        logits = classifier.forward_head(final)
        pre = classifier.forward_head(final, pre_logits=True)
    assert final.shape == (1, CHANNELS[-1], *stage_sizes(*size)[-1])
    assert logits.shape == (1, 1000)
    assert pre.shape == (1, CHANNELS[-1])
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_features_only_gives_four_nchw_maps(features, size):
    assert features.feature_info.reduction() == STRIDES
    assert features.feature_info.channels() == CHANNELS
    with torch.no_grad():
        maps = features(torch.randn(1, 3, *size))
    assert [tuple(m.shape) for m in maps] == [(1, c, h, w) for c, (h, w) in zip(CHANNELS, stage_sizes(*size))]


def test_forward_intermediates_match_the_classifier(classifier):
    assert classifier.feature_info == [
        dict(num_chs=c, reduction=s, module=f"stages.{i}") for i, (c, s) in enumerate(zip(CHANNELS, STRIDES))
    ]
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        final, intermediates = classifier.forward_intermediates(x)
        last_two = classifier.forward_intermediates(x, indices=2, stop_early=True, intermediates_only=True)
        expected = classifier.forward_features(x)
    assert [tuple(m.shape[1:]) for m in intermediates] == [
        (c, h, w) for c, (h, w) in zip(CHANNELS, stage_sizes(96, 128))
    ]
    torch.testing.assert_close(final, expected)
    torch.testing.assert_close(intermediates[-1], expected)
    assert [m.shape for m in last_two] == [m.shape for m in intermediates[2:]]


def test_pooled_sizes_follow_the_map_and_never_vanish():
    # 224 input: every stage pools to 5x5, 4x4, 3x3, 2x2 except the last (7x7, 4x4, 2x2, 2x2).
    assert pooled_sizes(56, 56, (12, 16, 20, 24)) == [(5, 5), (4, 4), (3, 3), (2, 2)]
    assert pooled_sizes(7, 7, (1, 2, 3, 4)) == [(7, 7), (4, 4), (2, 2), (2, 2)]
    assert pooled_sizes(2, 1, (1, 2, 3, 4))[-1] == (1, 1)


def test_unknown_keyword_raises_type_error_naming_it():
    with pytest.raises(TypeError, match="img_size"):
        timm.create_model("p2t_tiny", img_size=224)


def test_baseline_cost_matches_the_paper(classifier):
    analysis = flop_analysis(classifier, torch.zeros(1, 3, 224, 224))
    flops = analysis.total()
    assert analysis.by_operator()["scaled_dot_product_attention"] > 0, "attention matmuls must be counted"
    params = param_count(classifier)
    assert params == pytest.approx(PAPER_PARAMS, rel=0.05), (
        f"{params / 1e6:.2f} M parameters vs the paper's 11.6 M"
    )
    assert flops == pytest.approx(PAPER_FLOPS, rel=0.05), f"{flops / 1e9:.3f} GFLOPs vs the paper's 1.8 G"


def test_mscsa_model_cost_matches_the_paper():
    model = create_mscsa_model(backbone="p2t_tiny", config=MSCSA_CONFIG)
    assert model.backbone.channels == CHANNELS and model.backbone.strides == STRIDES
    flops = count_flops(model, torch.zeros(1, 3, 224, 224))[""]
    assert flops == pytest.approx(PAPER_MSCSA_FLOPS, rel=0.05), (
        f"P2T-Tiny+MSCSA: {flops / 1e9:.3f} GFLOPs vs the paper's 2.0 G"
    )


def test_gradients_reach_every_parameter(classifier):
    classifier.train()
    try:
        logits = classifier(torch.randn(2, 3, 64, 64))
        torch.nn.functional.cross_entropy(logits, torch.tensor([1, 7])).backward()
        missing = [n for n, p in classifier.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"no gradient for {missing}"
        assert all(torch.isfinite(p.grad).all() for p in classifier.parameters())
    finally:
        classifier.zero_grad(set_to_none=True)
        classifier.eval()
