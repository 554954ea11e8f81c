"""The eval metrics against an independent re-implementation of the authors' formulas.

The reference below follows `eval.py` and `calibration_tools.py` of hendrycks/natural-adv-examples
(commit 0777070): restricted argmax, max softmax over the restricted logits (computed here with
torch in float64), `calib_err(p='2', beta=100)` with its loop stopping before the last bin, and
`aurra` with `np.argsort(confidence)[::-1]`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curation import metrics
from curation.synsets import imagenet_a_reference

TOL = 1e-9


def reference_calib_err(confidence, correct, beta=100, all_bins=False):
    idxs = np.argsort(confidence)
    confidence = confidence[idxs]
    correct = correct[idxs]
    bins = [[i * beta, (i + 1) * beta] for i in range(len(confidence) // beta)]
    bins[-1] = [bins[-1][0], len(confidence)]
    cerr = 0
    total_examples = len(confidence)
    for i in range(len(bins) - (0 if all_bins else 1)):
        bin_confidence = confidence[bins[i][0] : bins[i][1]]
        bin_correct = correct[bins[i][0] : bins[i][1]]
        num_examples_in_bin = len(bin_confidence)
        if num_examples_in_bin > 0:
            difference = np.abs(np.nanmean(bin_confidence) - np.nanmean(bin_correct))
            cerr += num_examples_in_bin / total_examples * np.square(difference)
    return np.sqrt(cerr)


def reference_aurra(confidence, correct):
    conf_ranks = np.argsort(confidence)[::-1]
    rra_curve = np.cumsum(np.asarray(correct)[conf_ranks])
    rra_curve = rra_curve / np.arange(1, len(rra_curve) + 1)
    return np.mean(rra_curve)


def reference_scores(logits, labels, indices):
    output = torch.from_numpy(logits).double()[:, indices]
    target = torch.from_numpy(labels)
    pred = output.max(1)[1]
    correct = pred.eq(target).numpy().astype(np.float64)
    confidence = torch.softmax(output, dim=1).max(1)[0].numpy()
    full = torch.from_numpy(logits).max(1)[1].numpy()
    return {
        "top1_restricted": correct.sum() / len(labels),
        "top1_full": np.mean(full == np.asarray(indices)[labels]),
        "rms_calib_error": reference_calib_err(confidence, correct),
        "rms_calib_error_all_bins": reference_calib_err(confidence, correct, all_bins=True),
        "aurra": reference_aurra(confidence, correct),
    }


def fixed_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Seeded logits over 1000 classes where about half the images favour their true class."""
    rng = np.random.default_rng(seed)
    indices = imagenet_a_reference()[1]
    labels = rng.integers(0, 200, size=n)
    logits = rng.normal(0, 2, size=(n, 1000)).astype(np.float32)
    boost = rng.random(n) < 0.5
    logits[np.arange(n)[boost], np.asarray(indices)[labels[boost]]] += rng.uniform(2, 12, size=boost.sum())
    return logits, labels, indices


@pytest.mark.parametrize("n, seed", [(100, 0), (250, 1), (1037, 2), (7500, 3)])
def test_scores_equal_the_authors_formulas(n, seed):
    logits, labels, indices = fixed_logits(n, seed)
    got = metrics.score(logits, labels, indices).as_dict()
    expected = reference_scores(logits, labels, indices)
    assert got["n_images"] == n
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=TOL), key
    assert 0.2 < got["top1_restricted"] < 0.9 and got["top1_full"] <= got["top1_restricted"]


def test_the_skipped_last_bin_is_the_most_confident_one():
    rng = np.random.default_rng(11)
    confidence = np.concatenate([rng.uniform(0.3, 0.6, 250), rng.uniform(0.98, 1.0, 100)])
    correct = np.concatenate([(rng.random(250) < 0.45), np.zeros(100)]).astype(np.float64)  # confident, all wrong
    quirk = metrics.calib_err(confidence, correct)
    all_bins = metrics.calib_err(confidence, correct, skip_last_bin=False)
    assert quirk == pytest.approx(reference_calib_err(confidence, correct), abs=TOL)
    assert all_bins == pytest.approx(reference_calib_err(confidence, correct, all_bins=True), abs=TOL)
    assert quirk < 0.15 < 0.35 < all_bins  # 3 bins (the last holds 150): the confident wrong ones are not summed


def test_aurra_follows_argsort_tie_order():
    rng = np.random.default_rng(7)
    confidence = rng.integers(1, 5, size=500) / 5.0  # heavy ties
    correct = (rng.random(500) < confidence).astype(np.float64)
    assert metrics.aurra(confidence, correct) == pytest.approx(reference_aurra(confidence, correct), abs=TOL)
    stable = np.argsort(-confidence, kind="stable")
    stable_aurra = np.mean(np.cumsum(correct[stable]) / np.arange(1, 501))
    assert abs(stable_aurra - metrics.aurra(confidence, correct)) > 1e-6  # the tie order is not incidental


def test_calib_err_edge_cases():
    confidence = np.linspace(0.2, 0.9, 60)
    correct = (np.arange(60) % 2).astype(np.float64)
    assert metrics.calib_err(confidence, correct) is None  # the authors' code fails below 100 examples
    single_bin = abs(confidence.mean() - correct.mean())
    assert metrics.calib_err(confidence, correct, skip_last_bin=False) == pytest.approx(single_bin, abs=TOL)
    perfect = np.repeat([0.0, 1.0], 150)
    assert metrics.calib_err(perfect, perfect, skip_last_bin=False) == pytest.approx(0.0, abs=TOL)


def test_softmax_is_stable_for_large_logits():
    probs = metrics.softmax(np.array([[1000.0, 999.0, -1000.0]]))
    assert np.isfinite(probs).all() and probs.sum() == pytest.approx(1.0)
    assert probs[0, 0] == pytest.approx(1 / (1 + np.exp(-1)), abs=TOL)
