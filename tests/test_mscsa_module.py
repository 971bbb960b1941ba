"""The MSCSA module on its own (no backbone): Eq. 3 sizes, attention paths, ablations, fuse."""
import math

import pytest
import torch
from torch import nn

from conftest import randomize_batchnorm
from mscsa_lab.models.config import ConfigError, MSCSAConfig
from mscsa_lab.models.layers import ConvBN
from mscsa_lab.models.mscsa import (
    FFN,
    MSCSA,
    ClassificationHead,
    CrossScaleAttention,
    DenseFusion,
    IntraFFN,
    scale_sizes,
)

STAGE_CHANNELS = (16, 32, 48, 64)


def stage_maps(height: int, width: int, batch: int = 2) -> list[torch.Tensor]:
    """Fake backbone maps with the sizes a stride-4..32 backbone gives (ceil rounding)."""
    sizes = [(math.ceil(height / s), math.ceil(width / s)) for s in (4, 8, 16, 32)]
    return [torch.randn(batch, c, h, w) for c, (h, w) in zip(STAGE_CHANNELS, sizes)]


def eq3(h: int, w: int) -> list[tuple[int, int]]:
    """The paper's Eq. 3, written out independently of the library."""
    return [(h, w), (math.floor((h - 1) / 2 + 1), math.floor((w - 1) / 2 + 1)),
            (math.floor((h - 1) / 3 + 1), math.floor((w - 1) / 3 + 1))]


def captured_kv_sizes(layer: CrossScaleAttention, x: torch.Tensor) -> list[tuple[int, int]]:
    sizes = []
    hooks = [proj.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:]))) for proj in layer.key_proj]
    layer(x)
    for hook in hooks:
        hook.remove()
    return sizes


@pytest.mark.parametrize("h,w", [(7, 7), (1, 1), (2, 3), (5, 9), (13, 17), (25, 40), (8, 6)])
def test_multi_scale_kv_sizes_follow_eq3(h, w):
    layer = CrossScaleAttention(dim=24, num_heads=2, key_dim=4).eval()
    assert captured_kv_sizes(layer, torch.randn(1, 24, h, w)) == eq3(h, w)
    assert scale_sizes(h, w) == eq3(h, w)


def test_attention_dims_follow_levit():
    layer = CrossScaleAttention(dim=40, num_heads=4, key_dim=6)
    assert layer.query.conv.out_channels == 4 * 6
    assert all(k.conv.out_channels == 24 for k in layer.key_proj)
    assert all(v.conv.out_channels == 4 * 12 for v in layer.value_proj)  # value dim = 2d
    assert layer.proj.conv.in_channels == 48 and layer.proj.conv.out_channels == 40
    assert layer.scale == pytest.approx(1 / math.sqrt(6))
    assert isinstance(layer.out_act, nn.Hardswish)
    assert isinstance(layer.conv_path[0], nn.Hardswish) and layer.conv_path[1].groups == 48


def test_attention_matches_hand_written_formula():
    """softmax(Q K^T / sqrt(d)) V over the three scales + PCP, then Hardswish and projection."""
    layer = CrossScaleAttention(dim=12, num_heads=2, key_dim=3).eval()
    randomize_batchnorm(layer)
    x = torch.randn(1, 12, 5, 7)
    with torch.no_grad():
        q = layer.query(x).reshape(1, 2, 3, -1).transpose(-2, -1)
        inputs = [x, layer.scale_downsamplers[1](x), layer.scale_downsamplers[2](x)]
        k = torch.cat([layer.key_proj[i](t).reshape(1, 2, 3, -1) for i, t in enumerate(inputs)], -1)
        v = torch.cat([layer.value_proj[i](t).reshape(1, 2, 6, -1) for i, t in enumerate(inputs)], -1)
        attn = torch.softmax(q @ k / math.sqrt(3), dim=-1) @ v.transpose(-2, -1)
        out = attn.transpose(-2, -1).reshape(1, 12, 5, 7)
        v0 = layer.value_proj[0](x)
        out = out + layer.conv_path[1](nn.functional.hardswish(v0))
        expected = layer.proj(nn.functional.hardswish(out))
        assert torch.allclose(layer(x), expected, atol=1e-5)


def test_sdpa_and_explicit_paths_agree():
    module = MSCSA(STAGE_CHANNELS, MSCSAConfig(depth=2, num_heads=4, key_dim=8)).eval()
    randomize_batchnorm(module)
    features = stage_maps(197, 263)
    with torch.no_grad():
        sdpa = module(features)
        module.set_attn_impl("explicit")
        explicit = module(features)
    assert torch.allclose(sdpa, explicit, rtol=1e-4, atol=1e-5)
    assert not torch.equal(sdpa, torch.zeros_like(sdpa))


