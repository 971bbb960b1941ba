"""timm's model contract for every registered ``*_mscsa`` model, in the manner of timm's own
tests/test_models.py: heads and pooling, features_only, in_chans, stochastic depth, parameter
groups, weight decay, gradient checkpointing, pretrained configs and pretrained weights.

Small inputs (batch 2, 64x64: the stride-32 map is 2x2) keep the whole file fast on a CPU.
"""
import contextlib
import copy
import os
import re
import time

import pytest
import safetensors.torch
import timm
import timm.optim
import torch
from timm.layers import DropPath
from timm.models import group_parameters

from mscsa_lab import ConfigError, PretrainedWeightsUnavailable, create_mscsa_model
from mscsa_lab.errors import UserError
from mscsa_lab.models.mscsa_net import MSCSAAddOn, MSCSANet
from mscsa_lab.presets import list_profiles

from conftest import everyday

MODELS = timm.list_models("*_mscsa")
SIZE = 64
BATCH = 2
DROP_PATH = 0.1
# timm's constructors of these backbones take drop_path_rate (TopFormer's token pyramid has no stochastic depth).
BACKBONE_DROP_PATH = {name for name in MODELS if not name.startswith("topformer")}
# Backbones whose timm model names parameters to keep out of weight decay.
NO_DECAY = {"swin_tiny_patch4_window7_224_mscsa": "relative_position_bias_table", "coat_tiny_mscsa": "cls_token",
            "coat_small_mscsa": "cls_token"}
NO_BACKBONE_CHECKPOINT = {"coat_tiny_mscsa", "coat_small_mscsa", "topformer_tiny_mscsa", "topformer_base_mscsa"}
PROFILES = {p.model_name: p for p in list_profiles()}


@pytest.fixture(scope="module", autouse=True)
def plain_cpu_kernels():
    """oneDNN builds a kernel per new conv shape; the plain kernels are faster for one-off runs.
    One thread: these tiny inputs gain nothing from more, and on a shared machine spinning
    OpenMP threads made the file ten times slower. Both restored after the module."""
    enabled, threads = torch.backends.mkldnn.enabled, torch.get_num_threads()
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(1)
    yield
    torch.backends.mkldnn.enabled = enabled
    torch.set_num_threads(threads)


def create(name, **kwargs):
    # Swin's windows are built for one input size; the others ignore img_size.
    return timm.create_model(name, img_size=SIZE, **kwargs)


def images(channels=3):
    return torch.randn(BATCH, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=everyday(MODELS))
def model(request):
    """One classification model per name (5 classes, drop_path_rate 0.1) in eval mode, shared by
    the tests of that name (pytest runs them together, so one model is alive at a time); tests
    that change it borrow it through ``restored``."""
    return create(request.param, num_classes=5, drop_path_rate=DROP_PATH).eval()


@contextlib.contextmanager
def restored(model):
    """Lend the shared model to a test that trains or changes it: its buffers (BN statistics),
    head, gradients, checkpointing and mode are put back afterwards."""
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    head, num_classes = copy.deepcopy(model.head), model.num_classes
    try:
        yield model
    finally:
        model.head, model.num_classes = head, num_classes
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(False)
        model.eval()


def test_all_table7_rows_are_registered():
    assert len(MODELS) == 13 and set(MODELS) == set(PROFILES)
    assert timm.list_models("*_mscsa", pretrained=True) == []  # no MSCSA weights are published


