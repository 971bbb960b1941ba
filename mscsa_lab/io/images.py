"""Images as users give them, turned into model inputs, with clear errors for the rest.

Any format Pillow reads; EXIF orientation applied; grayscale, palette, RGBA (composited on white),
16-bit and float images converted to 8-bit RGB; animated files give their first frame; corrupt files
and decompression bombs are rejected with a message. Resizing follows timm's preprocessing (the
backbone's mean/std and interpolation): either the whole image resized to the input size with its
aspect kept (padded), or resized and center-cropped.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from mscsa_lab.errors import UserError

__all__ = ["ImageError", "PreparedImage", "load_image", "prepare_image", "MAX_PIXELS", "MIN_SIDE", "FIT_MODES"]

MAX_PIXELS = 40_000_000  # about 6300 x 6300; more is refused before decoding (bomb guard)
MAX_FILE_BYTES = 50 * 1024 * 1024
MIN_SIDE = 8
FIT_MODES = ("pad", "crop")


class ImageError(UserError, ValueError):
    """An image that cannot be used; the message says why and what to do."""


@dataclass
class PreparedImage:
    """``tensor``: 1x3xHxW normalised model input; ``display``: the RGB picture (H x W x 3 uint8)
    exactly as the model sees it, for overlays; ``original_size``: width, height as loaded;
    ``placement``: (sx, sy, ox, oy), an original pixel (x, y) lands at (x sx + ox, y sy + oy) of the input."""

    tensor: torch.Tensor
    display: np.ndarray
    original_size: tuple[int, int]
    content_box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the image inside the padding
    placement: tuple[float, float, float, float] = (1.0, 1.0, 0.0, 0.0)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = np.zeros_like(array) if high <= low else (array - low) / (high - low) * 255.0
        image = Image.fromarray(np.nan_to_num(scaled).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def load_image(source: str | os.PathLike | bytes | BinaryIO | Image.Image | np.ndarray) -> Image.Image:
    """Open, check and normalise an image to 8-bit RGB with EXIF orientation applied."""
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or source.size == 0:
            raise ImageError(f"an image array must be H x W or H x W x C, got shape {source.shape}")
        array = source
        if array.dtype != np.uint8:
            array = array.astype(np.float64)
            low, high = float(array.min()), float(array.max())
            array = ((array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)).astype(np.uint8)
        source = Image.fromarray(array[..., :3] if array.ndim == 3 else array)
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise ImageError(f"image file {str(path)!r} does not exist")
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ImageError(f"image file is {path.stat().st_size / 2**20:.0f} MB: the limit is "
                                 f"{MAX_FILE_BYTES // 2**20} MB")
            data = path.read_bytes()
        elif isinstance(source, bytes):
            data = source
        else:
            data = source.read()
        if not data:
            raise ImageError("the image file is empty")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(f"image is {width}x{height} = {width * height / 1e6:.0f} megapixels: the limit is "
                                     f"{MAX_PIXELS / 1e6:.0f} megapixels (a decompression bomb guard); downscale it first")
                image.seek(0)  # animated images: the first frame
                image.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ImageError(f"image refused as a possible decompression bomb: {error}") from None
        except UnidentifiedImageError:
            if b"<svg" in data[:2048].lower():
                raise ImageError("SVG is a vector format, not pixels: export it as PNG (or JPEG) first") from None
            raise ImageError("this file is not an image Pillow can read (use PNG, JPEG, WebP, BMP, TIFF, GIF...)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise ImageError(f"the image file is corrupt or truncated: {error}") from None
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"image is {width}x{height}: each side must be at least {MIN_SIDE} pixels")
    if width * height > MAX_PIXELS:
        raise ImageError(f"image is {width}x{height}: the limit is {MAX_PIXELS / 1e6:.0f} megapixels")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not stop the image being used
        pass
    return _to_rgb(image)


def prepare_image(
    source,
    input_size: tuple[int, int] = (224, 224),
    fit: str = "pad",
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
    interpolation: str = "bicubic",
) -> PreparedImage:
    """Load and turn an image into a normalised model input of ``input_size`` (height, width).

    ``fit="pad"`` keeps the whole image and its aspect (letterboxed with the mean colour);
    ``fit="crop"`` resizes the short side and center-crops, as timm's eval transform does.
    """
    if fit not in FIT_MODES:
        raise ImageError(f"fit={fit!r} is unknown: choose one of {list(FIT_MODES)}")
    image = load_image(source)
    original = image.size
    height, width = input_size
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}.get(interpolation, Image.BICUBIC)
    if fit == "crop":
        scale = max(width / image.width, height / image.height)
        resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), resample)
        left, top = (resized.width - width) // 2, (resized.height - height) // 2
        canvas = resized.crop((left, top, left + width, top + height))
        box = (0, 0, width, height)
        placement = (resized.width / image.width, resized.height / image.height, -left, -top)
    else:
        scale = min(width / image.width, height / image.height)
        new_w, new_h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        resized = image.resize((new_w, new_h), resample)
        fill = tuple(int(round(255 * m)) for m in mean)
        canvas = Image.new("RGB", (width, height), fill)
        left, top = (width - new_w) // 2, (height - new_h) // 2
        canvas.paste(resized, (left, top))
        box = (left, top, left + new_w, top + new_h)
        placement = (new_w / image.width, new_h / image.height, left, top)
    display = np.asarray(canvas, dtype=np.uint8).copy()
    tensor = torch.from_numpy(display).permute(2, 0, 1).float().div(255.0)
    tensor = (tensor - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return PreparedImage(tensor.unsqueeze(0), display, original, box, tuple(float(v) for v in placement))
