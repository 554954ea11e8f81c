"""ORB keypoints of one image, computed once, for the geometric verifier (:mod:`curation.dedup.verify`).

An image's :class:`ImageFeatures` hold its keypoints and binary descriptors in three *views*: the
whole image, its mirror image, and a *fine* view at twice the scale from which :func:`tiles` cuts nine
tiles (four quadrants, the centre and the four halves). A copy can be a mirror image, a tile of a collage, or a heavy
crop of the other image: the verifier matches one image's views against the other's whole image. All
points are in the image's *working frame* (the image resized so its longer side is ``WORK_SIDE``),
the mirror's in the mirrored frame. The object is plain numpy data: picklable for worker processes and
cacheable by image SHA-256 (at most 160 KB per image with the default counts: 4,000 keypoints × 40 B).

Keypoints are spread over the frame (at most ``2 × n / GRID²`` of the strongest per cell of a
``GRID × GRID`` grid): ORB otherwise spends its budget on the strongest corners, which are text and
icons, so that a caption or a phone frame would crowd out the photo whose agreement the verifier
checks.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

# The notes' measurement (notes/semantic_dedup.md §4): 1,000 ORB features on a 512-px longer side gave
# copies a median of 255-900 inliers and the 3,000 closest distinct pairs at most 36.
WORK_SIDE = 512
FULL_FEATURES = 1000
# The tiles are cut from one *fine* view, detected at twice the working scale with twice the keypoints
# (spread over a grid): a 2×2 collage's tile then has about as many pixels and keypoints (500) as
# the photo in its own working frame, and one detection serves all nine tiles.
TILE_SCALE = 2.0
FINE_FEATURES = 2000
GRID = 8

# (name, x0, y0, x1, y1) in fractions of the frame.
TILES: tuple[tuple[str, float, float, float, float], ...] = (
    ("top-left", 0.0, 0.0, 0.5, 0.5),
    ("top-right", 0.5, 0.0, 1.0, 0.5),
    ("bottom-left", 0.0, 0.5, 0.5, 1.0),
    ("bottom-right", 0.5, 0.5, 1.0, 1.0),
    ("centre", 0.25, 0.25, 0.75, 0.75),
    ("left", 0.0, 0.0, 0.5, 1.0),
    ("right", 0.5, 0.0, 1.0, 1.0),
    ("top", 0.0, 0.0, 1.0, 0.5),
    ("bottom", 0.0, 0.5, 1.0, 1.0),
)


@dataclass(frozen=True)
class View:
    """Keypoints of one view: ``points`` (n, 2) float32 in the working frame, ``descriptors`` (n, 32)
    uint8, ``box`` the region of the frame the view covers, in pixels (x0, y0, x1, y1), and for the
    whole-image views ``flat``: the share of flat pixels in each cell of a GRID × GRID grid over it."""

    name: str
    box: tuple[float, float, float, float]
    points: np.ndarray
    descriptors: np.ndarray
    flat: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True)
class ImageFeatures:
    """What the verifier needs of one image. ``error`` is a one-line reason when it did not decode."""

    size: tuple[int, int]  # the working frame, (width, height)
    full: View | None = None
    mirror: View | None = None
    fine: View | None = None
    error: str | None = None

    @property
    def keypoints(self) -> int:
        return len(self.full) if self.full is not None else 0

    @property
    def nbytes(self) -> int:
        views = [v for v in (self.full, self.mirror, self.fine) if v is not None]
        return sum(v.points.nbytes + v.descriptors.nbytes for v in views)


def _orb(features: int) -> cv2.ORB:
    # Four times the candidates, so the grid can choose; fastThreshold 12 (cv2 default 20) finds
    # corners in soft photos (a low-contrast jellyfish had 3 keypoints at 20).
    return cv2.ORB_create(nfeatures=4 * features, fastThreshold=12)


def _spread(keypoints: list, width: int, height: int, features: int) -> list:
    """The strongest keypoints with at most ``2 × features / GRID²`` per grid cell, ``features`` in all
    (in numpy: the loop over up to 16,000 candidates took 40 % of an extraction)."""
    if not keypoints:
        return []
    cap = max(2, 2 * features // (GRID * GRID))
    points = cv2.KeyPoint_convert(keypoints).astype(np.float64)
    response = np.array([kp.response for kp in keypoints])
    order = np.argsort(-response, kind="stable")
    col = np.minimum(GRID - 1, (points[order, 0] * GRID / width).astype(np.int64))
    row = np.minimum(GRID - 1, (points[order, 1] * GRID / height).astype(np.int64))
    cell = row * GRID + col
    by_cell = np.argsort(cell, kind="stable")  # each cell's candidates, strongest first
    starts = np.searchsorted(cell[by_cell], cell[by_cell], side="left")
    rank = np.empty(len(order), np.int64)
    rank[by_cell] = np.arange(len(order)) - starts  # the candidate's rank within its cell
    kept = order[rank < cap][:features]
    return [keypoints[i] for i in kept.tolist()]


def detect(grey: np.ndarray, features: int) -> tuple[np.ndarray, np.ndarray]:
    """Spread ORB keypoints of a greyscale uint8 image: points (n, 2) float32, descriptors (n, 32) uint8."""
    orb = _orb(features)
    height, width = grey.shape
    keypoints = _spread(orb.detect(grey, None), width, height, features)
    keypoints, descriptors = orb.compute(grey, keypoints)
    if descriptors is None or not keypoints:
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    return np.array([kp.pt for kp in keypoints], np.float32), descriptors


def flat_cells(grey: np.ndarray) -> np.ndarray:
    """For each GRID × GRID cell, the share of its pixels within one grey level of its two most common
    levels. Drawn graphics - app and window chrome, text in one colour on a plain ground - are mostly
    two levels; photographs almost never are where they have keypoints."""
    height, width = grey.shape
    rows = np.minimum(np.arange(height) * GRID // max(height, 1), GRID - 1)
    cols = np.minimum(np.arange(width) * GRID // max(width, 1), GRID - 1)
    cell = (rows[:, None] * GRID + cols[None, :]).ravel()
    hist = np.bincount(cell * 256 + grey.ravel(), minlength=GRID * GRID * 256).reshape(GRID * GRID, 256)
    near = hist.copy()
    near[:, 1:] += hist[:, :-1]
    near[:, :-1] += hist[:, 1:]
    first = near.argmax(axis=1)
    top = near[np.arange(len(near)), first]
    levels = np.arange(256)[None, :]
    second = np.where(np.abs(levels - first[:, None]) <= 2, 0, near).max(axis=1)
    share = (top + second) / np.maximum(hist.sum(axis=1), 1)
    return share.reshape(GRID, GRID).astype(np.float32)


def _view(
    name: str, grey: np.ndarray, box: tuple[float, float, float, float], scale: float, features: int, flat: bool = False
) -> View:
    points, descriptors = detect(grey, features)
    # Back to the working frame: the view was cut at ``box`` and resized by ``scale``.
    points = points / np.float32(scale) + np.array(box[:2], np.float32)
    return View(name, box, points.astype(np.float32), descriptors, flat_cells(grey) if flat else None)


def load_grey(source: str | Path | bytes, side: int) -> Image.Image:
    """The image as greyscale, upright (EXIF), transparent pixels white, JPEG-decoded near ``side``."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        if img.format == "JPEG":
            img.draft("L", (side, side))
        img = ImageOps.exif_transpose(img) if img.format in ("JPEG", "TIFF", "WEBP") else img
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return img.convert("L")


