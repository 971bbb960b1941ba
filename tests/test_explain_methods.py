"""The saliency classes over one shared pass give the maps the captum-based implementation gave,
and targets can be an index, a class name or a callable."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mscsa_lab import create_mscsa_model
from mscsa_lab.explain.capture import capture_layer
from mscsa_lab.explain.methods import (METHODS, AttentionReceived, GradCAM, GradXActivation, QueryAttention,
                                       attribute_all)
from mscsa_lab.explain.saliency import KVTaps, SaliencyError, compute_saliency, select_layer
from mscsa_lab.explain.targets import TargetError, class_names_for, imagenet_class_names, resolve_target


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return create_mscsa_model(backbone="resnet10t", config=dict(squeeze_ratio=0.25, num_heads=4, key_dim=8,
                                                                pool_stride=16, depth=2, weight_init="torch"),
                              num_classes=5, backbone_kwargs=dict(channels=[16, 32, 64, 128])).eval()


@pytest.fixture(scope="module")
def image_tensor():
    torch.manual_seed(1)
    return torch.randn(1, 3, 128, 160)


# ------------------------------------------------------- the reference: the former implementation
def _upsample(grid, size):
    flat = grid.reshape(-1, 1, *grid.shape[-2:]).float()
    return F.interpolate(flat, size=size, mode="bilinear", align_corners=False).reshape(*grid.shape[:-2], *size).numpy()


def reference_maps(model, image, method, kind, block, layer, target=None, query=None):
    """Per-scale grids, head grids and full maps as the captum-based code computed them: captum's
    LayerGradCam / LayerGradientXActivation called once per scale; the class-free maps from a
    no-grad forward, the principal component by numpy's SVD."""
    from captum.attr import LayerGradCam, LayerGradientXActivation

    csa = select_layer(model, block, layer)
    heads = csa.num_heads
    csa.store_attention = True
    with torch.no_grad(), KVTaps(csa) as taps:
        logits = model(image)
    attention = csa.last_attention[0]
    csa.store_attention, csa.last_attention = False, None
    target = int(logits[0].argmax()) if target is None else target
    tapped = taps.keys if kind == "key" else taps.values
    projections = csa.key_proj if kind == "key" else csa.value_proj
    sizes = [tuple(k.shape[-2:]) for k in taps.keys]
    head_grids = None
    if method == "gradcam":
        grids = [LayerGradCam(model, m).attribute(image, target=target, relu_attributions=True)[0, 0].detach()
                 for m in projections]
    elif method == "gradxact":
        products = [LayerGradientXActivation(model, m).attribute(image, target=target)[0].detach() for m in projections]
        grids = [p.sum(0).clamp(min=0) for p in products]
        head_grids = [p.reshape(heads, -1, *p.shape[-2:]).sum(1).clamp(min=0) for p in products]
    elif method == "norm":
        grids = [t[0].norm(dim=0) for t in tapped]
        head_grids = [t[0].reshape(heads, -1, *t.shape[-2:]).norm(dim=1) for t in tapped]
    elif method == "eigencam":
        grids = []
        for t in tapped:
            matrix = t[0].reshape(t.shape[1], -1).T.double().numpy()
            centred = matrix - matrix.mean(0)
            component = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
            norm = np.linalg.norm(matrix, axis=1)
            sign = 1.0 if np.dot(component - component.mean(), norm - norm.mean()) >= 0 else -1.0
            grids.append(torch.from_numpy(sign * component).reshape(t.shape[-2:]).float())
    else:
        pieces = attention.split([h * w for h, w in sizes], dim=-1)
        if method == "attention":
            head_grids = [p.mean(1).reshape(heads, *s) for p, s in zip(pieces, sizes)]
        else:
            index = query[0] * sizes[0][1] + query[1]
            head_grids = [p[:, index, :].reshape(heads, *s) for p, s in zip(pieces, sizes)]
        grids = [g.mean(0) for g in head_grids]
    size = tuple(image.shape[-2:])
    return grids, head_grids, [_upsample(g, size) for g in grids], target


def assert_close(actual, expected, label):
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(float(np.abs(expected).max()), 1e-12)
    difference = float(np.abs(np.asarray(actual, dtype=np.float64) - expected).max()) / scale
    assert difference <= 1e-5, f"{label}: maps differ by {difference:.2e} of their maximum"


@pytest.mark.parametrize("block,layer", [(0, 1), (1, 2)])
def test_one_pass_reproduces_the_captum_maps(small_model, image_tensor, block, layer):
    results = attribute_all(small_model, image_tensor, METHODS, ("key", "value"), block, layer, target=2,
                            query=(3, 5), aligned=False)
    assert len(results) == 2 * 4 + 2  # four K/V methods x 2 kinds + the two attention views
    for (method, kind), result in results.items():
        grids, heads, maps, target = reference_maps(small_model, image_tensor, method,
                                                    "key" if kind == "attention" else kind, block, layer, 2, (3, 5))
        assert result.target == target == 2
        for scale, (grid, full) in enumerate(zip(grids, maps)):
            assert_close(result.grid_maps[scale], grid.numpy(), f"{method}/{kind} X{scale} grid")
            assert_close(result.maps[scale], full, f"{method}/{kind} X{scale} map")
            if heads is not None:
                assert_close(result.head_maps[scale], _upsample(heads[scale], tuple(image_tensor.shape[-2:])),
                             f"{method}/{kind} X{scale} heads")


