"""Stages reading images through the image store: a catalog crawled into file:// and moved to s3://
(SeaweedFS) gives the same verdicts, clusters and a byte-identical release archive; a missing object
is that image's failure; a store that cannot be reached is one line before any work."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import SAMPLES
from PIL import Image

from curation.cli import main

N_PHOTOS = 20


@pytest.fixture(scope="module")
def crawled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalog crawled from a folder into file:// (the default data_dir/images): 20 shared photos,
    4 of them filed under another class (so the filter keeps them) and one re-encoded copy (dedup
    clusters it with its original)."""
    root = tmp_path_factory.mktemp("store-stages")
    folder = root / "photos"
    folder.mkdir()
    photos = sorted(SAMPLES.glob("n*.JPEG"))[:N_PHOTOS]
    for k, photo in enumerate(photos):
        wnid = photos[(k + 1) % N_PHOTOS].stem if k < 4 else photo.stem  # first four: a wrong class
        shutil.copy(photo, folder / f"{wnid}_{k}.jpg")
    with Image.open(photos[0]) as im:
        im.save(folder / f"{photos[1].stem}_copy.jpg", quality=80)  # same wrong class as photo 0
    assert (
        main(["--db", str(root / "local.sqlite"), "--data-dir", str(root / "file"), "crawl", "--folder", str(folder)])
        == 0
    )
    return root


def _stages(db: Path, data_dir: Path, checkpoint: Path, release_to: str) -> None:
    common = ["--db", str(db), "--data-dir", str(data_dir)]
    model = ["--model", "tf_efficientnet_lite0", "--checkpoint", str(checkpoint), "--device", "cpu"]
    assert main([*common, "filter", *model]) == 0
    assert main([*common, "dedup"]) == 0
    _accept_everything(db)
    assert main([*common, "release", release_to]) == 0


def _accept_everything(db: Path) -> None:
    con = sqlite3.connect(db)
    with con:
        con.execute(
            "INSERT INTO annotations (sha256, wnid, annotator, verdict, created_at) "
            "SELECT sha256, wnid, 'tester', 'accept', '2026-12-07 00:00:00' FROM filter_verdicts WHERE kept"
        )
    con.close()


