"""Shunted-T backbone (mscsa_lab.models.shunted): shapes, published cost, +MSCSA cost, gradients."""
import pytest
import timm
import torch

import mscsa_lab
import mscsa_lab.models.shunted  # noqa: F401 - registers shunted_tiny with timm
from mscsa_lab.analysis.flops import count_flops
from mscsa_lab.models.shunted import ShuntedTransformer

# Ren et al., CVPR 2022, Table (ImageNet-1k, 224x224): Shunted-T 11.5 M params, 2.1 GFLOPs.
PAPER_PARAMS = 11.5e6
PAPER_FLOPS = 2.1e9
# MSCSA paper: Shunted-T + MSCSA, 2.3 GFLOPs.
PAPER_MSCSA_FLOPS = 2.3e9
CHANNELS = [64, 128, 256, 512]
STRIDES = [4, 8, 16, 32]
SIZES = [(224, 224), (197, 263)]


def _ceil_div(a, b):
    return -(-a // b)


@pytest.fixture(scope="module")
def classifier():
    return timm.create_model("shunted_tiny").eval()


@pytest.fixture(scope="module")
def features():
    return timm.create_model("shunted_tiny", features_only=True).eval()


@pytest.mark.parametrize("size", SIZES)
def test_classifier_shapes(classifier, size):
    """One pass gives the logits (forward == forward_head(forward_features)) and the four NCHW maps."""
    assert classifier.num_classes == 1000
    with torch.no_grad():
        final, maps = classifier.forward_intermediates(torch.randn(1, 3, *size))
        logits = classifier.forward_head(final)
    assert logits.shape == (1, 1000)
    assert torch.isfinite(logits).all()
    assert len(maps) == 4
    torch.testing.assert_close(maps[-1], final)
    for fmap, channels, stride in zip(maps, CHANNELS, STRIDES):
        assert fmap.shape == (1, channels, _ceil_div(size[0], stride), _ceil_div(size[1], stride))


@pytest.mark.parametrize("size", SIZES)
def test_features_only_shapes(features, size):
    assert list(features.feature_info.reduction()) == STRIDES
    assert list(features.feature_info.channels()) == CHANNELS
    with torch.no_grad():
        maps = features(torch.randn(1, 3, *size))
    assert len(maps) == 4
    for fmap, channels, stride in zip(maps, CHANNELS, STRIDES):
        assert fmap.shape == (1, channels, _ceil_div(size[0], stride), _ceil_div(size[1], stride))


def test_feature_info_forward_and_intermediates(classifier):
    assert classifier.feature_info == [
        dict(num_chs=c, reduction=s, module=f"stages.{i}") for i, (c, s) in enumerate(zip(CHANNELS, STRIDES))
    ]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        logits = classifier(x)
        final, maps = classifier.forward_intermediates(x)
        only = classifier.forward_intermediates(x, indices=[1], intermediates_only=True, stop_early=True)
        pooled = classifier.forward_head(final, pre_logits=True)
    torch.testing.assert_close(classifier.forward_head(final), logits)
    assert len(only) == 1
    torch.testing.assert_close(only[0], maps[1])
    assert pooled.shape == (1, 512)


def test_unknown_kwarg_raises_type_error():
    with pytest.raises(TypeError, match="img_size"):
        timm.create_model("shunted_tiny", img_size=224)


def test_published_params_and_flops(classifier):
    params = sum(p.numel() for p in classifier.parameters())
    flops = count_flops(classifier, torch.zeros(1, 3, 224, 224))[""]
    assert params == pytest.approx(PAPER_PARAMS, rel=0.05), f"params {params / 1e6:.3f} M vs paper 11.5 M"
    assert flops == pytest.approx(PAPER_FLOPS, rel=0.05), f"FLOPs {flops / 1e9:.3f} G vs paper 2.1 G"


def test_mscsa_flops():
    model = mscsa_lab.create_mscsa_model(
        backbone="shunted_tiny",
        config=dict(squeeze_ratio="5/8", depth=1, num_heads=8, key_dim=30, mlp_ratio=2.0),
    )
    flops = count_flops(model, torch.zeros(1, 3, 224, 224))[""]
    assert flops == pytest.approx(PAPER_MSCSA_FLOPS, rel=0.05), f"FLOPs {flops / 1e9:.3f} G vs paper 2.3 G"


def test_gradients_reach_every_parameter():
    model = timm.create_model("shunted_tiny").train()
    assert isinstance(model, ShuntedTransformer)
    out = model(torch.randn(2, 3, 64, 64))
    out.logsumexp(dim=1).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    dead = [name for name, p in model.named_parameters() if not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not dead, f"zero or non-finite gradient for {dead}"