def _resized(img: Image.Image, side: float) -> np.ndarray:
    scale = side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return np.asarray(img.resize(size, Image.Resampling.BILINEAR))


def features_of_image(img: Image.Image) -> ImageFeatures:
    """The views of a decoded (greyscale) image."""
    work = _resized(img, WORK_SIDE)
    height, width = work.shape
    frame = (0.0, 0.0, float(width), float(height))
    full = _view("full", work, frame, 1.0, FULL_FEATURES, flat=True)
    mirror = _view("mirror", np.ascontiguousarray(work[:, ::-1]), frame, 1.0, FULL_FEATURES, flat=True)
    fine = _resized(img, WORK_SIDE * TILE_SCALE)
    return ImageFeatures(
        (width, height), full, mirror, _view("fine", fine, frame, fine.shape[1] / width, FINE_FEATURES)
    )


def tiles(features: ImageFeatures) -> list[tuple[View, np.ndarray]]:
    """The tile views (quadrants, centre, halves) cut from the fine view, each with the indices of its
    keypoints in the fine view."""
    fine = features.fine
    if fine is None:
        return []
    width, height = features.size
    out = []
    for name, x0, y0, x1, y1 in TILES:
        box = (x0 * width, y0 * height, x1 * width, y1 * height)
        pts = fine.points
        index = np.flatnonzero(
            (pts[:, 0] >= box[0]) & (pts[:, 0] < box[2]) & (pts[:, 1] >= box[1]) & (pts[:, 1] < box[3])
        )
        out.append((View(name, box, pts[index], fine.descriptors[index]), index))
    return out


def extract(source: str | Path | bytes) -> ImageFeatures:
    """The features of an image file (path or bytes); a file that will not decode gets ``error``."""
    try:
        img = load_grey(source, round(WORK_SIDE * TILE_SCALE))
        img.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        first = (str(exc).splitlines() or [""])[0]
        return ImageFeatures((0, 0), error=f"did not decode for ORB: {type(exc).__name__}: {first}"[:200])
    return features_of_image(img)
