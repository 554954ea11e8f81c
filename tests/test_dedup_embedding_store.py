"""The embedding matcher reads catalog images through the image store (issue 25): the same folder
crawled into s3:// (SeaweedFS) and into file:// gives the same embed+orb links, possible copies and
statuses from `curation dedup`, with no image under the s3 run's data folder. Both runs embed
(whole images and tiles) and verify with forked local workers, which get bytes the driver fetched."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import SAMPLES
from PIL import Image
from test_store_stages import sorted_rows

from curation.cli import main

LINKS = "SELECT sha256, other, reference, hash_kind, distance, round(score, 6) FROM duplicate_links"
POSSIBLE = "SELECT sha256, other, reference, kind, round(score, 6) FROM possible_copies"
STATUSES = "SELECT sha256, status, cluster_id FROM dedup_status"


def _folder(root: Path) -> Path:
    """Three shared photos and a 12 %-a-side crop of the first, upscaled (a copy the hashes miss)."""
    folder = root / "photos"
    folder.mkdir()
    photos = sorted(SAMPLES.glob("n*.JPEG"))[:3]
    for photo in photos:
        shutil.copy(photo, folder / f"{photo.stem}.jpg")
    with Image.open(photos[0]) as img:
        w, h = img.size
        crop = img.convert("RGB").crop((int(0.12 * w), int(0.12 * h), int(0.88 * w), int(0.88 * h)))
        crop.resize((w * 2, h * 2), Image.BICUBIC).save(folder / f"{photos[0].stem}_crop.jpg", quality=90)
    return folder


def test_dedup_embedding_on_s3_gives_the_file_store_links(tmp_path, s3_env, lite0_checkpoint, monkeypatch):
    from curation.store import open_store

    folder = _folder(tmp_path)
    for key, value in {"MODEL": "tf_efficientnet_lite0", "CHECKPOINT": str(lite0_checkpoint), "TOP_K": "4"}.items():
        monkeypatch.setenv(f"CURATION_DEDUP_{key}", value)
    runs = {}
    for name in ("file", "s3"):
        if name == "s3":
            monkeypatch.setenv("CURATION_STORAGE_IMAGES", open_store(f"s3://images/{tmp_path.name}/images").url)
        common = ["--db", str(tmp_path / f"{name}.sqlite"), "--data-dir", str(tmp_path / name)]
        assert main([*common, "crawl", "--folder", str(folder)]) == 0
        assert main([*common, "dedup", "--workers", "2"]) == 0
        runs[name] = tmp_path / f"{name}.sqlite"
    assert not (tmp_path / "s3" / "images").exists()  # every image came from the object store
    links = sorted_rows(runs["file"], LINKS)
    assert [link for link in links if link[3].startswith("embed+")], links  # the crop, proved
    assert sorted_rows(runs["s3"], LINKS) == links
    assert sorted_rows(runs["s3"], POSSIBLE) == sorted_rows(runs["file"], POSSIBLE)
    assert sorted_rows(runs["s3"], STATUSES) == sorted_rows(runs["file"], STATUSES)
