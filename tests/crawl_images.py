"""Real test images for the crawl tests: the shared ImageNet photos and the awkward variants
(CMYK, EXIF-rotated, alpha, palette, 16-bit, animated, truncated, HTML, bomb) derived from them."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image

from tests.conftest import SAMPLES


def sample_paths(n: int) -> list[Path]:
    """The first ``n`` shared ImageNet sample photos."""
    return sorted(SAMPLES.glob("*.JPEG"))[:n]


def sample_bytes(i: int = 0) -> bytes:
    return sample_paths(i + 1)[i].read_bytes()


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment after SOI: other bytes (other SHA-256), same picture."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def photo(i: int = 0) -> Image.Image:
    with Image.open(io.BytesIO(sample_bytes(i))) as im:
        return im.convert("RGB")


def variants() -> dict[str, bytes]:
    """Valid but awkward encodings of real photos."""
    im = photo(1)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    rgba = im.convert("RGBA")
    rgba.putalpha(128)
    frames = [photo(2), photo(3).resize(photo(2).size)]
    sixteen = im.convert("L").convert("I").point(lambda v: v * 256).convert("I;16")
    return {
        "cmyk.jpg": encoded(im.convert("CMYK"), "JPEG"),
        "exif_rotated.jpg": encoded(im, "JPEG", exif=exif),
        "alpha.png": encoded(rgba, "PNG"),
        "palette.png": encoded(im.convert("P"), "PNG"),
        "sixteen_bit.png": encoded(sixteen, "PNG"),
        "animated.gif": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100),
        "photo.webp": encoded(im, "WEBP"),
    }


def bomb_png(side: int = 20000) -> bytes:
    """A real, small PNG that claims ``side``×``side`` 1-bit pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * (side // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def broken() -> dict[str, tuple[bytes, str]]:
    """Broken bodies and the reason each must be rejected with."""
    jpeg = sample_bytes(0)
    return {
        "html": (b"<!DOCTYPE html><html><body>Access denied</body></html>", "html_not_image"),
        "truncated": (jpeg[: int(len(jpeg) * 0.6)], "truncated"),
        "empty": (b"", "empty"),
        "too_small": (encoded(photo(0).resize((16, 12)), "JPEG"), "too_small"),
        "bomb": (bomb_png(), "decompression_bomb"),
        "svg": (
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="500" height="500"/>',
            "svg_not_bitmap",
        ),
    }
