"""ImageNet-A and ImageNet-O metrics, computed exactly as the authors' ``eval.py``,
``eval_many_models.py`` and ``calibration_tools.py``.

Pure numpy. The canonical accuracy restricts the logits to the dataset's classes; confidence is
the maximum softmax over those restricted logits. Out-of-distribution detection scores each image
by -MSP; the out-of-distribution photos are the positives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CALIBRATION_BIN_SIZE = 100
RECALL_LEVEL = 0.95  # the authors' recall_level_default


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


# --------------------------------------------------------------------------- out-of-distribution detection


@dataclass
class OodScores:
    """Everything `curation eval --ood` reports: OOD photos are the positives, score = -MSP."""

    n_ood: int
    n_in_dist: int
    aupr: float
    auroc: float
    fpr95: float  # the authors': the threshold whose recall is closest to 95 %
    fpr95_first: float  # the first threshold (from the most anomalous down) reaching 95 % recall
    chance_aupr: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass
class DetectionCurve:
    """Counts at each distinct score, from the highest (most anomalous) down, as sklearn's
    ``_binary_clf_curve``: positives and negatives scoring at or above it."""

    true_positives: np.ndarray
    false_positives: np.ndarray

    @property
    def n_positive(self) -> float:
        return float(self.true_positives[-1])

    @property
    def n_negative(self) -> float:
        return float(self.false_positives[-1])

    @property
    def recall(self) -> np.ndarray:
        return self.true_positives / self.true_positives[-1]


def detection_curve(positive_scores: np.ndarray, negative_scores: np.ndarray) -> DetectionCurve:
    """The curve of ``positive_scores`` (label 1) against ``negative_scores`` (label 0)."""
    positive = np.asarray(positive_scores, dtype=np.float64).ravel()
    negative = np.asarray(negative_scores, dtype=np.float64).ravel()
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("detection metrics need at least one positive and one negative")
    scores = np.concatenate([positive, negative])
    if not np.isfinite(scores).all():
        raise ValueError("detection scores must be finite")
    labels = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, labels = scores[order], labels[order]
    threshold_idxs = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(labels)[threshold_idxs]
    return DetectionCurve(true_positives, 1 + threshold_idxs - true_positives)


def auroc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids between distinct scores: a tie counts one half), as
    ``sklearn.metrics.roc_auc_score``."""
    curve = detection_curve(positive_scores, negative_scores)
    tps = np.r_[0.0, curve.true_positives]
    fps = np.r_[0.0, curve.false_positives]
    area = np.sum(np.diff(fps) * (tps[1:] + tps[:-1])) / 2
    return float(area / (curve.n_positive * curve.n_negative))


def aupr(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """Average precision, sum of (recall step) x precision over distinct scores, as
    ``sklearn.metrics.average_precision_score`` (no interpolation)."""
    curve = detection_curve(positive_scores, negative_scores)
    precision = curve.true_positives / (curve.true_positives + curve.false_positives)
    return float(np.sum(np.diff(np.r_[0.0, curve.recall]) * precision))


def fpr_at_recall(
    positive_scores: np.ndarray, negative_scores: np.ndarray, recall_level: float = RECALL_LEVEL, closest: bool = True
) -> float:
    """False positive rate at ``recall_level`` of the positives.

    ``closest`` (the authors' ``fpr_and_fdr_at_recall``): among the thresholds down to the first
    that reaches full recall, the one whose recall is closest to the level; on a tie the lowest
    threshold wins (their ``np.argmin`` runs over the reversed curve). Their curve also ends with a
    sentinel point (recall 1, 0 false positives) that never wins: the lowest threshold before it
    already has recall exactly 1. Otherwise: the first threshold, from the highest down, whose
    recall reaches the level.
    """
    curve = detection_curve(positive_scores, negative_scores)
    recall = curve.recall
    if closest:
        last = int(curve.true_positives.searchsorted(curve.true_positives[-1]))
        reversed_recall = recall[last::-1]
        cutoff = last - int(np.argmin(np.abs(reversed_recall - recall_level)))
    else:
        cutoff = int(np.argmax(recall >= recall_level))
    return float(curve.false_positives[cutoff] / curve.n_negative)


def chance_aupr(n_ood: int, n_in_dist: int) -> float:
    """AUPR of a detector that ranks at random: the share of positives."""
    return n_ood / (n_ood + n_in_dist)


def ood_scores(ood: np.ndarray, in_dist: np.ndarray) -> OodScores:
    """All detection metrics from the anomaly scores (-MSP) of the OOD and in-distribution photos."""
    n_ood, n_in_dist = len(ood), len(in_dist)
    return OodScores(
        n_ood=n_ood,
        n_in_dist=n_in_dist,
        aupr=aupr(ood, in_dist),
        auroc=auroc(ood, in_dist),
        fpr95=fpr_at_recall(ood, in_dist),
        fpr95_first=fpr_at_recall(ood, in_dist, closest=False),
        chance_aupr=chance_aupr(n_ood, n_in_dist),
    )


def anomaly_scores(logits: np.ndarray, class_indices: list[int] | np.ndarray) -> np.ndarray:
    """-MSP: minus the largest softmax probability over the logits of ``class_indices``."""
    return -softmax(np.asarray(logits)[:, np.asarray(class_indices)]).max(axis=1)
