"""64-bit perceptual hashes (imagehash pHash and dHash) with a fast draft-mode JPEG decode.

A JPEG is decoded straight to greyscale at 1/2..1/8 scale (Pillow ``draft``, the DCT scaling of
libjpeg) before ``imagehash`` resizes it to 32×32 (pHash) or 9×8 (dHash): the hash input is the
same size, but the decode does a fraction of the work. Besides the two hashes we keep those of the
mirrored image, so that a horizontally flipped copy is found with one more query.

Hashes are handled as ``uint64`` in numpy and stored as signed 64-bit integers in the catalog.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps

# JPEGs are decoded at the smallest DCT scale that keeps at least this many pixels per side.
DRAFT_SIZE = 64
PHASH_SIDE = 32  # imagehash.phash: hash_size 8 × highfreq_factor 4


@dataclass(frozen=True)
class ImageHashes:
    """The perceptual hashes of one image, as unsigned 64-bit integers."""

    phash: int
    dhash: int
    phash_mirror: int
    dhash_mirror: int


def bits_to_int(bits: np.ndarray) -> int:
    """An 8×8 boolean hash (row-major, first bit most significant) as an unsigned integer."""
    return int.from_bytes(np.packbits(bits.reshape(-1)).tobytes(), "big")


def to_signed(value: int) -> int:
    """An unsigned 64-bit hash as the signed 64-bit integer the catalog stores."""
    return value - (1 << 64) if value >= 1 << 63 else value


def to_unsigned(value: int) -> int:
    """A signed 64-bit catalog value back to the unsigned hash."""
    return value + (1 << 64) if value < 0 else value


def load_for_hashing(source: str | Path | bytes, draft: bool = True) -> Image.Image:
    """Open an image as greyscale; JPEGs are DCT-scaled on decode when ``draft`` is on."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        if draft and img.format == "JPEG":
            img.draft("L", (DRAFT_SIZE, DRAFT_SIZE))
        img = ImageOps.exif_transpose(img) if img.format in ("JPEG", "TIFF", "WEBP") else img
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # Transparent pixels count as white, as they are usually shown.
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        return img.convert("L")


def hash_image(grey: Image.Image) -> ImageHashes:
    """pHash and dHash of a greyscale image and of its mirror image, computed by ``imagehash``."""
    small = grey.resize((PHASH_SIDE, PHASH_SIDE), Image.Resampling.LANCZOS)
    mirrored = grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return ImageHashes(
        phash=bits_to_int(imagehash.phash(small).hash),
        dhash=bits_to_int(imagehash.dhash(grey).hash),
        phash_mirror=bits_to_int(imagehash.phash(small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)).hash),
        dhash_mirror=bits_to_int(imagehash.dhash(mirrored).hash),
    )


def hash_file(source: str | Path | bytes, draft: bool = True) -> ImageHashes:
    """Hash one image file (a path or its bytes)."""
    return hash_image(load_for_hashing(source, draft=draft))
