"""ImageNet-A metrics, computed exactly as the authors' ``eval.py`` and ``calibration_tools.py``.

Pure numpy. The canonical accuracy restricts the logits to the dataset's classes; confidence is
the maximum softmax over those restricted logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CALIBRATION_BIN_SIZE = 100


@dataclass
class Scores:
    """Everything `curation eval` reports for one model on one dataset."""

    n_images: int
    top1_restricted: float
    top1_full: float
    rms_calib_error: float | None  # the authors' value: last (most confident) bin skipped
    rms_calib_error_all_bins: float
    aurra: float

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, shifted by the row maximum for stability."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def calib_err(
    confidence: np.ndarray, correct: np.ndarray, beta: int = CALIBRATION_BIN_SIZE, skip_last_bin: bool = True
) -> float | None:
    """RMS calibration error with adaptive bins of ``beta`` examples sorted by confidence.

    Bins are consecutive slices of ``beta`` after an ascending ``np.argsort``; the last bin takes
    the remainder. With ``skip_last_bin`` the most confident bin is left out of the sum while every
    example still counts in the denominator, as in the authors' code (their loop stops at
    ``len(bins) - 1``). The authors' code fails below ``beta`` examples; then the quirk value is
    None and the all-bins value uses a single bin.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    total = len(confidence)
    if total == 0:
        raise ValueError("calibration error of zero examples")
    if total < beta and skip_last_bin:
        return None
    order = np.argsort(confidence)
    confidence, correct = confidence[order], correct[order]
    n_bins = max(1, total // beta)
    bins = [[i * beta, (i + 1) * beta] for i in range(n_bins)]
    bins[-1][1] = total
    if skip_last_bin:
        bins = bins[:-1]
    squared = 0.0
    for start, end in bins:
        difference = abs(np.nanmean(confidence[start:end]) - np.nanmean(correct[start:end]))
        squared += (end - start) / total * difference**2
    return float(np.sqrt(squared))


def aurra(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the response-rate accuracy curve; ties follow ``np.argsort`` (not stable), as the authors'."""
    ranks = np.argsort(np.asarray(confidence))[::-1]
    hits = np.cumsum(np.asarray(correct)[ranks])
    return float(np.mean(hits / np.arange(1, len(hits) + 1)))


@dataclass
class PerImage:
    """Per-image outputs: restricted prediction (0..K-1), its confidence, whether it is right, and
    the argmax over the model's whole label space."""

    prediction: np.ndarray
    confidence: np.ndarray
    correct: np.ndarray
    full_prediction: np.ndarray


def per_image(logits: np.ndarray, labels: np.ndarray, class_indices: list[int] | np.ndarray) -> PerImage:
    """Predictions from full-label-space logits ``[N, C]``, labels ``0..K-1`` and the output
    index of each of the K dataset classes."""
    logits = np.asarray(logits)
    restricted = logits[:, np.asarray(class_indices)]
    prediction = restricted.argmax(axis=1)
    return PerImage(
        prediction=prediction,
        confidence=softmax(restricted).max(axis=1),
        correct=(prediction == np.asarray(labels)).astype(np.float64),
        full_prediction=logits.argmax(axis=1),
    )


def score(logits: np.ndarray, labels: np.ndarray, class_indices: list[int] | np.ndarray) -> Scores:
    """All metrics from full-label-space logits ``[N, C]``, labels ``0..K-1`` and class indices."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("no images to score")
    outputs = per_image(logits, labels, class_indices)
    confidence, correct = outputs.confidence, outputs.correct
    return Scores(
        n_images=len(labels),
        top1_restricted=float(correct.mean()),
        top1_full=float((outputs.full_prediction == np.asarray(class_indices)[labels]).mean()),
        rms_calib_error=calib_err(confidence, correct),
        rms_calib_error_all_bins=float(calib_err(confidence, correct, skip_last_bin=False)),
        aurra=aurra(confidence, correct),
    )
