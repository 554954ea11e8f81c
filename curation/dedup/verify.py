"""Geometric verification: is one image a copy of another? ORB matches + a RANSAC affine fit.

The embedding matcher proposes neighbours; each proposal is proved or refused here::

    from curation.dedup.keypoints import extract
    from curation.dedup.verify import verify
    result = verify(extract(query_path), extract(candidate_path))
    result.kind   # "copy" (a link), "band" (review: "possible copy of ..."), "distinct"

Views tried, in order, until one proves a copy: the query against the candidate, the query's mirror
against the candidate, each tile of the query against the candidate (the query is a collage or a wider
shot holding the candidate), the query against each tile of the candidate (the other way round, or a
heavy crop). A view proves a copy when its affine fit keeps ``min_inliers`` matches **and** those
inliers agree with the photo, not only with an overlay: :func:`coverage`.

Prove the photo, not the overlay. Different photos carrying the same sticker, caption or phone frame
match on the overlay (46-121 inliers, notes/semantic_dedup.md; 50-423 here), more than many true copies
keep. Two guards: (1) cells drawn in mostly two grey levels (app and window chrome, text on a plain
ground: :func:`curation.dedup.keypoints.flat_cells`) give no evidence, which leaves two screenshots of
different posts in one app frame at most 6 inliers; (2) where both images have texture in the region
where they overlap under the fitted transform, a true copy has agreeing matches all over it, while an
overlay's sit in the overlay's few cells and the photo's cells, textured on both sides, hold none.
:func:`coverage` is the share of those cells with an agreeing match; a copy needs ``min_coverage``,
the review band ``band_coverage``. A caption covering more of a photo than the photo shows defeats (2):
benchmarks/README.md names it.

Images with too few keypoints to prove anything, or that did not decode, go to the band with a
one-line reason: never a silent miss, never a merge.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from curation.dedup.hamming_knn import two_nearest
from curation.dedup.keypoints import GRID, ImageFeatures, View, tiles

KINDS = ("copy", "band", "distinct")


@dataclass(frozen=True)
class VerifyOptions:
    """The verifier's thresholds (the measured reasons: benchmarks/dedup_thresholds.py, README there)."""

    min_inliers: int = 40  # copies keep a median of 255-900; the 3,000 closest distinct pairs <= 36
    band_inliers: int = 20  # below min_inliers and at least this many: "possible copy", to review
    # Share of the overlap's textured photo cells holding an agreeing match. Measured on 24 photos x 28
    # edits: copies have a median of 0.79-1.0 per edit (lowest p10 0.63, caption); different photos
    # sharing a sticker or a caption reach 0.47 / 0.48 (benchmarks/README.md, dedup thresholds).
    min_coverage: float = 0.6
    band_coverage: float = 0.5  # from here to min_coverage (or 20-39 inliers): the review band
    min_keypoints: int = 40  # fewer on either side cannot reach min_inliers: the band, with the reason
    ratio: float = 0.8  # Lowe's ratio test on the two nearest Hamming neighbours
    reprojection: float = 6.0  # RANSAC inlier distance, working-frame pixels (512-px longer side)
    max_anisotropy: float = 3.0  # the fitted affine's singular value ratio (a 3/4 squeeze is 1.33)
    scale_range: tuple[float, float] = (0.125, 8.0)
    agree: float = 18.0  # a match within this many pixels of the fit counts for coverage
    # A cell with this share of its pixels at its two commonest grey levels is drawn (an overlay), not
    # photo: no evidence. Phone-frame UI cells 0.70-1.0; 3.3 % of photo cells with keypoints reach it.
    graphic_flat: float = 0.7
    cell_points: int = 2  # keypoints on each side for a cell to count as textured


DEFAULT_OPTIONS = VerifyOptions()


@dataclass(frozen=True)
class Verification:
    """One proposal's verdict. ``score`` is the winning view's inlier count (0 when none was fitted),
    ``transform`` its 2×3 affine from the query's working frame (the mirrored frame for the mirror
    view) to the candidate's, ``view`` which views matched ("full", "mirror", "tile:centre",
    "candidate-tile:top-left", ...)."""

    kind: str
    score: float
    inliers: int
    coverage: float
    view: str
    transform: tuple[tuple[float, float, float], tuple[float, float, float]] | None
    reason: str

    @property
    def is_copy(self) -> bool:
        return self.kind == "copy"


@dataclass(frozen=True)
class _Fit:
    inliers: int
    coverage: float
    view: str
    transform: np.ndarray | None


