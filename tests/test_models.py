"""Backbone + MSCSA models built the way users build them: through timm and through profiles."""
import io

import pytest
import safetensors.torch
import timm
import torch

from conftest import randomize_batchnorm
from mscsa_lab import BackboneError, ConfigError, PretrainedWeightsUnavailable, create_mscsa_model
from mscsa_lab.models.layers import ConvBN
from mscsa_lab.presets import list_profiles

from conftest import everyday

AVAILABLE = [p for p in list_profiles() if p.available]


def build(profile, height=224, width=224, **kwargs):
    # Swin's windows need the input size at construction; the other backbones ignore img_size.
    return timm.create_model(profile.model_name, img_size=(height, width), **kwargs).eval()


def test_every_timm_table7_backbone_is_registered():
    expected = {"resnet18_mscsa", "resnet50_mscsa", "pvt_v2_b0_mscsa", "pvt_v2_b1_mscsa", "pvt_v2_b2_mscsa",
                "swin_tiny_patch4_window7_224_mscsa", "convnext_tiny_mscsa", "coat_tiny_mscsa", "coat_small_mscsa",
                "topformer_tiny_mscsa", "topformer_base_mscsa", "p2t_tiny_mscsa", "shunted_tiny_mscsa"}
    assert expected <= set(timm.list_models("*_mscsa"))
    assert {p.model_name for p in AVAILABLE} == expected  # all 13 rows of Table 7


# CoaT's patch embeddings need sides divisible by 32 (timm raises a clear error otherwise).
ODD_SIZE = {"coat_tiny": (256, 352), "coat_small": (256, 352)}


@pytest.mark.parametrize("profile", everyday(AVAILABLE))
def test_classification_shapes_at_224_and_odd_size(profile):
    model = build(profile, num_classes=10)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)
    summary = model.summary((224, 224))
    grid = 224 // profile.config.pool_stride
    assert summary["mscsa_grid"] == [grid, grid]
    assert summary["tokens_per_scale"] == [grid * grid, ((grid - 1) // 2 + 1) ** 2, ((grid - 1) // 3 + 1) ** 2]
    height, width = ODD_SIZE.get(profile.name, (197, 263))
    odd = build(profile, height, width, num_classes=10)
    with torch.no_grad():
        mscsa_map, stages = odd.forward_intermediates(torch.randn(1, 3, height, width))
        logits = odd.forward_head(mscsa_map)
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()
    assert [s.shape[1] for s in stages] == odd.backbone.channels
    pooled_stage = (4, 8, 16, 32).index(profile.config.pool_stride)
    assert mscsa_map.shape[-2:] == stages[pooled_stage].shape[-2:]  # 1/s pooling = the stride-s map's size


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny", "swin_tiny"])
def test_dense_shapes_at_detection_size(name):
    """Shapes only, so on the meta device (every op's output shape, no arithmetic: a second instead of 12-15);
    real forward passes at detection size are test_paper_tables' Table 2 counts."""
    profile = next(p for p in AVAILABLE if p.name == name)
    with torch.device("meta"):
        model = build(profile, 800, 1280, task="dense")
    with torch.no_grad():
        outputs = model(torch.empty(1, 3, 800, 1280, device="meta"))
    assert [tuple(o.shape) for o in outputs] == [
        (1, c, 800 // s, 1280 // s) for c, s in zip(model.backbone.channels, (4, 8, 16, 32))
    ]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]


def test_dense_odd_size_and_swin_nhwc_converted():
    model = create_mscsa_model("pvt_v2_b0", task="dense").eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 197, 263))
    assert [tuple(o.shape[-2:]) for o in outputs] == [(50, 66), (25, 33), (13, 17), (7, 9)]
    swin = create_mscsa_model("swin_tiny", img_size=(64, 64))
    assert swin.backbone.nhwc
    with torch.no_grad():
        stages = swin.backbone(torch.randn(1, 3, 64, 64))
    assert [s.shape[1] for s in stages] == [96, 192, 384, 768]


def test_resnet_skips_the_stem():
    model = create_mscsa_model("resnet18")
    assert model.backbone.channels == [64, 128, 256, 512]
    with torch.no_grad():
        stages = model.backbone(torch.randn(1, 3, 96, 96))
    assert [s.shape[-1] for s in stages] == [24, 12, 6, 3]


@pytest.mark.parametrize("task", ["classification", "dense"])
def test_gradients_reach_every_parameter(task):
    # timm zero-initialises each ResNet block's last BN, and MSCSA its residual-closing BNs
    # (weight_init="zero_residual"), which blocks those branches' gradients at init: both are turned off.
    model = create_mscsa_model("resnet18", task=task, num_classes=5, squeeze_ratio="1/8", num_heads=2, key_dim=8,
                               backbone_kwargs=dict(zero_init_last=False), weight_init="torch")
    model.train()
    outputs = model(torch.randn(2, 3, 96, 128))
    loss = outputs.square().mean() if task == "classification" else sum(o.square().mean() for o in outputs)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("task", ["classification", "dense"])
