"""Per-scale saliency maps, rendering, image input and checkpoints."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from mscsa_lab import create_mscsa_model
from mscsa_lab.io.checkpoints import CheckpointError, load_checkpoint, read_state_dict, save_checkpoint
from mscsa_lab.io.images import ImageError, load_image, prepare_image
from mscsa_lab.explain.render import attention_mass_chart, head_grid, overlay, saliency_grid, save_maps
from mscsa_lab.explain.saliency import KVTaps, SaliencyError, compute_saliency, select_layer


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return create_mscsa_model(backbone="resnet18", config=dict(squeeze_ratio=0.25, num_heads=4, key_dim=8,
                                                               pool_stride=16, depth=2, weight_init="torch"),
                              num_classes=5).eval()  # random branches that are not zero, so maps differ


@pytest.fixture(scope="module")
def image_tensor():
    torch.manual_seed(1)
    return torch.randn(1, 3, 160, 192)


@pytest.mark.parametrize("method", ["gradxact", "gradcam", "norm", "eigencam", "attention", "query"])
@pytest.mark.parametrize("kind", ["key", "value"])
def test_every_method_gives_finite_maps_of_the_input_size(small_model, image_tensor, method, kind):
    result = compute_saliency(small_model, image_tensor, method, kind, block=1, layer=2)
    assert len(result.maps) == 3
    for full, grid in zip(result.maps, result.grid_maps):
        assert full.shape == (160, 192) and np.isfinite(full).all() and np.isfinite(grid).all()
    assert [g.shape for g in result.grid_maps] == [(10, 12), (5, 6), (4, 4)]  # Eq. 3 grids at 1/16
    assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    if method in ("gradcam", "gradxact"):
        assert result.target == int(result.probabilities.argmax())


def test_attention_mass_shares_sum_to_one(small_model, image_tensor):
    result = compute_saliency(small_model, image_tensor, "attention")
    assert result.mass_shares.shape == (4, 3)
    assert result.mass_shares.sum(1) == pytest.approx(np.ones(4), abs=1e-5)
    assert (result.mass_shares > 0).all()
    # Attention received, averaged over queries and heads, is a distribution over all scales' keys.
    assert sum(g.sum() for g in result.grid_maps) == pytest.approx(1.0, abs=1e-5)


def test_query_attention_is_a_distribution_over_keys(small_model, image_tensor):
    result = compute_saliency(small_model, image_tensor, "query", query=(3, 4))
    assert result.query == (3, 4)
    heads = _grid_heads(small_model, image_tensor)  # per scale: heads x keys
    assert sum(h.sum(axis=1) for h in heads) == pytest.approx(np.ones(4), abs=1e-5)
    for grid, per_head in zip(result.grid_maps, heads):
        assert grid.ravel() == pytest.approx(per_head.mean(0), abs=1e-6)
    with pytest.raises(SaliencyError, match="outside the 10x12 MSCSA grid"):
        compute_saliency(small_model, image_tensor, "query", query=(10, 0))


def _grid_heads(model, image):
    """Per-head query attention on each scale's own grid, straight from the stored attention."""
    layer = select_layer(model, 0, 1)
    layer.store_attention = True
    with torch.no_grad():
        model(image)
    attention = layer.last_attention[0]
    layer.store_attention = False
    counts = [10 * 12, 5 * 6, 4 * 4]
    return [p[:, 3 * 12 + 4, :].numpy() for p in attention.split(counts, dim=-1)]


def test_gradcam_target_changes_the_map_and_is_checked(small_model, image_tensor):
    first = compute_saliency(small_model, image_tensor, "gradcam", target=0)
    second = compute_saliency(small_model, image_tensor, "gradcam", target=3)
    assert first.target == 0 and second.target == 3
    assert not all(np.allclose(a, b) for a, b in zip(first.grid_maps, second.grid_maps))
    with pytest.raises(SaliencyError, match="target class 7 does not exist: choose 0..4"):
        compute_saliency(small_model, image_tensor, "gradcam", target=7)


