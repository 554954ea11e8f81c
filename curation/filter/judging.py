"""From logits to a prediction row: the restricted argmax, its confidence and margin, the probability and
rank of the pair's own class, and the MSP re-check band."""

from __future__ import annotations

import json
from typing import Any

# Inexact images (JPEG draft, bf16) whose log-odds(MSP) over the label space lies within this band of
# log-odds(T) are re-run exactly, so keep-by-MSP decisions equal fp32's. Measured by
# benchmarks/msp_errors.py on the 1,500 shared photos (EfficientNet-Lite0, draft + bf16 against full
# decode + fp32, 200 ImageNet-O targets): max |delta log-odds(MSP)| 0.370 (99th percentile 0.172; the
# issue measured 0.31), so 0.75 is 2.0x the largest error. At T = 0.3/0.5/0.7/0.9 the fast path alone
# flips 4/10/4/1 decisions, all inside the band; it re-checks 21/15/9/5 % of these photos.
MSP_RECHECK_BAND = 0.75


def msp_log_odds(logits: Any, columns: list[int]) -> Any:
    """log(MSP / (1 - MSP)) of each row over ``columns``, computed stably: the largest logit minus the
    log-sum-exp of the others (NaN rows stay NaN)."""
    import numpy as np

    sub = np.asarray(logits, dtype=np.float64)[:, columns]
    top = np.sort(sub, axis=1)
    best, others = top[:, -1], top[:, :-1]
    peak = others.max(axis=1, keepdims=True)
    return best - (peak[:, 0] + np.log(np.exp(others - peak).sum(axis=1)))


def log_odds(probability: float) -> float:
    """log(p / (1 - p)) of a probability strictly between 0 and 1."""
    import math

    return math.log(probability / (1 - probability))


def msp_near_threshold(columns: list[int], threshold: float) -> Any:
    """A re-check predicate for :func:`curation.inference.iter_logits`: rows whose log-odds(MSP) over
    ``columns`` is within :data:`MSP_RECHECK_BAND` of log-odds(``threshold``)."""
    import numpy as np

    target = log_odds(threshold)
    return lambda logits: np.abs(np.nan_to_num(msp_log_odds(logits, columns), nan=np.inf) - target) < MSP_RECHECK_BAND


def judge(logits: Any, label_wnids: list[str], columns: list[int] | None) -> list[dict[str, Any]]:
    """Prediction fields of each row of ``logits`` [N, classes]: top-5 over the full label space, the
    argmax over ``columns`` (all when None), its softmax confidence over those columns and its
    probability margin to the runner-up. Vectorised: a GPU chunk of 10^4 rows takes milliseconds."""
    import numpy as np

    def softmax(x: Any) -> Any:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    full = np.asarray(logits, dtype=np.float64)
    full_probs = softmax(full)
    top5 = np.argsort(-full_probs, axis=1, kind="stable")[:, :5]
    cols = np.arange(full.shape[1]) if columns is None else np.asarray(columns)
    sub = full[:, cols]
    probs = softmax(sub)
    order = np.argsort(-sub, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(full))
    best = cols[order[:, 0]]
    confidence = probs[rows, order[:, 0]]
    runner_up = probs[rows, order[:, 1]] if len(cols) > 1 else np.zeros(len(full))
    top5_probs = np.round(np.take_along_axis(full_probs, top5, axis=1), 6)
    return [
        {
            "top5": json.dumps([[int(i), float(p)] for i, p in zip(top5[r], top5_probs[r], strict=True)]),
            "pred_index": int(best[r]),
            "pred_wnid": label_wnids[best[r]],
            "confidence": float(confidence[r]),
            "margin": float(confidence[r] - runner_up[r]),
        }
        for r in rows
    ]


def own_class_scores(logits: Any, columns: list[int] | None, rows: list[int], targets: list[int]) -> list[tuple]:
    """(probability, rank) of each pair's own class under the run's rule: the softmax over ``columns``
    (all when None) of logits row ``rows[k]``, at label index ``targets[k]``; rank 1 is the argmax.
    A class outside ``columns`` (an ImageNet-O source class) gives (None, None): no probability exists."""
    import numpy as np

    full = np.asarray(logits, dtype=np.float64)
    cols = np.arange(full.shape[1]) if columns is None else np.asarray(columns)
    position = {int(c): k for k, c in enumerate(cols)}
    sub = full[:, cols]
    e = np.exp(sub - sub.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    scores: list[tuple] = []
    for row, target in zip(rows, targets, strict=True):
        k = position.get(target)
        if k is None:
            scores.append((None, None))
            continue
        rank = 1 + int((sub[row] > sub[row, k]).sum())
        scores.append((float(probs[row, k]), rank))
    return scores