def nearest(query: View, candidate: View, ratio: float) -> np.ndarray:
    """For each query keypoint, its nearest candidate keypoint by Hamming distance when it passes the
    ratio test against the second nearest, else -1."""
    if len(query) == 0 or len(candidate) < 2:
        return np.full(len(query), -1, np.int64)
    best, dist = two_nearest(query.descriptors, candidate.descriptors)
    return np.where(dist[:, 0] < ratio * dist[:, 1], best, -1)


def _plausible(transform: np.ndarray, options: VerifyOptions) -> bool:
    """An orientation-preserving affine map of moderate scale and shear (the mirror is its own view)."""
    linear = transform[:, :2]
    if np.linalg.det(linear) <= 0:
        return False
    high, low = np.linalg.svd(linear, compute_uv=False)
    lo, hi = options.scale_range
    return low > 0 and high / low <= options.max_anisotropy and lo <= low and high <= hi


def _cells(points: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, x1, y1 = box
    cx = np.clip(((points[:, 0] - x0) * GRID / max(x1 - x0, 1e-6)).astype(int), 0, GRID - 1)
    cy = np.clip(((points[:, 1] - y0) * GRID / max(y1 - y0, 1e-6)).astype(int), 0, GRID - 1)
    return cy * GRID + cx


def _inside(points: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)


def _apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ transform[:, :2].T + transform[:, 2]


def graphic_cells(view: View, options: VerifyOptions) -> np.ndarray:
    """Cells (GRID²,) of a whole-image view drawn flat: overlays, not photo."""
    if view.flat is None:
        return np.zeros(GRID * GRID, bool)
    return view.flat.ravel() >= options.graphic_flat


def coverage(
    query: View, candidate: View, transform: np.ndarray, agreeing: np.ndarray, options: VerifyOptions
) -> float:
    """The share of the overlap's textured photo cells that hold an agreeing match.

    Cells split the query view's box (GRID × GRID); a cell is textured when at least ``cell_points``
    query keypoints in it map into the candidate view's box and at least as many candidate keypoints
    map back into it, and photo when it is not :func:`graphic_cells`. ``agreeing`` are the query
    points of the matches the transform explains within ``agree`` pixels. An overlay shared by two
    different photos leaves the photo's textured cells without agreeing matches."""
    cells = GRID * GRID
    mapped = _inside(_apply(transform, query.points), candidate.box)
    q_counts = np.bincount(_cells(query.points[mapped], query.box), minlength=cells)
    back = _apply(cv2.invertAffineTransform(transform), candidate.points)
    c_counts = np.bincount(_cells(back[_inside(back, query.box)], query.box), minlength=cells)
    textured = (q_counts >= options.cell_points) & (c_counts >= options.cell_points) & ~graphic_cells(query, options)
    if not textured.any():
        return 0.0
    hit = np.bincount(_cells(agreeing, query.box), minlength=cells) > 0
    return float((hit & textured).sum() / textured.sum())


def fit(
    query: View,
    candidate: View,
    near: np.ndarray,
    options: VerifyOptions = DEFAULT_OPTIONS,
    view: str = "full",
    frames: tuple[View, View] | None = None,
) -> _Fit:
    """The RANSAC affine fit of a query view onto a candidate view, given :func:`nearest` of the
    query's keypoints, with its coverage over ``frames``: the whole-image views of both sides (by
    default the two views themselves). A tile's coverage is judged on the whole image, else a tile
    filled by a sticker would agree with another stickered photo's tile."""
    qi = np.flatnonzero(near >= 0)
    ci = near[qi]
    if len(qi) < max(3, options.band_inliers):
        return _Fit(0, 0.0, view, None)
    src, dst = query.points[qi], candidate.points[ci]
    transform, mask = cv2.estimateAffine2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=options.reprojection, maxIters=2000, confidence=0.995
    )
    if transform is None or mask is None or not _plausible(transform, options):
        return _Fit(0, 0.0, view, None)
    whole_query, whole_candidate = frames or (query, candidate)
    # Evidence from the photo only: inliers on drawn cells (an app frame, a sticker) do not count.
    keep = mask.ravel().astype(bool)
    keep &= ~graphic_cells(whole_query, options)[_cells(src, whole_query.box)]
    keep &= ~graphic_cells(whole_candidate, options)[_cells(dst, whole_candidate.box)]
    # Each keypoint counts once, however many matches it is part of.
    inliers = min(len(np.unique(qi[keep])), len(np.unique(ci[keep])))
    # Judged in both frames, the better one: where one image is a small part of the other (a framed or
    # padded copy), the small one's cells straddle its border; the large one's are whole.
    # Coverage counts matches within ``agree`` pixels: an affine fit of a tilted (perspective) copy
    # leaves its far side a few pixels off, yet it is the same photo there.
    near_fit = np.linalg.norm(_apply(transform, src) - dst, axis=1) <= options.agree
    inverse = cv2.invertAffineTransform(transform)
    agreement = max(
        coverage(whole_query, whole_candidate, transform, src[near_fit], options),
        coverage(whole_candidate, whole_query, inverse, dst[near_fit], options),
    )
    return _Fit(inliers, agreement, view, transform)