def test_eigencam_sign_follows_the_activation_norm(small_model, image_tensor):
    eigen = compute_saliency(small_model, image_tensor, "eigencam", kind="value")
    norm = compute_saliency(small_model, image_tensor, "norm", kind="value")
    for e, n in zip(eigen.grid_maps, norm.grid_maps):
        if e.size > 1:
            assert np.corrcoef(e.ravel(), n.ravel())[0, 1] >= 0


def test_taps_do_not_change_the_output(small_model, image_tensor):
    with torch.no_grad():
        before = small_model(image_tensor)
        layer = select_layer(small_model, 0, 1)
        with KVTaps(layer) as taps:
            during = small_model(image_tensor)
        after = small_model(image_tensor)
    assert torch.equal(before, during) and torch.equal(before, after)
    assert [tuple(k.shape[-2:]) for k in taps.keys] == [(10, 12), (5, 6), (4, 4)]
    assert all(v.shape[1] == 4 * 16 for v in taps.values)
    compute_saliency(small_model, image_tensor, "gradcam")
    with torch.no_grad():
        assert torch.equal(small_model(image_tensor), before)  # no hooks or state left behind


def test_bad_requests(small_model, image_tensor):
    with pytest.raises(SaliencyError, match="block=5 does not exist: this model has blocks 0..1"):
        compute_saliency(small_model, image_tensor, block=5)
    with pytest.raises(SaliencyError, match="layer=3"):
        compute_saliency(small_model, image_tensor, layer=3)
    with pytest.raises(SaliencyError, match="method='lime' is unknown"):
        compute_saliency(small_model, image_tensor, method="lime")
    dense = create_mscsa_model(backbone="resnet18", config=dict(squeeze_ratio=0.25, num_heads=2, key_dim=8),
                               task="dense").eval()
    with pytest.raises(SaliencyError, match="needs a class score"):
        compute_saliency(dense, image_tensor, "gradcam")
    assert len(compute_saliency(dense, image_tensor, "norm").maps) == 3  # class-free methods work on dense models


def test_rendering_and_raw_maps(tmp_path, small_model, image_tensor):
    display = np.full((160, 192, 3), 128, np.uint8)
    keys = compute_saliency(small_model, image_tensor, "norm", "key")
    values = compute_saliency(small_model, image_tensor, "norm", "value")
    figure = saliency_grid(display, [keys, values], class_names=list("abcde"))
    assert len(figure.axes) == 2 * 4 + 2  # 2 rows x (image + 3 scales) + a colorbar per row
    from mscsa_lab.io.figures import save_figure

    png = save_figure(figure, tmp_path / "grid.png")
    assert Image.open(png).size[0] > 600
    attention = compute_saliency(small_model, image_tensor, "attention")
    save_figure(head_grid(display, attention), tmp_path / "heads.png")
    save_figure(attention_mass_chart(attention), tmp_path / "mass.svg")
    archive = np.load(save_maps(attention, tmp_path / "maps.npz"))
    assert archive["mass_shares"].shape == (4, 3) and archive["scale2_grid"].shape == (4, 4)
    stacked = np.load(save_maps(keys, tmp_path / "maps.npy"))
    assert stacked.shape == (3, 160, 192)
    blended = overlay(display, keys.maps[0])
    assert blended.shape == display.shape and blended.dtype == np.uint8
    with pytest.raises(ValueError, match="per-head"):
        head_grid(display, compute_saliency(small_model, image_tensor, "eigencam"))


# ------------------------------------------------------------------------------------ images
def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_images_of_every_kind_become_rgb(tmp_path):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    cases = {
        "gray": _encode(rgb.convert("L"), "PNG"),
        "rgba": _encode(rgb.convert("RGBA"), "PNG"),
        "palette": _encode(rgb.convert("P"), "GIF"),
        "jpeg": _encode(rgb, "JPEG"),
        "webp": _encode(rgb, "WEBP"),
        "bmp": _encode(rgb, "BMP"),
        "tiff16": _encode(Image.fromarray((np.arange(2400).reshape(40, 60) * 27).astype(np.uint16)), "TIFF"),
    }
    for name, data in cases.items():
        image = load_image(data)
        assert image.mode == "RGB" and image.size == (60, 40), name
    sixteen = np.asarray(load_image(cases["tiff16"]))
    assert sixteen.min() == 0 and sixteen.max() == 255  # stretched to 8 bits, not clipped


