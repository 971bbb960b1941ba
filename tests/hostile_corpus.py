"""The hostile-input corpus: bad and unusual files, generated (no binaries committed), each with the
outcome a user must see. ``write_corpus(folder)`` writes every file and returns the cases.

An outcome is either ``ok`` (the input is unusual but valid: the app must handle it and render) or a
regular expression the page's message must match (a clear message, never a stack trace).
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

__all__ = ["Case", "image_cases", "checkpoint_cases", "write_corpus", "PAYLOAD_MARKER", "many_tensors_safetensors",
           "many_entries_zip", "eps_bytes"]

PAYLOAD_MARKER = "mscsa_lab_payload_ran"


@dataclass(frozen=True)
class Case:
    name: str
    filename: str
    make: Callable[[Path], None]
    expect: str  # "ok" or a regex of the message


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def _sample() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))


def _write(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(side: int = 20000) -> bytes:
    """A valid PNG header claiming side x side pixels (1-bit), with one compressed all-zero row block:
    a tiny file that would decode to hundreds of megapixels."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * (side // 8)
    body = zlib.compress(row * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _exif_rotated() -> bytes:
    image = _sample()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def _animated() -> bytes:
    frames = [_sample().convert("P"), Image.new("P", (128, 96), 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _save(image_fn: Callable[[], Image.Image], fmt: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        image_fn().save(path, format=fmt)
    return make


def eps_bytes() -> bytes:
    """A real EPS file (Pillow's own encoder): opening it with plain Pillow runs Ghostscript."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="EPS")
    return buffer.getvalue()


def _pdf_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(buffer, format="PDF")
    return buffer.getvalue()


def image_cases() -> list[Case]:
    good = _png_bytes(_sample())
    return [
        Case("corrupt", "corrupt.png", _write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), r"corrupt or truncated|not an image"),
        Case("truncated", "truncated.png", _write(good[: len(good) // 2]), r"corrupt or truncated|truncated"),
        Case("zero-byte", "empty.png", _write(b""), r"empty|0 bytes|not an image"),
        Case("text renamed .png", "notes.png", _write(b"just some text, not an image\n" * 10), r"not an image"),
        Case("svg", "drawing.svg", _write(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
             r"SVG is a vector format"),
        Case("1x1", "dot.png", _write(_png_bytes(Image.new("RGB", (1, 1), (255, 0, 0)))), r"too small|at least"),
        Case("decompression bomb", "bomb.png", _write(_bomb_png()), r"too large|megapixels|pixels"),
        Case("very wide", "wide.png", _write(_png_bytes(Image.new("RGB", (6000, 8), (0, 128, 255)))),
             r"aspect|too (wide|narrow|thin)|ok"),
        Case("16-bit grey", "grey16.png", _write(_png_bytes(Image.fromarray(
            (np.arange(96 * 128, dtype=np.uint16).reshape(96, 128) * 5).astype(np.uint16)))), "ok"),
        Case("RGBA", "alpha.png", _write(_png_bytes(_sample().convert("RGBA"))), "ok"),
        Case("CMYK jpeg", "cmyk.jpg", _save(lambda: _sample().convert("CMYK"), "JPEG"), "ok"),
        Case("animated gif", "anim.gif", _write(_animated()), "ok"),
        Case("EXIF-rotated jpeg", "rotated.jpg", _write(_exif_rotated()), "ok"),
        Case("EPS (Ghostscript)", "drawing.eps", _write(eps_bytes()), r"PostScript/EPS files are documents"),
        Case("EPS renamed .png", "drawing.png", _write(eps_bytes()), r"PostScript/EPS files are documents"),
        Case("PDF", "page.pdf", _write(_pdf_bytes()), r"PDF files are documents"),
        Case("PostScript", "page.ps", _write(b"%!PS-Adobe-3.0\n/Helvetica findfont\nshowpage\n"),
             r"PostScript/EPS files are documents"),
        Case("SGI image (not an accepted format)", "picture.sgi", _save(lambda: _sample().convert("RGB"), "SGI"),
             r"not an image Pillow can read here \(accepted: PNG, JPEG"),
    ]


def many_tensors_safetensors(count: int = 600_000) -> Callable[[Path], None]:
    """A valid safetensors file of ``count`` one-float tensors, written directly (header JSON, then
    the data): about 40 MB for 600k tensors, which safetensors itself takes tens of seconds to load."""
    def make(path: Path) -> None:
        entries = ",".join(f'"t{i}":{{"dtype":"F32","shape":[1],"data_offsets":[{4 * i},{4 * i + 4}]}}'
                           for i in range(count))
        header = ("{" + entries + "}").encode()
        header += b" " * (-len(header) % 8)
        path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4 * count))
    return make


def many_entries_zip(count: int = 30_000) -> Callable[[Path], None]:
    """A zip archive laid out like torch.save's (``archive/data.pkl``, ``archive/data/N``) with
    ``count`` storage entries: its directory alone announces more tensors than any model has."""
    def make(path: Path) -> None:
        import zipfile

        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("archive/data.pkl", pickle.dumps({}))
            for i in range(count):
                archive.writestr(f"archive/data/{i}", b"\0\0\0\0")
    return make


class _Payload:
    """Unpickling this would create the marker file: the loader must never run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def checkpoint_cases(marker: Path, good_state: dict | None = None) -> list[Case]:
    """Checkpoint files for a model whose ``good_state`` (a state_dict) is given."""
    import torch
    from safetensors.torch import save_file

    cases = [
        Case("pickle that runs code", "evil.pth", _write(pickle.dumps({"weight": _Payload(marker)})),
             r"refused: besides tensors it holds Python objects or code"),
        Case("random bytes .pth", "random.pth", _write(os.urandom(4096)), r"not a PyTorch checkpoint"),
        Case("zero-byte .pth", "empty.pth", _write(b""), r"empty \(0 bytes\)"),
        Case("zero-byte .safetensors", "empty.safetensors", _write(b""), r"empty|not a readable safetensors|safetensors"),
        Case("random bytes .safetensors", "random.safetensors", _write(os.urandom(4096)), r"safetensors"),
        Case("image renamed .pth", "image.pth", _write(_png_bytes(_sample())), r"not a PyTorch checkpoint"),
        Case("600k tensors", "many.safetensors", many_tensors_safetensors(),
             r"safetensors header is .*above the limit of 8.00 MiB; no model here holds that many tensors"),
        Case("30k zip entries", "many.pth", many_entries_zip(), r"holds 30,001 entries, above the limit of 20,000"),
    ]
    if good_state is not None:
        contiguous = {k: v.contiguous() for k, v in good_state.items()}

        def wrong_keys(path: Path) -> None:
            save_file({f"other.{k}": v for k, v in contiguous.items()}, str(path))

        def wrong_shapes(path: Path) -> None:
            save_file({k: (torch.zeros(v.shape[0] + 1, *v.shape[1:]) if v.dim() else v) for k, v in contiguous.items()},
                      str(path))

        def truncated(path: Path) -> None:
            buffer = path.with_suffix(".full")
            save_file(contiguous, str(buffer))
            data = buffer.read_bytes()
            buffer.unlink()
            path.write_bytes(data[: len(data) // 2])

        def nan_weights(path: Path) -> None:
            save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                       for k, v in contiguous.items()}, str(path))

        def retyped(dtype):
            def make(path: Path) -> None:
                save_file({k: (v.to(dtype) if v.is_floating_point() else v) for k, v in contiguous.items()}, str(path))
            return make

        cases += [
            Case("int8 weights", "int8.safetensors", retyped(torch.int8), r"of a type this model cannot use .*int8"),
            Case("bool weights", "bool.safetensors", retyped(torch.bool), r"of a type this model cannot use .*bool"),
            Case("fp8 weights", "fp8.safetensors", retyped(torch.float8_e4m3fn),
                 r"of a type this model cannot use .*float8_e4m3fn"),
            Case("complex weights", "complex.safetensors", retyped(torch.complex64),
                 r"of a type this model cannot use .*complex64"),
            Case("safetensors with wrong keys", "keys.safetensors", wrong_keys, r"does not fit this model: \d+ missing"),
            Case("safetensors with wrong shapes", "shapes.safetensors", wrong_shapes, r"of the wrong shape"),
            Case("truncated safetensors", "truncated.safetensors", truncated, r"safetensors"),
            Case("NaN weights", "nan.safetensors", nan_weights, r"not numbers \(NaN or infinity\): these weights are broken"),
        ]
    return cases


def write_corpus(folder: Path, cases: list[Case]) -> list[tuple[Case, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for case in cases:
        path = folder / case.filename
        case.make(path)
        written.append((case, path))
    return written