def _inverted(result: _Fit) -> _Fit:
    if result.transform is None:
        return result
    return _Fit(result.inliers, result.coverage, result.view, cv2.invertAffineTransform(result.transform))


def _plain_fits(query: ImageFeatures, candidate: ImageFeatures, options: VerifyOptions) -> Iterator[_Fit]:
    """The query and its mirror against the candidate."""
    for view in (query.full, query.mirror):
        assert view is not None and candidate.full is not None
        yield fit(view, candidate.full, nearest(view, candidate.full, options.ratio), options, view.name)


def _tile_fits(query: ImageFeatures, candidate: ImageFeatures, options: VerifyOptions) -> Iterator[_Fit]:
    """Each tile of the query against the candidate, then the query against each tile of the candidate
    (that fit is found candidate-tile to query and inverted); one nearest-neighbour search per side."""
    assert query.full is not None and candidate.full is not None
    for side, inside, outer in (("tile", query, candidate.full), ("candidate-tile", candidate, query.full)):
        assert inside.fine is not None and outer is not None
        near = nearest(inside.fine, outer, options.ratio)
        for view, index in tiles(inside):
            assert inside.full is not None
            result = fit(view, outer, near[index], options, f"{side}:{view.name}", (inside.full, outer))
            yield result if side == "tile" else _inverted(result)


def _unprovable(query: ImageFeatures, candidate: ImageFeatures, options: VerifyOptions) -> str | None:
    for side, feats in (("query", query), ("candidate", candidate)):
        if feats.error:
            return f"{side} {feats.error}"
        if feats.keypoints < options.min_keypoints:
            return f"{side} has {feats.keypoints} ORB keypoints (< {options.min_keypoints}): too few to prove or refuse a copy"
    return None


def _result(kind: str, best: _Fit, reason: str) -> Verification:
    transform = None if best.transform is None else tuple(tuple(float(v) for v in row) for row in best.transform)
    return Verification(kind, float(best.inliers), best.inliers, round(best.coverage, 3), best.view, transform, reason)


def _band_worthy(result: _Fit, options: VerifyOptions) -> bool:
    """Short of a copy, yet agreeing enough with the photo to show a reviewer."""
    return result.inliers >= options.band_inliers and result.coverage >= options.band_coverage


def _better(a: _Fit | None, b: _Fit) -> _Fit:
    return b if a is None or (b.inliers, b.coverage) > (a.inliers, a.coverage) else a


def verify(query: ImageFeatures, candidate: ImageFeatures, options: VerifyOptions = DEFAULT_OPTIONS) -> Verification:
    """Prove or refuse that ``query`` and ``candidate`` show the same photo (see the module docstring)."""
    unprovable = _unprovable(query, candidate, options)
    if unprovable:
        return Verification("band", 0.0, 0, 0.0, "", None, unprovable)
    band: _Fit | None = None
    best = _Fit(0, 0.0, "", None)
    for stage in (_plain_fits, _tile_fits):
        for result in stage(query, candidate, options):
            if result.inliers >= options.min_inliers and result.coverage >= options.min_coverage:
                reason = f"{result.inliers} inliers ({result.view}), coverage {result.coverage:.2f}"
                return _result("copy", result, reason)
            if _band_worthy(result, options):
                band = _better(band, result)
            best = _better(best, result)
    if band is not None:
        reason = (
            f"{band.inliers} inliers ({band.view}), coverage {band.coverage:.2f}: below the proof"
            f" ({options.min_inliers} inliers, coverage {options.min_coverage}), possible copy"
        )
        return _result("band", band, reason)
    if best.inliers >= options.min_inliers:
        reason = (
            f"{best.inliers} inliers ({best.view}) cover {best.coverage:.2f} of the textured overlap"
            f" (< {options.band_coverage}): a shared overlay, not the photo"
        )
        return _result("distinct", best, reason)
    return _result("distinct", best, f"best fit {best.inliers} inliers ({best.view or 'none'})")