def test_block_structure_and_order():
    module = MSCSA(STAGE_CHANNELS, MSCSAConfig(squeeze_ratio="1/2", depth=3, drop_path=0.2))
    assert len(module.blocks) == 3
    block = module.blocks[0]
    names = [name for name, _ in block.named_children()]
    assert names[:8] == ["norm1", "attn1", "norm2", "intra_ffn", "norm3", "attn2", "norm4", "ffn"]
    assert all(isinstance(getattr(block, f"norm{i}"), nn.BatchNorm2d) for i in range(1, 5))
    assert isinstance(block.intra_ffn, IntraFFN) and isinstance(block.ffn, FFN)
    assert module.split_channels == [8, 16, 24, 32] and module.dim == 80
    # Stochastic depth grows linearly to drop_path over the blocks; a single block still drops.
    assert [getattr(b.drop_path, "drop_prob", 0.0) for b in module.blocks] == pytest.approx([0.2 / 3, 0.4 / 3, 0.2])
    single = MSCSA(STAGE_CHANNELS, MSCSAConfig(depth=1, drop_path=0.1, num_heads=2, key_dim=4))
    assert single.blocks[0].drop_path.drop_prob == pytest.approx(0.1)


def test_ffn_and_intra_ffn_layout():
    ffn = FFN(40, mlp_ratio=2, act_layer="gelu")
    assert (ffn.fc1.conv.in_channels, ffn.fc1.conv.out_channels) == (40, 80)
    assert ffn.dwconv.conv.groups == 80 and ffn.dwconv.conv.kernel_size == (3, 3)
    assert isinstance(ffn.act, nn.GELU)
    intra = IntraFFN([4, 8, 12, 16], mlp_ratio=2)
    assert [f.fc1.conv.in_channels for f in intra.stage_ffns] == [4, 8, 12, 16]
    # No cross-stage mixing: changing one stage's slice leaves the other slices' outputs alone.
    intra.eval()
    x = torch.randn(1, 40, 3, 3)
    y = x.clone()
    y[:, :4] += 1.0
    out_x, out_y = intra(x), intra(y)
    assert torch.allclose(out_x[:, 4:], out_y[:, 4:])
    assert not torch.allclose(out_x[:, :4], out_y[:, :4])


def test_aggregation_pools_to_target_and_squeezes():
    features = stage_maps(224, 224)
    for stride, size in ((32, 7), (16, 14), (64, 4)):
        module = MSCSA(STAGE_CHANNELS, MSCSAConfig(pool_stride=stride, squeeze_ratio=0.75, num_heads=2, key_dim=4))
        out = module.aggregation(features)
        assert out.shape == (2, 12 + 24 + 36 + 48, size, size)
    plain = MSCSA(STAGE_CHANNELS, MSCSAConfig(squeeze_ratio=None, num_heads=2, key_dim=4))
    assert plain.aggregation.squeeze is None and plain.dim == sum(STAGE_CHANNELS)
    # Without squeeze the stride-32 part is the stride-32 map itself, untouched.
    assert torch.equal(plain.aggregation(features)[:, -64:], features[3])


def ablation_layer(**changes) -> CrossScaleAttention:
    return MSCSA(STAGE_CHANNELS, MSCSAConfig(num_heads=2, key_dim=4, **changes)).attention_layers()[0]


def test_ablation_switches_change_structure():
    full = MSCSA(STAGE_CHANNELS, MSCSAConfig(num_heads=2, key_dim=4))
    assert full.attention_layers()[0].num_scales == 3 and full.attention_layers()[0].conv_path is not None
    assert isinstance(full.blocks[0].intra_ffn, IntraFFN)

    assert ablation_layer(use_pcp=False).conv_path is None
    assert ablation_layer(use_msp=False).num_scales == 1
    no_intra = MSCSA(STAGE_CHANNELS, MSCSAConfig(num_heads=2, key_dim=4, use_intra_ffn=False))
    assert type(no_intra.blocks[0].intra_ffn) is FFN

    none = MSCSA(STAGE_CHANNELS, MSCSAConfig(num_heads=2, key_dim=4).with_ablation("none"))
    layer = none.attention_layers()[0]
    assert layer.num_scales == 1 and layer.conv_path is None and type(none.blocks[0].intra_ffn) is FFN