def sorted_rows(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return sorted(con.execute(sql).fetchall())
    finally:
        con.close()


IMAGES = "SELECT path, sha256, width, height, format, bytes FROM images"
CANDIDATES = "SELECT wnid, source, url, status, image_sha256 FROM candidates"
VERDICTS = "SELECT sha256, wnid, kept FROM filter_verdicts"
CLUSTERS = "SELECT sha256, status, cluster_id, label_conflict FROM dedup_status"


def test_s3_store_gives_the_file_store_results(crawled, s3_env, lite0_checkpoint, monkeypatch, capsys):
    """The same folder crawled into s3:// then filter, dedup and release: the same rows, verdicts,
    clusters and a byte-identical archive as the run on file:// (the module's crawl)."""
    from curation.store import open_store, sha_of_key

    local_db, s3_db = crawled / "local.sqlite", crawled / "s3.sqlite"
    s3 = open_store(f"s3://images/{crawled.name}/images")
    monkeypatch.setenv("CURATION_STORAGE_IMAGES", s3.url)
    s3_run = ["--db", str(s3_db), "--data-dir", str(crawled / "s3-data")]
    assert main([*s3_run, "crawl", "--folder", str(crawled / "photos")]) == 0
    assert sorted(key for key, _ in s3.list() if sha_of_key(key)) == sorted(
        p[len("images/") :] for p, *_ in sorted_rows(s3_db, IMAGES)
    )
    assert sorted_rows(local_db, IMAGES) == sorted_rows(s3_db, IMAGES) and sorted_rows(
        local_db, CANDIDATES
    ) == sorted_rows(s3_db, CANDIDATES)

    _stages(s3_db, crawled / "s3-data", lite0_checkpoint, f"s3://images/{crawled.name}/releases")
    assert not (crawled / "s3-data" / "images").exists()  # every image went to and came from the object store
    monkeypatch.delenv("CURATION_STORAGE_IMAGES")
    _stages(local_db, crawled / "file", lite0_checkpoint, str(crawled / "out"))

    verdicts = sorted_rows(local_db, VERDICTS)
    assert verdicts == sorted_rows(s3_db, VERDICTS) and sum(kept for *_, kept in verdicts) >= 4
    clusters = sorted_rows(local_db, CLUSTERS)
    assert clusters == sorted_rows(s3_db, CLUSTERS) and any(status == "duplicate" for _, status, *_ in clusters)
    releases = open_store(f"s3://images/{crawled.name}/releases")
    archive = (crawled / "out" / "imagenet-a-rebuilt.tar.gz").read_bytes()
    assert releases.get("imagenet-a-rebuilt.tar.gz") == archive
    sums = releases.get("imagenet-a-rebuilt/SHA256SUMS").decode()
    assert sums == (crawled / "out" / "imagenet-a-rebuilt" / "SHA256SUMS").read_text()
    uploaded = {key for key, _ in releases.list("imagenet-a-rebuilt")}
    local = {p.relative_to(crawled / "out").as_posix() for p in (crawled / "out").rglob("*") if p.is_file()}
    assert uploaded | {"imagenet-a-rebuilt.tar.gz", "imagenet-a-rebuilt.tar.gz.sha256"} == local

    # A released image deleted from the store: the next release records it as failed, the rest goes out.
    gone = next(key for key, _ in s3.list() if key.endswith(".jpg") and _released(s3_db, key))
    s3.delete(gone)
    monkeypatch.setenv("CURATION_STORAGE_IMAGES", s3.url)
    capsys.readouterr()
    common = ["--db", str(s3_db), "--data-dir", str(crawled / "s3-data")]
    assert main([*common, "release", str(crawled / "again")]) == 0
    err = capsys.readouterr().err
    assert "(1 failed;" in err and f"missing from the image store: {s3.url}/{gone}" in err
    # Again to the same bucket prefix: a finished release is refused without --force.
    assert main([*common, "release", f"s3://images/{crawled.name}/releases"]) == 1
    assert "already holds release imagenet-a-rebuilt; pass --force" in capsys.readouterr().err
    _review_page_serves_from(s3_db, s3.url, gone)


def _review_page_serves_from(db: Path, url: str, gone: str) -> None:
    """The review page's /image/<sha256>: the stored bytes, 404 for the deleted object."""
    from curation.annotate.app import ReviewConfig, create_app
    from curation.catalog import open_catalog
    from curation.store.reader import ImageReader

    cfg = ReviewConfig(catalog=open_catalog(f"sqlite:///{db}"), data_dir=db.parent, images=ImageReader(url, 5.0))
    client = create_app(cfg).test_client()
    sha = next(sha for _, sha, *_ in sorted_rows(db, IMAGES) if sha != Path(gone).stem)
    served = client.get(f"/image/{sha}")
    assert served.status_code == 200 and hashlib.sha256(served.data).hexdigest() == sha
    assert client.get(f"/image/{Path(gone).stem}").status_code == 404


def _released(db: Path, key: str) -> bool:
    return bool(sorted_rows(db, f"SELECT 1 FROM release_items WHERE sha256 = '{Path(key).stem}'"))


def test_missing_object_is_the_images_failure(crawled, s3_env, lite0_checkpoint):
    """Read through refs: the filter's loader (bytes fetched in this process, decoded in a DataLoader
    worker) and dedup's hashing record a missing object as that image's failure, with its key."""
    from curation.dedup.hash_pages import HashTask
    from curation.inference import load_model, predict_logits
    from curation.store import open_store
    from curation.store.reader import ImageReader

    store = open_store(f"s3://images/{crawled.name}-missing")
    photos = sorted(SAMPLES.glob("n*.JPEG"))[:3]
    keys = []
    for photo in photos:
        data = photo.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        keys.append(f"{sha[:2]}/{sha[2:4]}/{sha}.jpg")
        store.put_if_absent(keys[-1], data)
    reader = ImageReader(store.url, 5.0)
    refs = [reader.ref(f"images/{key}") for key in keys] + [reader.ref("images/00/00/" + "0" * 64 + ".jpg")]
    loaded = load_model("tf_efficientnet_lite0", lite0_checkpoint, device="cpu")
    result = predict_logits(loaded, refs, workers=1, batch_size=2)
    assert list(result.errors) == [3]
    assert (
        result.errors[3]
        == f"unreadable image: MissingObject: image store {store.url}: missing object 00/00/{'0' * 64}.jpg"
    )
    assert not (result.logits[:3] != result.logits[:3]).any()  # the stored three scored
    records = HashTask(2).run([(str(k), ref) for k, ref in enumerate(refs)])
    missing = f"image store {store.url}: missing object 00/00/{'0' * 64}.jpg"
    assert [error for *_, error in records] == [None, None, None, missing]


def test_unreachable_store_is_one_line(crawled, s3_env, lite0_checkpoint, monkeypatch, capsys):
    """A server that is down: every reading stage stops with one line before any work; the filter's
    loader, when the store goes away under it, stops with one line too."""
    from curation.inference import load_model, predict_logits
    from curation.store.reader import ImageReader, ReadFailed

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CURATION_STORAGE_IMAGES", "s3://images/down")
    monkeypatch.setenv("CURATION_STORAGE_RETRY_SECONDS", "0.5")
    common = ["--db", str(crawled / "local.sqlite"), "--data-dir", str(crawled / "down")]
    for stage in (["dedup"], ["release", str(crawled / "down-out")]):
        capsys.readouterr()
        assert main([*common, *stage]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(
            "curation: error: storage preflight failed on the driver: cannot list in s3://images/down"
        )
        assert "cannot reach the server at http://127.0.0.1:9" in err and "\n" not in err
    loaded = load_model("tf_efficientnet_lite0", lite0_checkpoint, device="cpu")
    reader = ImageReader("s3://images/down", 0.5)
    with pytest.raises(ReadFailed) as failed:
        predict_logits(loaded, [reader.ref("images/ab/cd/x.jpg")] * 2, workers=1, batch_size=2)
    assert (
        str(failed.value)
        == "image store s3://images/down: cannot reach the server at http://127.0.0.1:9: connection failed (is it running?)"
    )
