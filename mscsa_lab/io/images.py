"""Images as users give them, turned into model inputs, with clear errors for the rest.

The formats photos and datasets come in (``ALLOWED_FORMATS``: PNG, JPEG, WebP, BMP, GIF, TIFF...); no
other Pillow decoder ever runs, so an EPS, PostScript or PDF upload is refused before Pillow could
hand it to Ghostscript (an external program that can run for ever and outlive the request). EXIF
orientation applied; grayscale, palette, RGBA (composited on white),
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
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from mscsa_lab.errors import UserError
from mscsa_lab.io.guarded import read_bytes, read_stream, shown_name

__all__ = ["ImageError", "PreparedImage", "load_image", "prepare_image", "MAX_PIXELS", "MIN_SIDE", "FIT_MODES",
           "ALLOWED_FORMATS", "MAX_FILE_BYTES"]

MAX_PIXELS = 40_000_000  # about 6300 x 6300; more is refused before decoding (bomb guard)
MAX_FILE_BYTES = 50 * 1024 * 1024
MIN_SIDE = 8
FIT_MODES = ("pad", "crop")
# Pillow's names of the formats accepted; MPO is how Pillow names many phone JPEGs.
ALLOWED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "DIB", "GIF", "TIFF", "PPM", "TGA", "ICO", "AVIF")
_ACCEPTED_TEXT = "PNG, JPEG, WebP, BMP, GIF, TIFF, PPM/PGM, TGA, ICO or AVIF"
# Formats that are programs rather than pictures (Pillow renders them by running Ghostscript).
_DOCUMENT_SIGNATURES = ((b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"%PDF", "PDF"))


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


def _refuse_unaccepted(data: bytes) -> None:
    """The message for a file none of the accepted decoders recognised."""
    head = data[:2048]
    for signature, kind in _DOCUMENT_SIGNATURES:
        if head.lstrip()[: len(signature)] == signature:
            raise ImageError(f"{kind} files are documents, not pictures, and are not opened here (rendering them would "
                             "run an external interpreter): export the picture as PNG or JPEG first") from None
    if b"<svg" in head.lower():
        raise ImageError("SVG is a vector format, not pixels: export it as PNG (or JPEG) first") from None
    raise ImageError(f"this file is not an image Pillow can read here (accepted: {_ACCEPTED_TEXT}): "
                     "convert it to PNG or JPEG first") from None


def _registered_formats() -> tuple[str, ...]:
    """The accepted formats this Pillow build can open (AVIF needs libavif; MPO opens as JPEG)."""
    Image.init()
    return tuple(name for name in ALLOWED_FORMATS if name in Image.OPEN)


def _decode(data: bytes) -> Image.Image:
    """The first frame of ``data`` decoded by an accepted Pillow plugin, within the pixel limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_registered_formats())
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
        _refuse_unaccepted(data)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"the image file is corrupt or truncated: {str(error)[:200]}") from None
    return image


def load_image(source: str | os.PathLike | bytes | BinaryIO | Image.Image | np.ndarray,
               root: str | os.PathLike | None = None) -> Image.Image:
    """Open, check and normalise an image to 8-bit RGB with EXIF orientation applied. A path must be
    a regular file of at most ``MAX_FILE_BYTES`` (resolving inside ``root`` when given: a training
    folder's images stay in the folder); only ``ALLOWED_FORMATS`` are decoded."""
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
        if source.format is not None and source.format not in ALLOWED_FORMATS:
            raise ImageError(f"{source.format} images are not opened here: convert it to PNG or JPEG first")
        image = source
    else:
        if isinstance(source, (str, os.PathLike)):
            data = read_bytes(source, MAX_FILE_BYTES, root, what="image file", error=ImageError, allow_empty=True)
        elif isinstance(source, (bytes, bytearray)):
            data = bytes(source)
            if len(data) > MAX_FILE_BYTES:
                raise ImageError(f"image is {len(data) / 2**20:.0f} MB: the limit is {MAX_FILE_BYTES // 2**20} MB")
        elif hasattr(source, "read"):
            data = read_stream(source, MAX_FILE_BYTES, what="image", error=ImageError)
        else:
            raise ImageError(f"an image must be a file path, bytes, a file object, a PIL image or an array, "
                             f"got {shown_name(type(source).__name__)}")
        if not data:
            raise ImageError("the image file is empty")
        image = _decode(data)
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