def test_downsample_strategies():
    x = torch.randn(1, sum(STAGE_CHANNELS), 13, 17)
    avg = ablation_layer(downsample="avgpool")
    assert [type(m) for m in avg.scale_downsamplers[1:]] == [nn.AvgPool2d, nn.AvgPool2d]
    assert captured_kv_sizes(avg.eval(), x) == eq3(13, 17)

    dw = ablation_layer(downsample="dwconv")
    assert all(isinstance(m, ConvBN) and m.conv.groups == sum(STAGE_CHANNELS) for m in dw.scale_downsamplers[1:])
    assert [m.conv.stride for m in dw.scale_downsamplers[1:]] == [(2, 2), (3, 3)]

    single = ablation_layer(downsample="single")
    assert single.num_scales == 2
    assert captured_kv_sizes(single.eval(), x) == eq3(13, 17)[:2]

    cascade = ablation_layer(downsample="cascade").eval()
    seen = {}
    cascade.scale_downsamplers[1].register_forward_hook(lambda m, i, o: seen.update(x1=o))
    cascade.scale_downsamplers[2].register_forward_hook(lambda m, i, o: seen.update(x2_input=i[0]))
    sizes = captured_kv_sizes(cascade, x)
    assert seen["x2_input"] is seen["x1"]  # X2 = DWConv(X1), not DWConv(X)
    assert sizes == scale_sizes(13, 17, "cascade") == [(13, 17), (7, 9), (4, 5)]


def test_heads_and_dense_fusion_shapes():
    module = MSCSA(STAGE_CHANNELS, MSCSAConfig(squeeze_ratio=0.5, num_heads=2, key_dim=4)).eval()
    features = stage_maps(197, 263)
    x = module(features)
    head = ClassificationHead(module.dim, 7).eval()
    assert head(x).shape == (2, 7)
    for order in ("conv_first", "upsample_first"):
        fusion = DenseFusion(module.split_channels, STAGE_CHANNELS, order).eval()
        fused = fusion(x, features)
        assert [f.shape for f in fused] == [f.shape for f in features]
    # Fusion is the Fig. 5 formula: F * hardsigmoid(w) + b.
    fusion = DenseFusion(module.split_channels, STAGE_CHANNELS, "upsample_first").eval()
    part = nn.functional.interpolate(torch.split(x, module.split_channels, 1)[0], size=features[0].shape[-2:],
                                     mode="bilinear", align_corners=False)
    expected = features[0] * nn.functional.hardsigmoid(fusion.weight_convs[0](part)) + fusion.bias_convs[0](part)
    assert torch.allclose(fusion(x, features)[0], expected, atol=1e-6)


def test_fuse_module_equals_unfused():
    module = MSCSA(STAGE_CHANNELS, MSCSAConfig(squeeze_ratio=0.5, depth=2, num_heads=2, key_dim=4)).eval()
    head = ClassificationHead(module.dim, 5).eval()
    randomize_batchnorm(module)
    randomize_batchnorm(head)
    features = stage_maps(64, 96)
    with torch.no_grad():
        reference = head(module(features))
        from mscsa_lab.models.layers import fuse_modules

        fuse_modules(module)
        head.fuse()
        fused = head(module(features))
    assert not any(isinstance(m, ConvBN) for m in module.modules())
    assert torch.allclose(fused, reference, rtol=1e-4, atol=1e-5)


