"""CoaT Tiny/Small: serial blocks from timm, MSCSA in place of the parallel blocks (Table 7)."""
import pytest
import timm
import torch

from mscsa_lab import create_mscsa_model
from mscsa_lab.analysis.compare import measure_pair
from mscsa_lab.presets import load_profile

# Published: CoaT paper (Xu et al., 2021) for the baselines; MSCSA paper's Table 6 for +MSCSA.
PUBLISHED = {"coat_tiny": dict(flops=4.4, params=5.5, flops_mscsa=4.4),
             "coat_small": dict(flops=12.6, params=21.7, flops_mscsa=13.0)}


@pytest.mark.parametrize("name", ["coat_tiny", pytest.param("coat_small", marks=pytest.mark.slow)])
def test_flops_and_params_match_the_published_figures(name):
    pair = measure_pair(name)
    published = PUBLISHED[name]
    assert pair.flops / 1e9 == pytest.approx(published["flops"], rel=0.05)
    assert pair.params / 1e6 == pytest.approx(published["params"], rel=0.05)
    assert pair.flops_mscsa / 1e9 == pytest.approx(published["flops_mscsa"], rel=0.05)


def test_mscsa_takes_the_serial_stages_and_no_parallel_blocks():
    model = timm.create_model("coat_tiny_mscsa", num_classes=10).eval()
    coat = model.backbone.model
    assert not any("parallel" in name for name, _ in coat.named_modules())
    assert model.backbone.channels == [152, 152, 152, 152]
    with torch.no_grad():
        mscsa_map, stages = model.forward_intermediates(torch.randn(1, 3, 224, 224))
        assert model.forward_head(mscsa_map).shape == (1, 10)
    assert mscsa_map.shape[-2:] == (14, 14)  # pooling 1/16: the stride-32 stage is upsampled
    assert len(model.mscsa.blocks) == 3


def test_other_sizes_and_dense_prediction():
    model = create_mscsa_model("coat_small", img_size=(256, 320), num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 256, 320)).shape == (1, 5)
    dense = create_mscsa_model("coat_tiny", task="dense", img_size=(512, 512)).eval()
    assert dense.mscsa.aggregation.pool_stride == 32  # Table 7: 1/32 for dense prediction
    with torch.no_grad():
        outputs = dense(torch.randn(1, 3, 512, 512))
    assert [tuple(o.shape) for o in outputs] == [(1, 152, 512 // s, 512 // s) for s in (4, 8, 16, 32)]
    assert load_profile("coat_tiny").baseline_model == "coat_tiny"
