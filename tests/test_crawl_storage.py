"""Validation and content-addressed storage, and `curation crawl --folder` on the shared photos."""

from __future__ import annotations

import csv
import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from curation import storage
from curation.store import image_key, open_store
from tests.conftest import SAMPLES, VAL
from tests.crawl_images import broken, sample_bytes, sample_paths, variants


@pytest.mark.parametrize("name", sorted(broken()))
def test_broken_bytes_are_rejected_with_a_named_reason(name):
    data, reason = broken()[name]
    with pytest.raises(storage.Rejected) as info:
        storage.validate(data, min_side=64)
    assert info.value.reason == reason


def test_awkward_but_valid_images_are_accepted_and_measured_after_orientation(tmp_path):
    found = {name: storage.validate(data) for name, data in variants().items()}
    assert {n: v.format for n, v in found.items()} == {
        "cmyk.jpg": "JPEG", "exif_rotated.jpg": "JPEG", "alpha.png": "PNG", "palette.png": "PNG",
        "sixteen_bit.png": "PNG", "animated.gif": "GIF", "photo.webp": "WEBP",
    }  # fmt: skip
    assert found["cmyk.jpg"].mode == "CMYK" and found["alpha.png"].mode == "RGBA"
    assert found["palette.png"].mode == "P" and found["sixteen_bit.png"].mode.startswith("I")
    assert found["animated.gif"].frames == 2
    plain = found["photo.webp"]
    rotated = found["exif_rotated.jpg"]
    assert (rotated.width, rotated.height) == (plain.height, plain.width)  # EXIF orientation 6 swaps sides
    store = open_store(str(tmp_path / "images"))
    for name, data in variants().items():
        image = found[name]
        store.put_if_absent(image_key(image.sha256, image.ext), data)
        rgb = storage.open_rgb(tmp_path / image.relative_path)
        assert rgb.mode == "RGB" and rgb.size == (image.width, image.height), name


def test_store_is_content_addressed_atomic_and_once(tmp_path):
    data = sample_bytes(0)
    image = storage.validate(data)
    sha = hashlib.sha256(data).hexdigest()
    assert image.relative_path == f"images/{sha[:2]}/{sha[2:4]}/{sha}.jpg"
    store = open_store(str(tmp_path / "images"))
    key = image_key(image.sha256, image.ext)
    assert store.put_if_absent(key, data) is True
    first = tmp_path / image.relative_path
    mtime = first.stat().st_mtime_ns
    assert store.put_if_absent(key, data) is False and first.stat().st_mtime_ns == mtime
    assert first.read_bytes() == data
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp file left behind
    assert list((tmp_path / storage.STAGING).iterdir()) == []


def _rows(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_folder_flat_names_and_rerun_is_idempotent(run_cli, tmp_path):
    db = tmp_path / "c.sqlite"
    args = ("--db", str(db), "--data-dir", str(tmp_path / "data"), "crawl", "--folder", str(SAMPLES))
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "downloaded 200 (200 new images)" in first.stdout
    images = _rows(db, "SELECT sha256, path FROM images")
    assert len(images) == 200
    for sha, path in images:
        assert path == f"images/{sha[:2]}/{sha[2:4]}/{sha}.jpg"
        assert hashlib.sha256((tmp_path / "data" / path).read_bytes()).hexdigest() == sha
    row = _rows(db, "SELECT source, url, license, author, status FROM candidates WHERE wnid='n01498041'")
    assert row == [("folder", (SAMPLES / "n01498041.JPEG").resolve().as_uri(), None, None, "downloaded")]
    second = run_cli(*args)
    assert second.returncode == 0 and "found 0 new candidates" in second.stdout
    assert _rows(db, "SELECT count(*) FROM candidates") == [(200,)]


def test_folder_wnid_dirs_prefixed_names_and_multi_class(run_cli, tmp_path):
    root = tmp_path / "mine"
    stingray, goldfinch = sample_paths(2)
    (root / "n01498041").mkdir(parents=True)
    shutil.copy(stingray, root / "n01498041" / "a.jpg")
    shutil.copy(stingray, root / "n01531178_same_photo.jpg")  # same bytes, another class
    shutil.copy(goldfinch, root / "n01531178_x.jpg")
    (root / "notes.txt").write_text("not an image")
    (root / "n01498041" / "broken.jpg").write_bytes(b"<html>oops</html>")
    db = tmp_path / "c.sqlite"
    result = run_cli("--db", str(db), "--data-dir", str(tmp_path / "data"), "crawl", "--folder", str(root))
    assert result.returncode == 0, result.stderr
    assert _rows(db, "SELECT count(*), sum(multi_class) FROM images") == [(2, 1)]
    assert _rows(db, "SELECT status, reason FROM candidates WHERE url LIKE '%broken.jpg'") == [
        ("failed", "html_not_image")
    ]
    assert "no_class_in_name 1" in result.stdout


def test_folder_manifest_skips_classes_outside_the_catalog(run_cli, tmp_path):
    with open(VAL / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ours = sum(r["in_imagenet_a_200"] == "1" for r in rows)
    db = tmp_path / "c.sqlite"
    result = run_cli("--db", str(db), "--data-dir", str(tmp_path / "data"), "crawl", "--folder", str(VAL))
    assert result.returncode == 0, result.stderr
    assert f"unknown_class {len(rows) - ours}" in result.stdout
    assert _rows(db, "SELECT count(*) FROM candidates WHERE status='downloaded'") == [(ours,)]


def test_folder_that_does_not_exist_is_one_clear_line(run_cli, tmp_path):
    result = run_cli("--db", str(tmp_path / "c.sqlite"), "crawl", "--folder", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"curation: error: --folder {tmp_path / 'nope'}: not a directory"]


def test_a_second_catalog_never_removes_images_of_the_first(run_cli, tmp_path):
    data = tmp_path / "data"
    first = run_cli("--db", str(tmp_path / "a.sqlite"), "--data-dir", str(data), "crawl", "--folder", str(SAMPLES))
    assert first.returncode == 0, first.stderr
    stored = sorted(p for p in (data / "images").rglob("*.jpg"))
    assert len(stored) == 200
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(sample_paths(1)[0], other / "n01498041_x.jpg")
    second = run_cli("--db", str(tmp_path / "b.sqlite"), "--data-dir", str(data), "crawl", "--folder", str(other))
    assert second.returncode == 0, second.stderr
    assert "belongs to another catalog" in second.stderr
    assert sorted(p for p in (data / "images").rglob("*.jpg")) == stored
