"""One release, loaded as researchers load ImageNet-A: torchvision ImageFolder, timm create_dataset,
Hugging Face datasets (a `test` split) and MLCommons Croissant (mlcroissant validates and joins every
image to its manifest row). Hugging Face runs offline in a subprocess, with its caches in tmp_path."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_release_catalog import CLASSES, build_catalog

from curation.errors import CurationError
from curation.release_card import KNOWN_FILES, check_layout, check_wnid_folder

HF_LOAD = """
import json, sys
from datasets import load_dataset
root, glob = sys.argv[1], sys.argv[2]
out = {}
by_card = load_dataset(root)  # the folder itself: its README.md declares the split and the labels
test = by_card["test"]
out["card"] = {"splits": sorted(by_card), "builder": test.info.builder_name,
               "names": test.features["label"].names,
               "pairs": [[r["image"].filename, r["label"]] for r in test]}
packaged = load_dataset("imagefolder", data_dir=root, data_files={"test": glob}, split="test")
out["imagefolder"] = {"names": packaged.features["label"].names,
                      "pairs": [[r["image"].filename, r["label"]] for r in packaged]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def release_root(tmp_path_factory) -> Path:
    """A release of the shared photos' test catalog (3 classes, real JPEGs and one re-encoded PNG)."""
    tmp = tmp_path_factory.mktemp("loaders")
    url = f"sqlite:///{tmp / 'catalog.sqlite'}"
    built = build_catalog(url, tmp / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATION_")}
    result = subprocess.run(
        [sys.executable, "-m", "curation", "--db", url, "--data-dir", str(built.data_dir), "release", str(tmp / "out")],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return tmp / "out" / "imagenet-a-rebuilt"


def relative(root: Path, path: str) -> str:
    return Path(path).resolve().relative_to(root.resolve()).as_posix()


def hugging_face(root: Path, tmp_path: Path) -> dict:
    """Load the release with `datasets` in a subprocess that cannot reach the network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CURATION_"))}
    env.update(
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"),
        HF_ENDPOINT="http://127.0.0.1:9",
    )
    result = subprocess.run(
        [sys.executable, "-c", HF_LOAD, str(root), "*/*.jpg"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_torchvision_timm_and_hugging_face_load_the_same_pairs(release_root, tmp_path):
    import timm.data
    from torchvision.datasets import ImageFolder

    with open(release_root / "manifest.csv", newline="") as fh:
        manifest = {r["file"]: r["wnid"] for r in csv.DictReader(fh)}
    expected_classes = sorted(CLASSES)
    expected = sorted(manifest.items())
    assert len(expected) == 7 and {w for _, w in expected} == set(CLASSES)

    folder = ImageFolder(str(release_root))
    assert folder.classes == expected_classes
    torchvision_pairs = sorted((relative(release_root, p), folder.classes[y]) for p, y in folder.samples)

    timm_set = timm.data.create_dataset("", root=str(release_root))
    timm_classes = sorted(timm_set.reader.class_to_idx, key=timm_set.reader.class_to_idx.get)
    assert timm_classes == expected_classes
    timm_pairs = sorted((relative(release_root, p), timm_classes[y]) for p, y in timm_set.reader.samples)

    hf = hugging_face(release_root, tmp_path)
    assert hf["card"]["splits"] == ["test"] and hf["card"]["builder"] == "imagefolder"
    for way in ("card", "imagefolder"):
        names = hf[way]["names"]
        assert names == expected_classes, way
        pairs = sorted((relative(release_root, p), names[y]) for p, y in hf[way]["pairs"])
        assert pairs == expected, way

    assert torchvision_pairs == timm_pairs == expected
    # Same label indices everywhere, not just the same names.
    assert folder.class_to_idx == timm_set.reader.class_to_idx == {w: k for k, w in enumerate(expected_classes)}


def test_dataset_card_header(release_root):
    text = (release_root / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["configs"] == [{"config_name": "default", "data_files": [{"split": "test", "path": "*/*.jpg"}]}]
    assert header["task_categories"] == ["image-classification"] and header["size_categories"] == ["n<1K"]
    assert header["license"] == "other" and "CC BY-SA 2.0" in header["license_details"]
    names = header["dataset_info"]["features"][1]["dtype"]["class_label"]["names"]
    assert [names[k] for k in sorted(names, key=int)] == sorted(CLASSES)
    n_images = sum(1 for _ in release_root.glob("*/*.jpg"))
    assert header["dataset_info"]["splits"] == [{"name": "test", "num_examples": n_images}]
    assert not (release_root / "metadata.csv").exists()
    assert sorted(p.name for p in release_root.iterdir() if p.is_file()) == sorted(KNOWN_FILES)


def test_croissant_validates_and_joins_every_image_to_its_manifest_row(release_root):
    import hashlib

    import mlcroissant as mlc

    document = json.loads((release_root / "croissant.json").read_text())
    assert document["conformsTo"] == "http://mlcommons.org/croissant/1.1"
    manifest_file = next(d for d in document["distribution"] if d["@id"] == "manifest.csv")
    assert manifest_file["sha256"] == hashlib.sha256((release_root / "manifest.csv").read_bytes()).hexdigest()
    # The day of the catalog's last vote, as the datasheet gives it (no clock: releases stay byte-identical).
    annotated = re.search(r"Annotated between \S+ and (\S+) ", (release_root / "DATASHEET.md").read_text())
    assert document["datePublished"] == annotated.group(1)

    validate = Path(sys.executable).with_name("mlcroissant")
    result = subprocess.run(
        [str(validate), "validate", "--jsonld", "croissant.json"],
        cwd=release_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error" not in (result.stdout + result.stderr).lower()
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stderr

    with open(release_root / "manifest.csv", newline="") as fh:
        manifest = {r["file"]: r for r in csv.DictReader(fh)}
    records = list(mlc.Dataset(str(release_root / "croissant.json")).records("images"))
    assert len(records) == len(manifest)

    def text(value) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    seen = set()
    for record in records:
        file = text(record["images/file"])
        row = manifest[file]  # every image joins to its manifest row
        seen.add(file)
        assert text(record["images/label"]) == row["wnid"] == file.split("/")[0]
        for column in ("sha256", "image_sha256", "license", "source", "class_name", "filter_prediction"):
            assert text(record[f"images/{column}"]) == row[column], column
        assert record["images/width"] == int(row["width"]) and record["images/votes_total"] == int(row["votes_total"])
        assert record["images/image"].size == (int(row["width"]), int(row["height"]))
    assert seen == set(manifest)


def test_the_release_refuses_anything_but_wnid_folders_and_its_files_at_the_top(tmp_path):
    root = tmp_path / "release"
    (root / "n01498041").mkdir(parents=True)
    (root / "n01498041" / "a.jpg").write_bytes(b"jpeg")
    for name in KNOWN_FILES:
        (root / name).write_text("x")
    check_layout(root, {"n01498041"})
    strays = [
        ("metadata.csv", "file"),  # would replace the folder labels in Hugging Face
        ("stray.jpg", "file"),  # a class '' in timm, no labels at all in Hugging Face
        ("empty", "dir"),  # ImageFolder fails on a folder without images
        ("n02037110", "dir"),  # a wnid folder that is not a released class
    ]
    for name, kind in strays:
        path = root / name
        path.mkdir() if kind == "dir" else path.write_text("x")
        with pytest.raises(CurationError, match="refusing to release"):
            check_layout(root, {"n01498041"})
        path.rmdir() if kind == "dir" else path.unlink()
    (root / "n01498041" / "nested").mkdir()
    with pytest.raises(CurationError, match="nested is not a .jpg"):
        check_layout(root, {"n01498041"})
    for bad in ("../n01498041", "n0149804", "README.txt", ""):
        with pytest.raises(CurationError, match="WordNet ID"):
            check_wnid_folder(bad)