def test_forward_features_head_and_feature_info(model):
    x = images()
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        assert logits.shape == (BATCH, 5) and torch.isfinite(logits).all()
        assert features.shape[:2] == (BATCH, model.num_features) and features.ndim == 4
        torch.testing.assert_close(model.forward_head(features), logits)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (BATCH, model.num_features)
        torch.testing.assert_close(pre_logits, features.mean(dim=(2, 3)))
        # feature_info names real modules whose outputs are the four maps, NCHW at strides 4..32.
        modules = dict(model.named_modules())
        seen = {}
        hooks = [modules[info["module"]].register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o))
                 for k, info in enumerate(model.feature_info)]
        final, maps = model.forward_intermediates(x)
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(final, features)
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    assert [m.shape[1] for m in maps] == [f["num_chs"] for f in model.feature_info] == model.backbone.channels
    assert [m.shape[-1] for m in maps] == [SIZE // r for r in (4, 8, 16, 32)]
    assert all(seen[k] is maps[k] for k in range(4))


def test_reset_classifier_and_pooling(model):
    x = images()
    with restored(model), torch.no_grad():
        features = model.forward_features(x)
        model.reset_classifier(0)
        assert model.num_classes == 0 and isinstance(model.get_classifier(), torch.nn.Identity)
        pre_logits = model(x)
        assert pre_logits.shape == (BATCH, model.num_features)
        torch.testing.assert_close(pre_logits, model.forward_head(features, pre_logits=True))
        model.reset_classifier(3)
        assert model.get_classifier().out_features == 3 and model.forward_head(features).shape == (BATCH, 3)
        model.reset_classifier(0, "")  # no classifier, no pooling: the multi-stage map itself
        torch.testing.assert_close(model.forward_head(features), features)
        model.reset_classifier(3)  # pooling stays off: logits per position
        assert model.forward_head(features).shape == (BATCH, 3, *features.shape[-2:])


@pytest.mark.parametrize("name", everyday(MODELS))
def test_global_pool_and_in_chans_at_creation(name):
    gray = create(name, num_classes=0, global_pool="", in_chans=1).eval()
    with torch.no_grad():
        features = gray(images(1))
    assert features.ndim == 4 and features.shape[:2] == (BATCH, gray.num_features)
    torch.testing.assert_close(gray.forward_head(features, pre_logits=True), features)
    assert gray.in_chans == 1 and gray.get_parameter(gray.pretrained_cfg["first_conv"] + ".weight").shape[1] == 1


def test_unsupported_pooling_and_unknown_arguments_are_named():
    with pytest.raises(ConfigError, match=r"global_pool='max' is not supported.*'avg'"):
        create("resnet18_mscsa", global_pool="max")
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['colour'\]") as info:
        create("resnet18_mscsa", colour="red")
    assert isinstance(info.value, UserError)  # timm's contract is a TypeError; the message is for the user
    with pytest.raises(ConfigError, match="drop_path_rate .* drop_path"):
        create("resnet18_mscsa", drop_path_rate=0.1, drop_path=0.2)
    with pytest.raises(ConfigError, match="task='classification' has none"):
        create("resnet18_mscsa", features_only=True, task="classification")
    with pytest.raises(ConfigError, match="out_indices .* needs features_only=True"):
        create("resnet18_mscsa", out_indices=(1, 2))


def test_mscsa_settings_keep_their_names_and_dense_task():
    model = create("resnet18_mscsa", depth=2, num_heads=4, key_dim=8, squeeze_ratio="1/2", task="dense").eval()
    assert (model.config.depth, model.config.num_heads, model.config.squeeze_ratio) == (2, 4, 0.5)
    assert len(model.mscsa.blocks) == 2 and model.task == "dense" and model.head is None
    with torch.no_grad():
        fused = model(images())
        torch.testing.assert_close(model.forward_head(model.forward_features(images())), fused)
    assert [tuple(m.shape[1:]) for m in fused] == [(c, SIZE // s, SIZE // s) for c, s in
                                                   zip((64, 128, 256, 512), (4, 8, 16, 32))]
    with pytest.raises(ConfigError, match="no classifier"):
        model.reset_classifier(3)
    # The same module tree as the library's own constructor: state dicts move between them.
    library = create_mscsa_model("resnet18", depth=2, num_heads=4, key_dim=8, squeeze_ratio="1/2", task="dense")
    assert list(library.state_dict()) == list(model.state_dict())


@pytest.mark.parametrize("name", everyday(MODELS))
def test_features_only_gives_the_fused_maps(name):
    features = create(name, features_only=True, out_indices=(1, 3)).eval()
    dense = features.model  # the dense model (Fig. 5) inside timm's feature getter
    assert isinstance(dense, MSCSANet) and dense.task == "dense"
    assert features.feature_info.channels() == [dense.backbone.channels[1], dense.backbone.channels[3]]
    assert features.feature_info.reduction() == [8, 32]
    with torch.no_grad():
        maps = features(images())
        expected = dense(images())
    assert [m.shape[1] for m in maps] == features.feature_info.channels()
    assert [SIZE // m.shape[-1] for m in maps] == features.feature_info.reduction()
    for got, want in zip(maps, (expected[1], expected[3])):
        torch.testing.assert_close(got, want)
    assert "mean" in features.pretrained_cfg and "num_classes" not in features.pretrained_cfg


def test_drop_path_rate_reaches_mscsa_and_backbone(model):
    depth = model.config.depth
    rates = [block.drop_path.drop_prob for block in model.mscsa.blocks]
    assert rates == pytest.approx([DROP_PATH * (i + 1) / depth for i in range(depth)])
    backbone_rates = [m.drop_prob for m in model.backbone.modules() if isinstance(m, DropPath)]
    if model.default_cfg["architecture"] in BACKBONE_DROP_PATH:
        assert backbone_rates and max(backbone_rates) == pytest.approx(DROP_PATH)
    with restored(model), torch.no_grad():
        model.train()
        # Fresh residual branches are zero (MSCSA's weight_init="zero_residual", timm ResNets'
        # zero_init_last), so dropping them changes no output yet: each DropPath is checked on its own.
        droppers = [model.mscsa.blocks[-1].drop_path]
        droppers += [m for m in model.backbone.modules() if isinstance(m, DropPath) and m.drop_prob > 0][-1:]
        ones = torch.ones(16, 2, 1, 1)
        for dropper in droppers:
            draws = []
            for seed in range(3):
                torch.manual_seed(seed)
                draws.append(dropper(ones))
            assert not all(torch.equal(draws[0], d) for d in draws[1:])  # dropped at random in training


def _specs(matcher):
    specs = []
    for value in matcher.values():
        if value is None:
            continue
        for spec in (value if isinstance(value, list) else [(value, None)]):
            specs.append(re.compile(spec[0]))
    return specs


def test_group_matcher_covers_every_parameter_once(model):
    names = [n for n, _ in model.named_parameters()]
    for coarse in (False, True):
        matcher = model.group_matcher(coarse=coarse)
        specs = _specs(matcher)
        counts = {n: sum(bool(s.match(n)) for s in specs) for n in names}
        assert [n for n, c in counts.items() if c != 1] == []
        layers = group_parameters(model, matcher, reverse=True)
        assert sorted(layers) == sorted(names)
        backbone = max(layers[n] for n in names if n.startswith("backbone."))
        mscsa = [layers[n] for n in names if n.startswith("mscsa.")]
        head = {layers[n] for n in names if n.startswith("head.")}
        assert backbone < min(mscsa) and max(mscsa) < min(head) and len(head) == 1
        assert min(layers[n] for n in names if n.startswith("backbone.")) == 0
        if not coarse:
            squeeze = any(n.startswith("mscsa.aggregation.") for n in names)
            depth = len(model.mscsa.blocks)
            assert len(set(mscsa)) == squeeze + depth  # the aggregation's squeeze convs, then each block
            assert backbone >= 4  # stem and at least one group per stage
    # timm's layer-wise LR decay builds on it: the head learns at full rate, the stem slowest.
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    scales = [g["lr_scale"] for g in optimizer.param_groups]
    assert max(scales) == 1.0 and min(scales) < 0.8 ** 4
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(names)


def test_no_weight_decay_names_exist(model):
    names = dict(model.named_parameters())
    nwd = model.no_weight_decay()
    assert nwd <= set(names)
    keyword = NO_DECAY.get(model.default_cfg["architecture"])
    if keyword:
        assert nwd and all(keyword in n and names[n].ndim >= 2 for n in nwd)
    else:
        assert nwd == set()


def test_grad_checkpointing_same_outputs_and_gradients(model):
    x = images()
    runs = []
    with restored(model):
        model.train()
        start = {name: buffer.clone() for name, buffer in model.named_buffers()}
        calls = []
        hook = model.mscsa.blocks[0].register_forward_pre_hook(lambda *args: calls.append(1))
        for checkpointing in (False, True):
            model.set_grad_checkpointing(checkpointing)
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    buffer.copy_(start[name])
            model.zero_grad(set_to_none=True)
            calls.clear()
            torch.manual_seed(3)  # the same drop-path draws
            out = model(x)
            out.square().mean().backward()
            runs.append(dict(out=out.detach(), calls=len(calls),
                             grads={n: p.grad for n, p in model.named_parameters()},
                             stats={n: b.clone() for n, b in model.mscsa.named_buffers()}))
        hook.remove()
        assert model.grad_checkpointing and model.mscsa.blocks.grad_checkpointing
        # The backbone's stages are checkpointed too where timm supports it (not CoaT, which says so, nor TopFormer).
        assert model.backbone.grad_checkpointing == (model.default_cfg["architecture"] not in NO_BACKBONE_CHECKPOINT)
    plain, checkpointed = runs
    assert (plain["calls"], checkpointed["calls"]) == (1, 2)  # recomputed in backward: activations not kept
    torch.testing.assert_close(checkpointed["out"], plain["out"])
    for name, grad in plain["grads"].items():
        other = checkpointed["grads"][name]
        assert (grad is None) == (other is None), name
        if grad is not None:
            torch.testing.assert_close(other, grad, rtol=1e-4, atol=1e-6, msg=name)
    # MSCSA's BN statistics were updated once, not again during the recomputation.
    for name, stat in plain["stats"].items():
        torch.testing.assert_close(checkpointed["stats"][name], stat, msg=name)


def test_pretrained_cfg_is_the_backbones_data_config(model):
    cfg = model.pretrained_cfg
    for key in ("mean", "std", "input_size", "crop_pct", "interpolation"):
        assert cfg.get(key) is not None, key
    assert not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file"))  # no MSCSA weights exist
    profile = PROFILES[cfg["architecture"]]
    source = timm.models.get_pretrained_cfg(profile.backbone) or timm.models.get_pretrained_cfg(
        profile.baseline_model)
    assert source is not None
    assert (tuple(cfg["mean"]), tuple(cfg["std"]), cfg["crop_pct"]) == (tuple(source.mean), tuple(source.std),
                                                                        source.crop_pct)
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    assert timm.data.resolve_data_config(model=model)["mean"] == tuple(source.mean)


@pytest.mark.parametrize("name", everyday(MODELS))
def test_pretrained_offline_fails_fast_with_a_way_forward(name):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest: nothing is downloaded here
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailable, match=r"pretrained_file=.*pretrained=False") as caught:
        create(name, pretrained=True)
    assert time.perf_counter() - start < 10
    assert "no pretrained weights for backbone" in str(caught.value)


def test_pretrained_without_network_fails_fast(monkeypatch):
    """No offline switch, but the weight host does not resolve: the answer comes at once, not
    after the hub client's retries."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "ENDPOINT", "https://weights.invalid")
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailable, match=r"weights\.invalid cannot be reached.*pretrained_file="):
        create("resnet18_mscsa", pretrained=True)
    assert time.perf_counter() - start < 10


def test_pretrained_downloads_when_online_then_uses_the_cache(tmp_path, monkeypatch):
    """timm's normal path: the weights are downloaded (here from a local server standing in for
    the weight host), then found in the cache with the host gone."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    source = _backbone_weights(None)
    torch.save(source.state_dict(), served / "resnet18-test.pth")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    overlay = dict(hf_hub_id=None, url=f"http://127.0.0.1:{server.server_address[1]}/resnet18-test.pth")
    cache = tmp_path / "cache"
    try:
        downloaded = create("resnet18_mscsa", pretrained=True, pretrained_cfg_overlay=overlay, cache_dir=str(cache))
    finally:
        server.shutdown()
        server.server_close()
    assert (cache / "resnet18-test.pth").is_file()
    assert torch.equal(downloaded.backbone.model.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    cached = create("resnet18_mscsa", pretrained=True, pretrained_cfg_overlay=overlay, cache_dir=str(cache))
    assert torch.equal(cached.backbone.model.layer2[0].conv1.weight, source.layer2[0].conv1.weight)


def _backbone_weights(path):
    source = timm.create_model("resnet18")
    for parameter in source.parameters():
        torch.nn.init.normal_(parameter)
    if path is not None:
        safetensors.torch.save_file(source.state_dict(), str(path))
    return source


def test_pretrained_loads_the_backbone_from_the_cache_or_a_file(tmp_path):
    # A Hugging Face cache holding resnet18's timm weights (the layout the hub client writes).
    repo = tmp_path / "cache" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    source = _backbone_weights(repo / "snapshots" / ("0" * 40) / "model.safetensors")
    cached = create("resnet18_mscsa", pretrained=True, cache_dir=str(tmp_path / "cache"))
    assert torch.equal(cached.backbone.model.conv1.weight, source.conv1.weight)
    assert torch.equal(cached.backbone.model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    # pretrained_cfg_overlay's file names the backbone's weights (MSCSA has none).
    other = _backbone_weights(tmp_path / "other.safetensors")
    overlay = dict(file=str(tmp_path / "other.safetensors"))
    overlaid = create("resnet18_mscsa", pretrained=True, pretrained_cfg_overlay=overlay)
    assert torch.equal(overlaid.backbone.model.layer3[0].conv1.weight, other.layer3[0].conv1.weight)
    assert not overlaid.pretrained_cfg.get("file")  # the model's own config still names no MSCSA weights
    gray = create("resnet18_mscsa", pretrained=True, in_chans=1, pretrained_file=str(tmp_path / "other.safetensors"))
    torch.testing.assert_close(gray.backbone.model.conv1.weight, other.conv1.weight.sum(dim=1, keepdim=True))


def test_budget_add_on_is_built_like_the_model():
    model = create_mscsa_model("resnet18", num_classes=7)
    add_on = MSCSAAddOn(model.backbone.channels, model.config, "classification", 7)
    own = [k for k in model.state_dict() if k.startswith(("mscsa.", "head."))]
    assert list(add_on.state_dict()) == own
    add_on.load_state_dict({k: v for k, v in model.state_dict().items() if k in own})
    model.eval(), add_on.eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(add_on(*model.backbone(x)), model(x))
    assert isinstance(model, MSCSANet)
