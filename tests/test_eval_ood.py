"""`curation eval --ood`: the ImageNet-O detection metrics against the authors' published values and
a brute-force computation, and the real CLI with EfficientNet-Lite0 on real ImageNet val photos
(those of the 200 ImageNet-O targets in-distribution, those of other classes as the OOD stand-in)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, VAL
from test_eval import independent_logits

from curation import metrics
from curation.evaluate import IMAGENET_O_RECIPE, imagenet_o_targets
from curation.synsets import RECIPE_COLUMNS, describe_synset, imagenet_1k_wnids

TOL = 1e-9
SHARED_TARGETS = SHARED / "notes" / "imagenet_o_wnids.txt"
N_OOD = 100  # val photos of non-target classes as the OOD set (the ID set: one val photo per target class held)


def val_photos() -> list[dict[str, str]]:
    with open(VAL / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- metrics


def brute_force(pos: np.ndarray, neg: np.ndarray, recall_level: float = 0.95) -> dict[str, float]:
    """The definitions, pair by pair and threshold by threshold (no sorting tricks):
    AUROC = P(pos > neg) + P(pos == neg) / 2; AP = mean over positives of the precision at that
    positive's score; FPR at the threshold (a score, from the lowest positive up) whose recall is
    closest to the level, the lowest such threshold on a tie, or the highest reaching it."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    auroc = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    everything = np.concatenate([pos, neg])
    ap = np.mean([np.sum(pos >= p) / np.sum(everything >= p) for p in pos])
    thresholds = sorted(t for t in set(everything.tolist()) if t >= pos.min())  # ascending
    recall = [np.sum(pos >= t) / len(pos) for t in thresholds]
    fpr = [np.sum(neg >= t) / len(neg) for t in thresholds]
    closest = min(range(len(thresholds)), key=lambda k: abs(recall[k] - recall_level))  # first = lowest
    first = max(k for k in range(len(thresholds)) if recall[k] >= recall_level)
    return {"auroc": auroc, "aupr": ap, "fpr95": fpr[closest], "fpr95_first": fpr[first]}


def test_metrics_equal_the_authors_published_values():
    """Values that `calibration_tools.get_measures` (scikit-learn) prints for these inputs."""
    pos = np.array([-0.1, -0.2, -0.2, -0.7])
    neg = np.array([-0.15, -0.2, -0.9, -0.8, -0.8, -0.95])
    got = metrics.ood_scores(pos, neg)
    assert (got.auroc, got.aupr, got.fpr95) == pytest.approx((0.7916666667, 0.7166666667, 0.3333333333), abs=TOL)
    assert (got.n_ood, got.n_in_dist, got.chance_aupr) == (4, 6, 0.4)

    # Printed to 8 and 10 digits: AUROC 14,667,903 / (2,000 x 10,000) and FPR 8,017 / 10,000 are
    # exact; the AUPR holds to the 1e-10 of its printed digits, inside the 1e-9 tolerance.
    r = np.random.default_rng(1907)
    pos, neg = -r.beta(5, 2, 2000), -r.beta(8, 1.5, 10000)
    got = metrics.ood_scores(pos, neg)
    assert (got.auroc, got.aupr, got.fpr95) == pytest.approx((0.73339515, 0.3978318801, 0.8017), abs=TOL)
    assert got.chance_aupr == pytest.approx(2000 / 12000, abs=TOL)
    # Recall is exactly 95 % at several thresholds: the authors' rule takes the lowest of them.
    assert got.fpr95_first == pytest.approx(0.8, abs=TOL) and got.fpr95 > got.fpr95_first


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_a_brute_force_computation(seed):
    rng = np.random.default_rng(seed)
    n_pos, n_neg = rng.integers(1, 120), rng.integers(1, 300)
    pos, neg = rng.normal(0.7, 1, n_pos), rng.normal(0, 1, n_neg)
    if seed % 2:  # heavy ties, within and across the two sets
        pos, neg = np.round(pos * 3) / 3, np.round(neg * 3) / 3
    got = metrics.ood_scores(pos, neg).as_dict()
    for key, value in brute_force(pos, neg).items():
        assert got[key] == pytest.approx(value, abs=TOL), key
    assert got["chance_aupr"] == pytest.approx(n_pos / (n_pos + n_neg), abs=TOL)


