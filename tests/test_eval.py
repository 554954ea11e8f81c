"""`curation eval` end to end: real EfficientNet-Lite0 weights on the 200 shared ImageNet photos
arranged as an ImageNet-A folder, checked against an independent timm pipeline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES
from test_eval_metrics import reference_aurra, reference_calib_err

from curation.errors import CurationError
from curation.evaluate import label_space
from curation.synsets import imagenet_a_reference

TOL = 1e-9


@pytest.fixture
def imagenet_a_folder(tmp_path: Path) -> Path:
    """The shared samples as `<wnid>/<file>` symlinks, like the original ImageNet-A layout."""
    root = tmp_path / "imagenet-a"
    for photo in sorted(SAMPLES.glob("*.JPEG")):
        (root / photo.stem).mkdir(parents=True)
        (root / photo.stem / photo.name).symlink_to(photo)
    return root


def independent_logits(checkpoint: Path, paths: list[Path]) -> np.ndarray:
    """timm's own model, data config and eval transform, one image at a time (no shared code)."""
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    model.eval()
    transform = create_transform(**resolve_data_config(model=model))
    rows = []
    with torch.no_grad():
        for start in range(0, len(paths), 50):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start : start + 50]])
            rows.append(model(batch).numpy())
    return np.concatenate(rows)


def test_eval_lite0_on_an_imagenet_a_folder(run_cli, lite0_checkpoint, imagenet_a_folder, tmp_path):
    predictions = tmp_path / "predictions.csv"
    result = run_cli(
        "eval",
        str(imagenet_a_folder),
        "--model",
        "tf_efficientnet_lite0",
        "--checkpoint",
        str(lite0_checkpoint),
        "--device",
        "cpu",
        "--json",
        "--predictions",
        str(predictions),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    print(json.dumps(report, indent=1))
    wnids, indices = imagenet_a_reference()
    assert report["n_images"] == 200 and report["n_classes"] == 200 and report["n_unreadable"] == 0

    # 1. The printed numbers are the authors' formulas applied to the per-image outputs, to 1e-9.
    rows = list(csv.DictReader(open(predictions)))
    assert [r["label"] for r in rows] == wnids  # ImageFolder order: sorted wnids, one photo each
    confidence = np.array([float(r["confidence"]) for r in rows])
    correct = np.array([int(r["correct"]) for r in rows], dtype=np.float64)
    assert (correct == np.array([r["prediction"] == r["label"] for r in rows])).all()
    assert report["top1_restricted"] == pytest.approx(correct.mean(), abs=TOL)
    assert report["top1_full"] == pytest.approx(np.mean([r["full_prediction"] == r["label"] for r in rows]), abs=TOL)
    assert report["rms_calib_error"] == pytest.approx(reference_calib_err(confidence, correct), abs=TOL)
    assert report["rms_calib_error_all_bins"] == pytest.approx(
        reference_calib_err(confidence, correct, all_bins=True), abs=TOL
    )
    assert report["aurra"] == pytest.approx(reference_aurra(confidence, correct), abs=TOL)

    # 2. An independent timm pipeline (its exact transform) agrees on the model's decisions.
    logits = independent_logits(lite0_checkpoint, [Path(r["file"]) for r in rows])
    restricted = logits[:, indices]
    reference_prediction = [wnids[k] for k in restricted.argmax(axis=1)]
    agree = np.mean([p == r["prediction"] for p, r in zip(reference_prediction, rows, strict=True)])
    assert agree >= 0.98
    reference_top1 = np.mean(restricted.argmax(axis=1) == np.arange(200))
    assert abs(report["top1_restricted"] - reference_top1) <= 2 / 200
    exp = np.exp(restricted - restricted.max(axis=1, keepdims=True))
    reference_confidence = (exp / exp.sum(axis=1, keepdims=True)).max(axis=1)
    assert np.median(np.abs(reference_confidence - confidence)) < 0.02
    # Ordinary photos of the 200 classes: restricting to them can only help.
    assert report["top1_restricted"] >= report["top1_full"] and report["top1_restricted"] > 0.85


def test_eval_text_report_and_an_unreadable_image(run_cli, lite0_checkpoint, tmp_path):
    root = tmp_path / "small"
    for wnid in ["n01498041", "n02099601", "n07753592"]:
        (root / wnid).mkdir(parents=True)
        (root / wnid / "x.JPEG").symlink_to(SAMPLES / f"{wnid}.JPEG")
    (root / "n01498041" / "broken.jpg").write_bytes((SAMPLES / "n01498041.JPEG").read_bytes()[:300])
    args = ["eval", str(root), "--model", "tf_efficientnet_lite0", "--checkpoint", str(lite0_checkpoint)]
    as_json, as_text = run_cli(*args, "--json"), run_cli(*args)
    assert as_json.returncode == 0 and as_text.returncode == 0, as_json.stderr + as_text.stderr
    report = json.loads(as_json.stdout)
    assert report["n_images"] == 3 and report["rms_calib_error"] is None  # the authors' code needs 100 images
    assert report["n_unreadable"] == 1 and "broken.jpg" in as_json.stderr  # counted and named, not fatal
    assert f"{100 * report['top1_restricted']:6.2f} %" in as_text.stdout and "3-way restricted" in as_text.stdout
    assert f"{100 * report['aurra']:6.2f} %" in as_text.stdout and "n/a (fewer than 100 images)" in as_text.stdout


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, "not found"),
        ({"n01498041": []}, "ImageFolder"),
        ({"n01498041": ["a.jpg"], "misc": ["b.jpg"]}, "not a WordNet ID"),
    ],
)
def test_eval_bad_folder_gives_one_line(run_cli, tmp_path, layout, message):
    root = tmp_path / "data"
    if layout:
        for folder, files in layout.items():
            (root / folder).mkdir(parents=True)
            for name in files:
                (root / folder / name).write_bytes((SAMPLES / "n01498041.JPEG").read_bytes())
    result = run_cli("eval", str(root), "--model", "tf_efficientnet_lite0")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_eval_unknown_class_for_the_model(run_cli, tmp_path, lite0_checkpoint):
    root = tmp_path / "data"
    (root / "n02084071").mkdir(parents=True)  # "dog": an ImageNet-21k synset, not a 1k output
    (root / "n02084071" / "dog.jpg").symlink_to(SAMPLES / "n02099601.JPEG")
    result = run_cli("eval", str(root), "--model", "tf_efficientnet_lite0", "--checkpoint", str(lite0_checkpoint))
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "n02084071" in result.stderr, result.stderr


def test_label_space_follows_the_readme_of_a_release(tmp_path):
    wnids = imagenet_a_reference()[0]
    root = tmp_path / "release"
    root.mkdir()
    assert label_space(root, wnids[:3], "auto") == (wnids[:3], "folders")  # no README: the folders
    (root / "README.txt").write_text("A dataset.\n\n" + "".join(f"{w} name {i}\n" for i, w in enumerate(wnids)))
    assert label_space(root, wnids[:3], "auto") == (wnids, "README.txt")
    assert label_space(root, wnids[:3], "folder") == (wnids[:3], "folders")
    assert label_space(root, ["n02084071"], "auto") == (["n02084071"], "folders")  # README does not cover it
    with pytest.raises(CurationError, match="n02084071"):
        label_space(root, ["n02084071"], "imagenet-a")