def test_finer_pooling_upsamples_smaller_stages():
    """Pooling to 1/16 (CoaT) needs the stride-32 map enlarged: bilinear by default, not copies."""
    features = stage_maps(64, 64)
    module = MSCSA(STAGE_CHANNELS, MSCSAConfig(pool_stride=16, num_heads=2, key_dim=4))
    out = module.aggregation(features)
    assert out.shape[-2:] == (4, 4)
    expected = nn.functional.interpolate(features[3], size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(out[:, -64:], expected)
    nearest = MSCSA(STAGE_CHANNELS, MSCSAConfig(pool_stride=16, upsample_mode="nearest", num_heads=2, key_dim=4))
    assert torch.equal(nearest.aggregation(features)[:, -64:], features[3].repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_training_on_a_one_pixel_scale_says_what_to_do():
    module = MSCSA(STAGE_CHANNELS, MSCSAConfig(num_heads=2, key_dim=4)).train()
    with pytest.raises(ValueError, match="batch 1 .* use a batch of 2 or more"):
        module(stage_maps(32, 32, batch=1))
    module(stage_maps(32, 32, batch=2))  # fine with two samples
    module.eval()(stage_maps(32, 32, batch=1))  # and in eval mode


def test_stored_attention_is_fresh():
    layer = CrossScaleAttention(dim=8, num_heads=2, key_dim=2).eval()
    layer.store_attention = True
    layer(torch.randn(1, 8, 5, 5))
    assert layer.last_attention.shape == (1, 2, 25, 25 + 9 + 4)
    assert torch.allclose(layer.last_attention.sum(-1), torch.ones(1, 2, 25))
    layer.store_attention = False
    layer(torch.randn(1, 8, 5, 5))
    assert layer.last_attention is None


def test_fresh_blocks_start_as_identity_residuals_and_then_train():
    """weight_init="zero_residual" (default, as LeViT/TopFormer): each residual branch ends in a BN at
    weight 0, so a fresh block returns its input; one optimizer step later every branch learns."""
    channels = (16, 32, 48, 64)
    config = MSCSAConfig(num_heads=2, key_dim=8, depth=2)
    module = MSCSA(channels, config)
    x = torch.randn(2, sum(channels), 7, 7)
    for mode in (True, False):
        module.train(mode)
        for block in module.blocks:
            torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    closing = {n for n, _ in module.named_parameters() if n.endswith(("proj.bn.weight", "fc2.bn.weight"))}
    assert len(closing) == 2 * (2 + 1 + len(channels))  # per block: 2 CSA, the FFN, one FFN per stage
    assert all(float(p.abs().sum()) == 0 for n, p in module.named_parameters() if n in closing)
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    fan_in = convs[0].in_channels // convs[0].groups * convs[0].kernel_size[0] * convs[0].kernel_size[1]
    assert float(convs[0].weight.abs().max()) <= 2 * fan_in ** -0.5 + 1e-6  # truncated at 2 std

    module.train()
    features = [torch.randn(2, c, 7, 7) for c in channels]
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    for step in range(2):
        optimizer.zero_grad()
        module(features).square().mean().backward()
        blocked = [n for n, p in module.named_parameters() if n.startswith("blocks") and not float(p.grad.abs().sum()) > 0]
        if step == 0:  # only the closing BNs (and the BN biases before them) see a gradient at init
            assert blocked and set(blocked).isdisjoint(closing)
        else:
            assert blocked == []
        optimizer.step()

    torch_init = MSCSA(channels, config.replace(weight_init="torch")).eval()
    assert not torch.allclose(torch_init.blocks[0](x), x)
    with pytest.raises(ConfigError, match="weight_init='xavier' is unknown"):
        MSCSAConfig(weight_init="xavier")


def test_large_initial_draws_are_truncated_normal_and_reproducible_whatever_the_threads():
    """Above 4 M values the uniform draws behind the truncated normal come in parts from their own
    generators (PyTorch's CPU uniform_ runs on one core): the values must still follow N(0, std^2) cut at
    2 std, and depend only on torch.manual_seed, not on how many threads drew them."""
    from mscsa_lab.models.layers import trunc_normal_many_

    big, small = torch.empty(3_000_000, 2), torch.empty(64, 64)
    threads = torch.get_num_threads()
    draws = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            torch.manual_seed(7)
            trunc_normal_many_([big, small], [0.5, 0.1])
            draws.append((big.clone(), small.clone()))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    torch.manual_seed(8)
    trunc_normal_many_([big], [0.5])
    assert not torch.equal(big, draws[0][0])  # another seed, other values
    values = draws[0][0]
    assert float(values.abs().max()) <= 1.0 + 1e-6 and float(values.abs().max()) > 0.99
    assert float(values.mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(values.std()) == pytest.approx(0.5 * 0.8796, rel=2e-3)  # std of N(0,1) cut at +-2: 0.8796
    quarters = values.flatten().chunk(4)  # the parts are drawn independently: none repeats another
    assert all(not torch.equal(a[:1000], b[:1000]) for a, b in zip(quarters, quarters[1:]))


def test_variants_without_intra_ffn_use_their_own_ffn_ratio():
    channels = (16, 32, 48, 64)
    config = MSCSAConfig(num_heads=2, key_dim=8, mlp_ratio=3.0, mlp_ratio_without_intra=2.0)
    with_intra = MSCSA(channels, config).blocks[0]
    without = MSCSA(channels, config.with_ablation("+pcp")).blocks[0]
    assert with_intra.ffn.fc1.conv.out_channels == 3 * 160
    assert with_intra.intra_ffn.stage_ffns[0].fc1.conv.out_channels == 3 * 16
    assert without.ffn.fc1.conv.out_channels == without.intra_ffn.fc1.conv.out_channels == 2 * 160
    same = MSCSA(channels, config.replace(mlp_ratio_without_intra=None).with_ablation("+pcp")).blocks[0]
    assert same.ffn.fc1.conv.out_channels == 3 * 160
