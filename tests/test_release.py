"""`curation release`: ImageFolder layout, checksums, reproducible archive, refusal of non-empty folders."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select
from test_release_catalog import CLASSES, build_catalog

from curation import catalog as cat
from curation.synsets import imagenet_a_reference


@pytest.fixture
def built(catalog_url, tmp_path):
    return build_catalog(catalog_url, tmp_path / "data")


def release(run_cli, catalog_url, built, out: Path, *extra: str):
    return run_cli("--db", catalog_url, "--data-dir", str(built.data_dir), "release", str(out), *extra)


def test_release_is_an_imagefolder_with_valid_checksums(run_cli, catalog_url, built, tmp_path):
    from torchvision.datasets import ImageFolder

    out = tmp_path / "out"
    result = release(run_cli, catalog_url, built, out, "--version", "0.9")
    assert result.returncode == 0, result.stderr
    assert f"{len(built.released)} images in 3 classes" in result.stderr
    root = out / "imagenet-a-rebuilt"
    dataset = ImageFolder(str(root))
    assert dataset.classes == sorted(CLASSES)
    assert len(dataset) == len(built.released)
    for path, label in dataset.samples:
        sha = Path(path).stem
        assert built.released[sha] == dataset.classes[label]
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size[0] > 50
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=root, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = {line.split("  ", 1)[1] for line in (root / "SHA256SUMS").read_text().splitlines()}
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert listed == on_disk
    # JPEG originals are byte-identical copies; the PNG original is re-encoded as a JPEG.
    rows = {r["image_sha256"]: r for r in csv.DictReader(open(root / "manifest.csv"))}
    assert set(rows) == set(built.released)
    for sha, row in rows.items():
        released = (root / row["file"]).read_bytes()
        assert hashlib.sha256(released).hexdigest() == row["sha256"]
        assert (row["sha256"] == sha) == (sha != built.png_sha)
        assert row["converted_from"] == ("PNG" if sha == built.png_sha else "")
        assert row["filter_model"] == "resnet50.tv_in1k@abc123" and row["filter_prediction_name"] == "manhole cover"
        assert row["class_name"] and row["license"] and row["source"] in {"flickr", "inaturalist"}
    # README.txt lists the whole label space (every catalog class), so eval restricts to all 200.
    readme = (root / "README.txt").read_text().splitlines()
    wnid_lines = [line for line in readme if re.match(r"n\d{8} ", line)]
    assert [line.split(" ", 1)[0] for line in wnid_lines] == imagenet_a_reference()[0]
    assert "n02279972 monarch butterfly" in wnid_lines
    attribution = (root / "ATTRIBUTION.md").read_text()
    required = attribution.split("## Other images")[0]
    credited = [r for r in rows.values() if r["license"].startswith("CC BY")]
    assert credited and all(r["file"] in required and built.by_sa_author in required for r in credited)
    datasheet = (root / "DATASHEET.md").read_text()
    assert "0.9" in datasheet and "2026-11-20" in datasheet and "Fleiss" in datasheet
    assert "resnet50.tv_in1k@abc123" in datasheet and "CC BY-SA 2.0" in datasheet
    archive = out / "imagenet-a-rebuilt.tar.gz"
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (out / "imagenet-a-rebuilt.tar.gz.sha256").read_text().split()[0] == digest
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names == sorted(names) and names[0] == "imagenet-a-rebuilt"
        assert {n for n in names if n.endswith(".jpg")} == {f"imagenet-a-rebuilt/{r['file']}" for r in rows.values()}
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in tar.getmembers())
    status = json.loads(run_cli("--db", catalog_url, "status", "--json").stdout)
    assert status["totals"]["released"] == len(built.released)
    catalog = cat.open_catalog(catalog_url)
    with catalog.session() as s:
        record = s.query(cat.Release).one()
        assert record.archive_sha256 == digest and record.n_images == len(built.released)
        assert {i.sha256 for i in s.query(cat.ReleaseItem)} == set(built.released)


def test_two_releases_of_one_catalog_are_byte_identical(run_cli, catalog_url, built, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert release(run_cli, catalog_url, built, first).returncode == 0
    assert release(run_cli, catalog_url, built, second).returncode == 0
    files_a = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 10
    for relative in files_a:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative


def test_release_refuses_a_non_empty_folder_unless_forced(run_cli, catalog_url, built, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    refused = release(run_cli, catalog_url, built, out)
    assert refused.returncode != 0
    assert len(refused.stderr.strip().splitlines()) == 1 and "--force" in refused.stderr
    assert (out / "precious.txt").read_text() == "keep me"
    forced = release(run_cli, catalog_url, built, out, "--force", "--max-per-class", "1")
    assert forced.returncode == 0, forced.stderr
    assert not (out / "precious.txt").exists()
    assert sorted(p.name for p in (out / "imagenet-a-rebuilt").iterdir() if p.is_dir()) == sorted(CLASSES)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_release_with_nothing_to_release_creates_nothing(run_cli, catalog_url, tmp_path):
    out = tmp_path / "out"
    result = run_cli("--db", catalog_url, "release", str(out))
    assert result.returncode != 0 and "nothing to release" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_original_is_counted_not_fatal(run_cli, catalog_url, built, tmp_path):
    catalog = cat.open_catalog(catalog_url)
    with catalog.session() as s:
        victim = s.get(cat.Image, sorted(built.released)[0])
        (built.data_dir / victim.path).unlink()
    result = release(run_cli, catalog_url, built, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "1 failed" in result.stderr and victim.sha256[:16] in result.stderr
    rows = list(csv.DictReader(open(tmp_path / "out" / "imagenet-a-rebuilt" / "manifest.csv")))
    assert len(rows) == len(built.released) - 1


def test_release_never_replaces_the_data_dir_or_the_catalog(run_cli, catalog_url, built, tmp_path):
    for target in (built.data_dir, tmp_path):  # tmp_path holds the catalog and is the current folder
        result = release(run_cli, catalog_url, built, target, "--force")
        assert result.returncode != 0 and "refusing" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert any((built.data_dir / "images").iterdir())
    if catalog_url.startswith("sqlite"):  # the SQLite catalog file lives in tmp_path
        assert (tmp_path / "catalog.sqlite").is_file()
    with cat.open_catalog(catalog_url).session() as s:
        assert s.scalar(select(func.count()).select_from(cat.Image)) == len(
            list((built.data_dir / "images").rglob("*.*"))
        )


def test_a_killed_release_leaves_only_a_partial_folder_that_the_rerun_removes(run_cli, catalog_url, built, tmp_path):
    stale = tmp_path / ".out.partial-99999"  # what a release killed mid-way leaves behind
    (stale / "imagenet-a-rebuilt" / "n02279972").mkdir(parents=True)
    (stale / "imagenet-a-rebuilt" / "n02279972" / "half.jpg").write_bytes(b"\xff\xd8")
    assert not (tmp_path / "out").exists()
    result = release(run_cli, catalog_url, built, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and (tmp_path / "out" / "imagenet-a-rebuilt" / "SHA256SUMS").is_file()


def test_released_bytes(tmp_path):
    import io

    from conftest import SAMPLES

    from curation.release import released_bytes

    photo = SAMPLES / "n01498041.JPEG"
    assert released_bytes(photo.read_bytes(), "JPEG") == (photo.read_bytes(), "")
    with Image.open(photo) as im:
        width, height = im.size
        exif = im.getexif()
        exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees, ImageFolder would not
        im.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
        im.save(tmp_path / "photo.png")
    data, converted = released_bytes((tmp_path / "rotated.jpg").read_bytes(), "JPEG")
    with Image.open(io.BytesIO(data)) as out:
        assert out.format == "JPEG" and out.size == (height, width) and converted == "JPEG (EXIF-rotated)"
    data, converted = released_bytes((tmp_path / "photo.png").read_bytes(), "PNG")
    with Image.open(io.BytesIO(data)) as out:
        assert out.format == "JPEG" and out.size == (width, height) and out.mode == "RGB" and converted == "PNG"
    assert released_bytes((tmp_path / "photo.png").read_bytes(), "PNG")[0] == data  # deterministic
