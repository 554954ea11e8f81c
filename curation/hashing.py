"""64-bit perceptual hashes (imagehash's pHash and dHash) with a fast draft-mode JPEG decode.

A JPEG is decoded straight to greyscale at 1/2..1/8 scale (Pillow ``draft``, the DCT scaling of
libjpeg) before it is resized to 32×32 (pHash) or 9×8 (dHash): the hash input is the same size, but
the decode does a fraction of the work. Besides the two hashes of the image we can keep those of its
seven other orientations (the mirror image, the rotations by 90°, 180° and 270°, and their mirrors:
the dihedral group of the square), so that a flipped or turned copy is found by querying each
orientation against the plain hashes of the others. The orientations are not decoded again: they
are flips of the 32×32 and 9×8 hash inputs of the image and of the small greyscale image turned by
90° (two more small resizes), and the eight pHash DCTs run as one batch. The bits equal those of
``imagehash.phash`` / ``imagehash.dhash`` on the transposed greyscale image.

Hashes are handled as ``uint64`` in numpy and stored as signed 64-bit integers in the catalog.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fftpack
from PIL import Image, ImageOps

# JPEGs are decoded at the smallest DCT scale that keeps at least this many pixels per side.
DRAFT_SIZE = 64
PHASH_SIDE = 32  # imagehash.phash: hash_size 8 × highfreq_factor 4
HASH_SIDE = 8
DHASH_SIZE = (HASH_SIDE + 1, HASH_SIDE)  # imagehash.dhash: width 9, height 8


@dataclass(frozen=True)
class Orientation:
    """One of the eight orientations: the Pillow transpose that makes it, and how it is made from
    the hash input of the image, or of the image turned by 90° (``turned``), by flipping rows
    (``flip_rows``: upside down) and columns (``flip_columns``: left-right)."""

    kind: str  # the ``hash_kind`` of a link found in this orientation of the query (≤ 16 characters)
    transpose: Image.Transpose | None
    turned: bool
    flip_rows: bool
    flip_columns: bool

    def apply(self, plain: np.ndarray, turned: np.ndarray) -> np.ndarray:
        """This orientation of a hash input, given the input of the image and of the image turned."""
        pixels = turned if self.turned else plain
        return pixels[:: -1 if self.flip_rows else 1, :: -1 if self.flip_columns else 1]


# In storage order: the image, its mirror, then the six others.
ORIENTATIONS: tuple[Orientation, ...] = (
    Orientation("phash", None, False, False, False),
    Orientation("phash_mirror", Image.Transpose.FLIP_LEFT_RIGHT, False, False, True),
    Orientation("phash_rot90", Image.Transpose.ROTATE_90, True, False, False),
    Orientation("phash_rot180", Image.Transpose.ROTATE_180, False, True, True),
    Orientation("phash_rot270", Image.Transpose.ROTATE_270, True, True, True),
    Orientation("phash_vflip", Image.Transpose.FLIP_TOP_BOTTOM, False, True, False),
    Orientation("phash_transpose", Image.Transpose.TRANSPOSE, True, True, False),
    Orientation("phash_transverse", Image.Transpose.TRANSVERSE, True, False, True),
)
EXTRA_ORIENTATIONS = len(ORIENTATIONS) - 2  # those beyond the image and its mirror


@dataclass(frozen=True)
class ImageHashes:
    """The perceptual hashes of one image, as unsigned 64-bit integers: pHash and dHash of the image,
    of its mirror, and ``extra``: (pHash, dHash) of the six other orientations, flattened."""

    phash: int
    dhash: int
    phash_mirror: int
    dhash_mirror: int
    extra: tuple[int, ...] = ()

    def orientation_row(self) -> list[int]:
        """(pHash, dHash) of every orientation, flattened in ``ORIENTATIONS`` order; orientations
        not hashed repeat the image's own hashes (a repeated query finds nothing new)."""
        extra = list(self.extra) or [self.phash, self.dhash] * EXTRA_ORIENTATIONS
        return [self.phash, self.dhash, self.phash_mirror, self.dhash_mirror, *extra]


def pack_extra(extra: tuple[int, ...]) -> bytes:
    """The six extra (pHash, dHash) pairs as the 96 bytes the catalog stores (big-endian uint64)."""
    return np.array(extra, dtype=">u8").tobytes()


def unpack_extra(blob: bytes | None) -> tuple[int, ...]:
    """The extra orientation hashes from their stored bytes; ``()`` when not hashed yet."""
    if not blob:
        return ()
    return tuple(int(v) for v in np.frombuffer(blob, dtype=">u8"))


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


def hash_image(grey: Image.Image, orientations: int = len(ORIENTATIONS)) -> ImageHashes:
    """pHash and dHash of a greyscale image in its first ``orientations`` orientations (2: the image
    and its mirror, as reference sets need; 8: all), bit for bit as ``imagehash`` computes them."""
    if orientations not in (2, len(ORIENTATIONS)):
        raise ValueError(f"orientations must be 2 or {len(ORIENTATIONS)}, got {orientations}")
    chosen = ORIENTATIONS[:orientations]
    small = np.asarray(grey.resize((PHASH_SIDE, PHASH_SIDE), Image.Resampling.LANCZOS))
    wide = np.asarray(grey.resize(DHASH_SIZE, Image.Resampling.LANCZOS))
    small_turned, wide_turned = small, wide
    if any(o.turned for o in chosen):
        turned = grey.transpose(Image.Transpose.ROTATE_90)
        small_turned = np.asarray(turned.resize((PHASH_SIDE, PHASH_SIDE), Image.Resampling.LANCZOS))
        wide_turned = np.asarray(turned.resize(DHASH_SIZE, Image.Resampling.LANCZOS))
    stack = np.stack([o.apply(small, small_turned) for o in chosen])
    dct = scipy.fftpack.dct(scipy.fftpack.dct(stack, axis=1), axis=2)[:, :HASH_SIDE, :HASH_SIDE]
    phash_bits = dct > np.median(dct.reshape(len(chosen), -1), axis=1)[:, None, None]
    pairs: list[int] = []
    for k, orientation in enumerate(chosen):
        pixels = orientation.apply(wide, wide_turned)
        pairs += [bits_to_int(phash_bits[k]), bits_to_int(pixels[:, 1:] > pixels[:, :-1])]
    return ImageHashes(*pairs[:4], extra=tuple(pairs[4:]))


def hash_file(source: str | Path | bytes, draft: bool = True, orientations: int = len(ORIENTATIONS)) -> ImageHashes:
    """Hash one image file (a path or its bytes) in its first ``orientations`` orientations."""
    return hash_image(load_for_hashing(source, draft=draft), orientations)
