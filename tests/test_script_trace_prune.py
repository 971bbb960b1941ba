"""What timm's own tests/test_models.py asks of every model beyond a forward pass, on small models built
here (CI also runs timm's file itself over the 13 registered models: scripts/run_timm_model_tests.py):
TorchScript and torch.fx (with timm's no-trace lists), construction on the meta device, complete
pretrained configs, a TypeError for unknown keywords, reset_classifier on the model's device and dtype,
and prune_intermediate_layers (features end at the last kept stage, nothing left unused)."""
import copy
import math

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from mscsa_lab.errors import UserError
from mscsa_lab.models.config import MSCSAConfig, UnknownArgumentError
from mscsa_lab.models.layers import trunc_normal_many_
from mscsa_lab.models.mscsa_net import MSCSANet, expected_pool_size
from mscsa_lab.models.p2t import P2T
from mscsa_lab.models.shunted import ShuntedTransformer

TINY = MSCSAConfig(num_heads=2, key_dim=8, squeeze_ratio=0.25)
TRACER = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
              param_shapes_constant=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny inputs; spinning threads only slow a shared machine
    yield
    torch.set_num_threads(threads)


def tiny_net(task="classification", **kwargs):
    return MSCSANet("resnet10t", TINY, task=task, num_classes=3, **kwargs)


def tiny_p2t():
    return P2T(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2), mlp_ratios=(2, 2, 2, 2),
               num_classes=3)


def tiny_shunted():
    return ShuntedTransformer(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2),
                              mlp_ratios=(2, 2, 2, 2), num_classes=3)


def images(size=(64, 80)):
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))


def fx_model(model):
    _, eval_nodes = get_graph_node_names(model, tracer_kwargs=TRACER)
    return create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=TRACER)


@pytest.mark.slow  # scripting and tracing take seconds per model
@pytest.mark.parametrize("build", [tiny_net, lambda: tiny_net("dense"), tiny_p2t, tiny_shunted],
                         ids=["mscsa", "mscsa-dense", "p2t", "shunted"])
def test_scripted_and_traced_models_give_the_eager_outputs(build):
    model = build().eval()
    x = images()  # a size no stage divides evenly: P2T's pooling and Shunted's padding both work
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)(x)
        traced = list(fx_model(model)(x).values())[0]
    expected = expected if isinstance(expected, list) else [expected]
    assert len(scripted if isinstance(scripted, list) else [scripted]) == len(expected)
    for got, want in zip(scripted if isinstance(scripted, list) else [scripted], expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(traced, expected[-1], rtol=1e-5, atol=1e-6)  # the graph's last node


@pytest.mark.slow
def test_traced_model_trains():
    model = tiny_net().train()
    traced = fx_model(model).train()
    list(traced(images()).values())[0].mean().backward()
    assert [n for n, p in traced.named_parameters() if p.grad is None] == []


def test_p2t_and_shunted_build_on_the_meta_device():
    with torch.device("meta"):
        for name in ("p2t_tiny", "shunted_tiny"):
            model = timm.create_model(name, drop_path_rate=0.1)
            assert {p.device.type for p in model.parameters()} == {"meta"}
    # stochastic depth still rises block by block (drawn on the CPU, not on the meta device)
    rates = [b.drop_path1.drop_prob for s in model.stages for b in s.blocks if hasattr(b.drop_path1, "drop_prob")]
    assert rates == sorted(rates) and math.isclose(rates[-1], 0.1, rel_tol=1e-6)


def test_registered_model_on_meta_and_unknown_keywords_are_type_errors():
    model = timm.create_model("resnet18_mscsa", device="meta", dtype=torch.float64)
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    with pytest.raises(UnknownArgumentError, match=r"unknown argument\(s\) \['not_a_model_arg'\].*num_classes") as info:
        timm.create_model("resnet18_mscsa", device="meta", not_a_model_arg=1)
    assert isinstance(info.value, TypeError) and isinstance(info.value, UserError)


def test_pretrained_cfg_names_the_pool_size_and_first_conv():
    model = timm.create_model("resnet18_mscsa", device="meta")
    cfg = model.pretrained_cfg
    assert cfg["pool_size"] == (7, 7) and cfg["first_conv"] == "backbone.model.conv1"
    assert timm.models.get_pretrained_cfg_value("coat_tiny_mscsa", "pool_size") == (14, 14)  # MSCSA pools to 1/16
    assert expected_pool_size((224, 224), 64) == (4, 4) and expected_pool_size((225, 200), 32) == (8, 7)
    x = torch.randn(1, 3, 225, 200)
    features = tiny_net().eval().forward_features(x)
    assert tuple(features.shape[-2:]) == expected_pool_size((225, 200), 32)


def test_reset_classifier_follows_the_model_device_and_dtype():
    model = tiny_net().to(device="meta", dtype=torch.float64)
    model.reset_classifier(0)
    model.reset_classifier(2)
    assert {(p.device.type, p.dtype) for p in model.head.parameters()} == {("meta", torch.float64)}


def test_pruned_classifier_features_end_at_the_last_kept_stage():
    model = tiny_net().eval()
    x = images()
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
    for index in range(3):
        pruned = copy.deepcopy(model)
        assert pruned.prune_intermediate_layers([index]) == [index]
        assert pruned.mscsa is None and pruned.num_features == taps[index].shape[1] == pruned.head_hidden_size
        with torch.no_grad():
            torch.testing.assert_close(pruned.forward_features(x), taps[index], rtol=0, atol=0)
            torch.testing.assert_close(pruned(x), taps[index], rtol=0, atol=0)  # no classifier, no pooling
        pruned.train()
        pruned.forward_features(x).sum().backward()
        assert [n for n, p in pruned.named_parameters() if p.grad is None] == []  # later stages are gone
        pruned.reset_classifier(4, "avg")
        assert pruned(x).shape == (2, 4)
    last = copy.deepcopy(model)
    last.prune_intermediate_layers([3], prune_head=False)  # MSCSA needs all four stages: only the head may go
    with torch.no_grad():
        torch.testing.assert_close(last(x), model(x), rtol=0, atol=0)


def test_dense_model_keeps_everything_when_pruned():
    model = tiny_net("dense").eval()
    model.prune_intermediate_layers([0])  # each fused map needs MSCSA, so all four stages
    assert model.mscsa is not None and len(model(images())) == 4


def test_truncated_normal_draws_have_the_asked_std_and_bounds():
    tensors = [torch.empty(64, 32, 3, 3), torch.empty(500), torch.empty(0)]
    trunc_normal_many_(tensors, [0.5, 2.0, 1.0])
    for tensor, std in zip(tensors[:2], (0.5, 2.0)):
        assert float(tensor.abs().max()) <= 2 * std * (1 + 1e-6)
        # a normal truncated at 2 std has std 0.880 of the untruncated one
        assert abs(float(tensor.std()) / std - 0.880) < 0.05