def test_exif_rotation_transparency_and_animation():
    tall = Image.new("RGB", (30, 50), (255, 0, 0))
    exif = tall.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated = load_image(_encode(tall, "JPEG", exif=exif.tobytes()))
    assert rotated.size == (50, 30)
    transparent = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    assert np.asarray(load_image(_encode(transparent, "PNG"))).min() == 255  # composited on white
    frames = [Image.new("RGB", (20, 20), colour) for colour in ((0, 255, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert tuple(np.asarray(load_image(data))[0, 0]) == (0, 255, 0)  # the first frame


def test_bad_images_get_clear_errors(tmp_path):
    with pytest.raises(ImageError, match="not an image Pillow can read"):
        load_image(b"this is not an image at all")
    truncated = _encode(Image.new("RGB", (200, 200), (1, 2, 3)), "PNG")[:100]
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(truncated)
    with pytest.raises(ImageError, match="at least 8 pixels"):
        load_image(_encode(Image.new("RGB", (4, 300)), "PNG"))
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    bomb = _encode(Image.new("1", (10000, 10000)), "PNG")  # 100 megapixels, a few kB on disk
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(bomb)


def test_prepare_image_pad_and_crop():
    wide = Image.new("RGB", (400, 100), (255, 255, 255))
    padded = prepare_image(_encode(wide, "PNG"), (128, 128), fit="pad")
    assert padded.tensor.shape == (1, 3, 128, 128) and padded.display.shape == (128, 128, 3)
    assert padded.content_box == (0, 48, 128, 80) and padded.original_size == (400, 100)
    cropped = prepare_image(_encode(wide, "PNG"), (128, 128), fit="crop")
    assert cropped.content_box == (0, 0, 128, 128) and (cropped.display == 255).all()
    with pytest.raises(ImageError, match="fit='stretch' is unknown"):
        prepare_image(_encode(wide, "PNG"), fit="stretch")


# ------------------------------------------------------------------------------- checkpoints
def test_checkpoints_load_safely(tmp_path, small_model):
    path = save_checkpoint(small_model, tmp_path / "m.safetensors")
    clone = create_mscsa_model(backbone="resnet18", config=dict(squeeze_ratio=0.25, num_heads=4, key_dim=8,
                                                                pool_stride=16, depth=2), num_classes=5).eval()
    load_checkpoint(clone, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(clone(x), small_model(x))
    pth = tmp_path / "m.pth"
    torch.save({"state_dict": small_model.state_dict()}, pth)
    assert set(read_state_dict(pth)) == set(small_model.state_dict())

    other = create_mscsa_model(backbone="resnet18", config=dict(squeeze_ratio=0.25, num_heads=4, key_dim=8),
                               num_classes=7)
    with pytest.raises(CheckpointError, match="does not fit this model: .*wrong shape.*head.fc.weight"):
        load_checkpoint(other, path)

    class Payload:
        def __reduce__(self):
            return (print, ("this would run on load",))

    unsafe = tmp_path / "unsafe.pth"
    torch.save({"weights": torch.zeros(1), "payload": Payload()}, unsafe)
    with pytest.raises(CheckpointError, match="refused: besides tensors it holds Python objects or code"):
        read_state_dict(unsafe)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        read_state_dict(garbage)
    with pytest.raises(CheckpointError, match=r"\.safetensors or \.pth"):
        read_state_dict(_touch(tmp_path / "m.txt"))


def _touch(path):
    path.write_bytes(b"x")
    return path


def test_preprocessing_follows_the_backbones_timm_config():
    from mscsa_lab.workflows.sources import preprocessing_for

    model = create_mscsa_model(backbone="resnet18", config=dict(squeeze_ratio=0.25, num_heads=2, key_dim=8))
    import timm

    cfg = timm.models.get_pretrained_cfg("resnet18")
    assert preprocessing_for(model) == dict(mean=tuple(cfg.mean), std=tuple(cfg.std), interpolation=cfg.interpolation)
    demo_meta = {"preprocessing": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    assert preprocessing_for(model, demo_meta) == dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    prepared = prepare_image(_encode(white, "PNG"), (32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert torch.allclose(prepared.tensor, torch.full((1, 3, 32, 32), 2.0))
