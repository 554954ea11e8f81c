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
match on the overlay (46-121 inliers, notes/semantic_dedup.md), more than many true copies keep. But
where both images have texture in the region where they overlap under the fitted transform, a true
copy has inliers all over it, while an overlay's inliers sit in the overlay's few cells and the
photo's cells, textured on both sides, hold none. ``coverage`` is the share of those cells with an
inlier; a view with less than ``min_coverage`` proves nothing.

Images with too few keypoints to prove anything, or that did not decode, go to the band with a
one-line reason: never a silent miss, never a merge.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from curation.dedup.keypoints import ImageFeatures, View, tiles

KINDS = ("copy", "band", "distinct")


@dataclass(frozen=True)
class VerifyOptions:
    """The verifier's thresholds (the measured reasons: benchmarks/dedup_thresholds.py, README there)."""

    min_inliers: int = 40  # copies keep a median of 255-900; the 3,000 closest distinct pairs <= 36
    band_inliers: int = 20  # below min_inliers and at least this many: "possible copy", to review
    min_coverage: float = 0.5  # share of the overlap's textured cells holding an inlier
    min_keypoints: int = 40  # fewer on either side cannot reach min_inliers: the band, with the reason
    ratio: float = 0.8  # Lowe's ratio test on the two nearest Hamming neighbours
    reprojection: float = 6.0  # RANSAC inlier distance, working-frame pixels (512-px longer side)
    max_anisotropy: float = 3.0  # the fitted affine's singular value ratio (a 3/4 squeeze is 1.33)
    scale_range: tuple[float, float] = (0.125, 8.0)
    grid: int = 8  # coverage cells per side of the query view's box
    cell_points: int = 2  # keypoints on each side for a cell to count as textured
    tile_gate: int = 0  # tiles are tried only when the plain views kept this many inliers (0: always)


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
    out = np.full(len(query), -1, np.int64)
    if len(query) == 0 or len(candidate) < 2:
        return out
    for pair in cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(query.descriptors, candidate.descriptors, k=2):
        if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance:
            out[pair[0].queryIdx] = pair[0].trainIdx
    return out


def _plausible(transform: np.ndarray, options: VerifyOptions) -> bool:
    """An orientation-preserving affine map of moderate scale and shear (the mirror is its own view)."""
    linear = transform[:, :2]
    if np.linalg.det(linear) <= 0:
        return False
    high, low = np.linalg.svd(linear, compute_uv=False)
    lo, hi = options.scale_range
    return low > 0 and high / low <= options.max_anisotropy and lo <= low and high <= hi


def _cells(points: np.ndarray, box: tuple[float, float, float, float], grid: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    cx = np.clip(((points[:, 0] - x0) * grid / max(x1 - x0, 1e-6)).astype(int), 0, grid - 1)
    cy = np.clip(((points[:, 1] - y0) * grid / max(y1 - y0, 1e-6)).astype(int), 0, grid - 1)
    return cy * grid + cx


def _inside(points: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)


def _apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ transform[:, :2].T + transform[:, 2]


def coverage(
    query: View, candidate: View, transform: np.ndarray, inlier_points: np.ndarray, options: VerifyOptions
) -> float:
    """The share of the overlap's textured cells that hold an inlier.

    Cells split the query view's box; a cell is textured when at least ``cell_points`` query keypoints
    in it map into the candidate view's box and at least as many candidate keypoints map back into it.
    An overlay shared by two different photos leaves the photo's textured cells without inliers."""
    grid = options.grid
    mapped = _inside(_apply(transform, query.points), candidate.box)
    q_counts = np.bincount(_cells(query.points[mapped], query.box, grid), minlength=grid * grid)
    inverse = cv2.invertAffineTransform(transform)
    back = _apply(inverse, candidate.points)
    back = back[_inside(back, query.box)]
    c_counts = np.bincount(_cells(back, query.box, grid), minlength=grid * grid)
    textured = (q_counts >= options.cell_points) & (c_counts >= options.cell_points)
    if not textured.any():
        return 0.0
    hit = np.bincount(_cells(inlier_points, query.box, grid), minlength=grid * grid) > 0
    return float((hit & textured).sum() / textured.sum())


def fit(
    query: View, candidate: View, near: np.ndarray, options: VerifyOptions = DEFAULT_OPTIONS, view: str = "full"
) -> _Fit:
    """The RANSAC affine fit of a query view onto a candidate view, given :func:`nearest` of the
    query's keypoints, with its coverage."""
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
    keep = mask.ravel().astype(bool)
    # Each keypoint counts once, however many matches it is part of.
    inliers = min(len(np.unique(qi[keep])), len(np.unique(ci[keep])))
    return _Fit(inliers, coverage(query, candidate, transform, src[keep], options), view, transform)


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
            result = fit(view, outer, near[index], options, f"{side}:{view.name}")
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


def verify(query: ImageFeatures, candidate: ImageFeatures, options: VerifyOptions = DEFAULT_OPTIONS) -> Verification:
    """Prove or refuse that ``query`` and ``candidate`` show the same photo (see the module docstring)."""
    unprovable = _unprovable(query, candidate, options)
    if unprovable:
        return Verification("band", 0.0, 0, 0.0, "", None, unprovable)
    best = _Fit(0, 0.0, "", None)
    overlay = None
    for stage in (_plain_fits, _tile_fits):
        if stage is _tile_fits and best.inliers < options.tile_gate and overlay is None:
            break
        for result in stage(query, candidate, options):
            if result.inliers >= options.min_inliers:
                if result.coverage >= options.min_coverage:
                    reason = f"{result.inliers} inliers ({result.view}), coverage {result.coverage:.2f}"
                    return _result("copy", result, reason)
                overlay = overlay if overlay and overlay.inliers >= result.inliers else result
            elif result.inliers > best.inliers:
                best = result
    if best.inliers >= options.band_inliers:
        return _result(
            "band", best, f"{best.inliers} inliers ({best.view}): below {options.min_inliers}, possible copy"
        )
    if overlay is not None:
        reason = (
            f"{overlay.inliers} inliers ({overlay.view}) cover {overlay.coverage:.2f} of the textured overlap"
            f" (< {options.min_coverage}): a shared overlay, not the photo"
        )
        return _result("distinct", overlay, reason)
    return _result("distinct", best, f"best fit {best.inliers} inliers ({best.view or 'none'})")