def test_fused_equals_unfused(task):
    model = create_mscsa_model("pvt_v2_b0", task=task, num_classes=10).eval()
    randomize_batchnorm(model)
    x = torch.randn(2, 3, 160, 192)
    with torch.no_grad():
        reference = model(x)
        features_before = model.forward_head(model.forward_features(x), pre_logits=True) if task == "classification" else None
        model.fuse()
        fused = model(x)
    assert model.is_fused and not any(isinstance(m, ConvBN) for m in model.modules() if m is not model.backbone)
    assert not any(isinstance(m, ConvBN) for m in model.mscsa.modules())
    if task == "classification":
        assert isinstance(model.head.norm, torch.nn.Identity)  # the head's BN was folded too
        with torch.no_grad():
            assert torch.allclose(model.forward_head(model.forward_features(x), pre_logits=True), features_before, atol=1e-5)
    pairs = [(reference, fused)] if task == "classification" else list(zip(reference, fused))
    for ref, out in pairs:
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_sdpa_and_explicit_agree_on_a_full_model():
    model = create_mscsa_model("convnext_tiny", num_classes=10).eval()
    randomize_batchnorm(model.mscsa)
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        sdpa = model(x)
        model.set_attn_impl("explicit")
        explicit = model(x)
    assert torch.allclose(sdpa, explicit, rtol=1e-4, atol=1e-5)


def test_state_dict_round_trip_through_safetensors(tmp_path):
    model = create_mscsa_model("pvt_v2_b0", num_classes=10).eval()
    randomize_batchnorm(model)
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))
    clone = create_mscsa_model("pvt_v2_b0", num_classes=10).eval()
    clone.load_state_dict(safetensors.torch.load_file(str(path)))
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))
    # And the same through torch.save / torch.load(weights_only=True).
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    clone2 = create_mscsa_model("pvt_v2_b0", num_classes=10).eval()
    clone2.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        assert torch.equal(model(x), clone2(x))


def test_any_timm_backbone_with_four_stages():
    model = create_mscsa_model(backbone="efficientnet_b0", config=dict(squeeze_ratio=0.5, num_heads=2, key_dim=8),
                               num_classes=3).eval()
    assert model.backbone.channels == [24, 40, 112, 320]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 128)).shape == (1, 3)


def test_bad_backbones_get_clear_errors():
    with pytest.raises(BackboneError, match="unknown timm backbone 'resnet5000'"):
        create_mscsa_model(backbone="resnet5000")
    with pytest.raises(BackboneError, match="strides 4, 8, 16, 32|missing"):
        create_mscsa_model(backbone="vit_tiny_patch16_224")
    with pytest.raises(ConfigError, match="task"):
        create_mscsa_model("resnet18", task="segmentation")


def test_pretrained_weights_local_file_or_clear_error(tmp_path):
    with pytest.raises(PretrainedWeightsUnavailable, match="no pretrained weights for backbone 'resnet18'"):
        timm.create_model("resnet18_mscsa", pretrained=True)
    # Weights "available locally": a timm resnet18 state dict saved by us.
    source = timm.create_model("resnet18")
    path = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file(source.state_dict(), str(path))
    model = timm.create_model("resnet18_mscsa", pretrained=True, pretrained_file=str(path))
    assert torch.equal(model.backbone.model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.backbone.model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    with pytest.raises(PretrainedWeightsUnavailable, match="does not exist"):
        timm.create_model("resnet18_mscsa", pretrained=True, pretrained_file=str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("name", everyday(["topformer_tiny", "topformer_base", "coat_tiny", "coat_small", "p2t_tiny",
                                           "shunted_tiny"]))
def test_new_table7_rows_profile_benchmark_and_render(name):
    """The six backbones timm lacks (or builds differently) go through every tool."""
    from mscsa_lab.bench.fps import measure_fps
    from mscsa_lab.bench.settings import BenchmarkSettings
    from mscsa_lab.analysis.profiler import profile_model
    from mscsa_lab.explain.saliency import compute_saliency

    model = create_mscsa_model(name, img_size=(96, 96), num_classes=5).eval()
    report = profile_model(model, (96, 96))
    assert report.row("CSA 1 (block 1)").flops > 0 and report.row("backbone").flops > 0
    stages = [report.row(f"stage {i}") for i in range(1, 5)]
    assert all(stage.flops > 0 for stage in stages)
    assert sum(s.flops for s in stages) + report.row("stem and other").flops == report.row("backbone").flops
    fps = measure_fps(model, (96, 96), BenchmarkSettings(device="cpu", warmup=0, steps=1, repeats=1))
    assert fps.fps_median > 0
    result = compute_saliency(model, torch.randn(1, 3, 96, 96), "norm", "value")
    assert [m.shape for m in result.maps] == [(96, 96)] * 3