def test_compute_saliency_keeps_its_outputs(small_model, image_tensor):
    for method in ("gradcam", "gradxact"):
        grids, _, maps, target = reference_maps(small_model, image_tensor, method, "value", 0, 1)
        result = compute_saliency(small_model, image_tensor, method, "value")
        assert result.target == target and result.kind == "value" and result.method == method
        for scale in range(3):
            assert_close(result.maps[scale], maps[scale], f"{method} X{scale}")
    query = compute_saliency(small_model, image_tensor, "query", query=(1, 2))
    assert query.query == (1, 2) and query.kind == "attention" and query.mass_shares.shape == (4, 3)


def test_a_method_class_alone_matches_the_shared_pass(small_model, image_tensor):
    alone = GradXActivation(small_model, kind="key").attribute(image_tensor, target=1)  # aligned layout
    shared = attribute_all(small_model, image_tensor, ["gradxact"], ["key"], target=1)[("gradxact", "key")]
    for a, b in zip(alone.grid_maps, shared.grid_maps):
        np.testing.assert_array_equal(a, b)
    capture = capture_layer(small_model, image_tensor, target=1)
    assert len(capture.key_grads) == len(capture.value_grads) == 3  # all scales, K and V, from one backward
    assert capture.mass_shares().sum(1) == pytest.approx(np.ones(4), abs=1e-5)


# ---------------------------------------------------------------------------------- targets
def test_targets_by_index_name_and_callable(small_model, image_tensor):
    names = ["circle", "square", "triangle", "cross", "star"]
    by_index = GradCAM(small_model, kind="key").attribute(image_tensor, target=3)
    by_name = GradCAM(small_model, kind="key", class_names=names).attribute(image_tensor, target="Cross")
    by_text = GradCAM(small_model, kind="key", class_names=names).attribute(image_tensor, target="3")
    by_callable = GradCAM(small_model, kind="key").attribute(image_tensor, target=lambda logits: logits[:, 3])
    assert by_name.target == by_text.target == 3 and by_name.target_label == "cross"
    assert by_callable.target is None and by_callable.target_label == "lambda"
    for other in (by_name, by_text, by_callable):
        for a, b in zip(other.grid_maps, by_index.grid_maps):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    margin = GradCAM(small_model, kind="key").attribute(image_tensor, target=lambda z: z[:, 3] - z[:, 0])
    assert not all(np.allclose(a, b) for a, b in zip(margin.grid_maps, by_index.grid_maps))
    with pytest.raises(TargetError, match="did you mean 'square'"):
        GradCAM(small_model, class_names=names).attribute(image_tensor, target="sqare")
    with pytest.raises(SaliencyError, match="target class 9 does not exist: choose 0..4"):
        GradCAM(small_model).attribute(image_tensor, target=9)
    with pytest.raises(TargetError, match="one score per image"):
        GradCAM(small_model).attribute(image_tensor, target=lambda z: z)
    with pytest.raises(TargetError, match="has no class names"):
        GradCAM(small_model).attribute(image_tensor, target="star")


def test_class_names_for_runs_and_imagenet_heads(small_model):
    assert class_names_for(small_model, {"classes": list("abcde")}) == list("abcde")
    assert class_names_for(small_model) == [f"class {i}" for i in range(5)]
    names = imagenet_class_names(1000)
    assert len(names) == 1000 and names[953] == "pineapple" and names[0] == "tench"
    assert len(set(names)) == 1000 and "crane (134)" in names  # duplicates told apart
    logits = torch.zeros(1, 1000)
    assert resolve_target("goldfish", logits, names).index == 1
    with pytest.raises(TargetError, match="names 3 classes but the model has 5"):
        class_names_for(small_model, {"classes": ["a", "b", "c"]})


def test_attention_views_need_no_gradients_and_dense_models_are_refused(small_model, image_tensor):
    attention = AttentionReceived(small_model).attribute(image_tensor)
    assert attention.kind == "attention" and sum(g.sum() for g in attention.grid_maps) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(SaliencyError, match="outside the 8x10 MSCSA grid"):
        QueryAttention(small_model, query=(8, 0)).attribute(image_tensor)
    with pytest.raises(SaliencyError, match="kind='keys' is unknown"):
        attribute_all(small_model, image_tensor, ["norm"], ["keys"])


def test_threads_sharing_one_model_get_their_own_maps(small_model):
    import threading

    images = [torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(seed)) for seed in (5, 6, 7, 8)]
    alone = [attribute_all(small_model, image, ["gradxact", "attention"], ["key"], target=1) for image in images]
    together: dict[int, dict] = {}
    barrier = threading.Barrier(len(images))

    def run(index: int) -> None:
        barrier.wait()
        together[index] = attribute_all(small_model, images[index], ["gradxact", "attention"], ["key"], target=1)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(len(images))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    for index, expected in enumerate(alone):
        for key, result in expected.items():
            for a, b in zip(together[index][key].grid_maps, result.grid_maps):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert sum(len(m._forward_hooks) for m in small_model.modules()) == 0
    assert not any(getattr(m, "store_attention", False) for m in small_model.modules())