def test_fpr95_closest_and_first_differ_when_no_threshold_hits_95_percent():
    # 100 positives: recall 0.94 down to score 5, then 0.97 at a tie of 3 positives and 5 negatives at 2.
    pos = np.r_[np.linspace(10, 5, 94), [2.0] * 3, [-5.0, -6.0, -7.0]]
    neg = np.r_[[3.0] * 10, [2.0] * 5, [1.0] * 15, np.linspace(-10, -20, 70)]
    # Closest to 95 % is 0.94, reached at 5 (0 false positives) and still at 3 (10): the lowest wins.
    assert metrics.fpr_at_recall(pos, neg) == pytest.approx(0.10, abs=TOL)
    assert metrics.fpr_at_recall(pos, neg, closest=False) == pytest.approx(0.15, abs=TOL)  # recall 0.97
    assert brute_force(pos, neg)["fpr95"] == pytest.approx(0.10, abs=TOL)


def test_metrics_refuse_an_empty_side():
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        metrics.ood_scores(np.array([-0.5]), np.array([]))


# --------------------------------------------------------------------------- the 200 targets


def test_imagenet_o_class_list_is_the_authors_200_targets():
    shared = SHARED_TARGETS.read_text().split()
    assert imagenet_o_targets() == shared and len(set(shared)) == 200
    with open(IMAGENET_O_RECIPE, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == RECIPE_COLUMNS
        rows = list(reader)
    with open(IMAGENET_O_RECIPE.with_name("imagenet_a.csv"), newline="", encoding="utf-8") as fh:
        imagenet_a = {row["wnid"]: row for row in csv.DictReader(fh)}
    one_k = imagenet_1k_wnids()
    assert [int(row["index_1k"]) for row in rows] == [one_k.index(row["wnid"]) for row in rows]
    shared_with_a = [row for row in rows if row["wnid"] in imagenet_a]
    assert len(shared_with_a) == 59 and all(row == imagenet_a[row["wnid"]] for row in shared_with_a)
    for row in rows:
        if row["wnid"] not in imagenet_a:  # WordNet via timm: first lemma, gloss, every lemma as a query
            info = describe_synset(row["wnid"])
            assert (row["name"], row["gloss"]) == (info["name"], info["gloss"])
            assert row["queries"].split(" | ") == info["lemmas"]


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def ood_folders(tmp_path: Path) -> tuple[Path, Path]:
    """ID_DIR: the first shared val photo of each ImageNet-O target held (146 of 200), as
    <wnid>/<file> (the authors' layout); OOD_DIR: the first N_OOD val photos of other classes, flat,
    with a non-image file to skip."""
    targets = set(SHARED_TARGETS.read_text().split())
    in_dist, ood = tmp_path / "in-dist", tmp_path / "ood"
    ood.mkdir()
    (ood / "README.txt").write_text("not an image\n")
    others = 0
    for row in sorted(val_photos(), key=lambda row: row["file"]):
        if row["wnid"] in targets:
            if (in_dist / row["wnid"]).exists():
                continue
            (in_dist / row["wnid"]).mkdir(parents=True)
            (in_dist / row["wnid"] / row["file"]).symlink_to(VAL / row["file"])
        elif others < N_OOD:
            (ood / row["file"]).symlink_to(VAL / row["file"])
            others += 1
    return ood, in_dist


def eval_ood(run_cli, checkpoint: Path, ood: Path, in_dist: Path, *extra: str):
    return run_cli(
        "eval", str(ood), "--ood", "--in-dist", str(in_dist), "--model", "tf_efficientnet_lite0",
        "--checkpoint", str(checkpoint), "--device", "cpu", *extra,
    )  # fmt: skip


def test_eval_ood_lite0_on_real_val_photos(run_cli, lite0_checkpoint, ood_folders, tmp_path):
    ood, in_dist = ood_folders
    predictions = tmp_path / "predictions.csv"
    result = eval_ood(run_cli, lite0_checkpoint, ood, in_dist, "--json", "--predictions", str(predictions))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    print(json.dumps(report, indent=1))
    n_in = len({row["wnid"] for row in val_photos()} & set(imagenet_o_targets()))
    assert (report["n_ood"], report["n_in_dist"], report["n_unreadable"]) == (N_OOD, n_in, 0)
    assert report["n_classes"] == 200 and report["label_space"] == "imagenet-o"
    assert report["chance_aupr"] == pytest.approx(N_OOD / (N_OOD + n_in), abs=TOL)

    # 1. The printed metrics are those of the per-image scores it wrote.
    rows = list(csv.DictReader(open(predictions)))
    assert [r["set"] for r in rows] == ["ood"] * N_OOD + ["in_dist"] * n_in
    anomaly = {r["file"]: float(r["anomaly_score"]) for r in rows}
    assert all(anomaly[r["file"]] == -float(r["msp"]) for r in rows)

    # 2. An independent timm pipeline (its own transform, fp32) gives the same metrics to 1e-9.
    paths = [Path(r["file"]) for r in rows]
    logits = independent_logits(lite0_checkpoint, paths)
    indices = [imagenet_1k_wnids().index(w) for w in SHARED_TARGETS.read_text().split()]
    restricted = logits[:, indices].astype(np.float64)
    exp = np.exp(restricted - restricted.max(axis=1, keepdims=True))
    reference = -(exp / exp.sum(axis=1, keepdims=True)).max(axis=1)
    difference = np.abs(reference - np.array([anomaly[str(p)] for p in paths]))
    print(f"max |MSP difference| to timm's own pipeline: {difference.max():.2e}")
    assert difference.max() < 1e-4
    is_ood = np.array([r["set"] == "ood" for r in rows])
    expected = brute_force(reference[is_ood], reference[~is_ood])
    for key, value in expected.items():
        assert report[key] == pytest.approx(value, abs=TOL), key
    # Photos of other classes get less confident 200-way predictions than photos of the targets.
    assert report["auroc"] > 0.75 and report["aupr"] > 2 * report["chance_aupr"]


def small_folders(tmp_path: Path, broken_only: bool = False) -> tuple[Path, Path]:
    """OOD_DIR: 3 val photos of other classes in a folder plus a truncated JPEG; ID_DIR: 3 target photos, flat."""
    targets = set(SHARED_TARGETS.read_text().split())
    photos = sorted(val_photos(), key=lambda row: row["file"])
    ood, in_dist = tmp_path / "ood" / "anything", tmp_path / "in-dist"
    ood.mkdir(parents=True)
    in_dist.mkdir()
    for row in [r for r in photos if r["wnid"] not in targets][: 0 if broken_only else 3]:
        (ood / row["file"]).symlink_to(VAL / row["file"])
    for row in [r for r in photos if r["wnid"] in targets][:3]:
        (in_dist / row["file"]).symlink_to(VAL / row["file"])
    (ood / "broken.jpg").write_bytes((VAL / photos[0]["file"]).read_bytes()[:300])
    return ood.parent, in_dist


def test_eval_ood_text_report_and_an_unreadable_image(run_cli, lite0_checkpoint, tmp_path):
    ood, in_dist = small_folders(tmp_path)
    as_json = eval_ood(run_cli, lite0_checkpoint, ood, in_dist, "--json")
    as_text = eval_ood(run_cli, lite0_checkpoint, ood, in_dist)
    assert as_json.returncode == 0 and as_text.returncode == 0, as_json.stderr + as_text.stderr
    report = json.loads(as_json.stdout)
    assert (report["n_ood"], report["n_in_dist"], report["n_unreadable"]) == (3, 3, 1)
    assert "broken.jpg" in as_json.stderr and "eval --ood: 3 out-of-distribution vs 3" in as_json.stderr
    for key in ("aupr", "auroc", "fpr95", "fpr95_first", "chance_aupr"):
        assert f"{100 * report[key]:6.2f} %" in as_text.stdout, key
    assert "AUPR (canonical)" in as_text.stdout and " 50.00 %" in as_text.stdout  # chance at 3 : 3


@pytest.mark.parametrize(
    "case, message",
    [
        ("no --in-dist", "--ood needs --in-dist"),
        ("--in-dist without --ood", "--in-dist only goes with --ood"),
        ("empty OOD folder", "no images under"),
        ("missing ID folder", "folder not found"),
        ("same folder twice", "are the same"),
        ("label space", "leave out --label-space"),
    ],
)
def test_eval_ood_bad_arguments_give_one_line(run_cli, tmp_path, case, message):
    ood, in_dist = small_folders(tmp_path)
    empty = tmp_path / "empty"
    (empty / "n01443537").mkdir(parents=True)
    args = {
        "no --in-dist": [str(ood), "--ood"],
        "--in-dist without --ood": [str(ood), "--in-dist", str(in_dist)],
        "empty OOD folder": [str(empty), "--ood", "--in-dist", str(in_dist)],
        "missing ID folder": [str(ood), "--ood", "--in-dist", str(tmp_path / "nowhere")],
        "same folder twice": [str(ood), "--ood", "--in-dist", str(ood / "anything" / "..")],
        "label space": [str(ood), "--ood", "--in-dist", str(in_dist), "--label-space", "folder"],
    }[case]
    result = run_cli("eval", *args, "--model", "tf_efficientnet_lite0")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_eval_ood_unreadable_set_gives_one_line(run_cli, lite0_checkpoint, tmp_path):
    ood, in_dist = small_folders(tmp_path, broken_only=True)
    result = eval_ood(run_cli, lite0_checkpoint, ood, in_dist)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()  # after the progress bar: one line
    assert lines[-1] == f"curation: error: no image under {ood} could be read", result.stderr
    assert sum("error" in line for line in lines) == 1
