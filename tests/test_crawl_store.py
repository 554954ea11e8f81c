"""The crawl into an image store URL: ``s3://`` on a real S3 server (SeaweedFS on loopback) gives the
catalog rows and keys ``file://`` gives; kill -9 at three points of the write protocol then a rerun
leaves no orphan and loses nothing; a store the crawl cannot use is one line before anything is written."""

from __future__ import annotations

import hashlib
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from curation.crawl import crawl
from curation.errors import CurationError
from curation.store import image_key, open_store, sha_of_key
from tests.conftest import REPO
from tests.replay_server import JPEG, ReplayServer, Reply, photo_for
from tests.seaweed_server import SeaweedServer
from tests.test_crawl_download import GOLDFINCH, STINGRAY, settings_for, write_list


def s3_url() -> str:
    return f"s3://images/crawl-{uuid.uuid4().hex[:12]}/images"


def serve(server: ReplayServer, n: int) -> list[tuple[str, str]]:
    """``n`` photos, every fifth a 404 and one broken; one URL for two classes, two URLs with one photo."""
    server.prefix("/img/", lambda path, _q: Reply(body=photo_for(path), headers=JPEG))
    server.route("/same/a.jpg", Reply(body=photo_for("same"), headers=JPEG))
    server.route("/same/b.jpg", Reply(body=photo_for("same"), headers=JPEG))
    server.route("/broken.jpg", Reply(body=photo_for("broken")[:300], headers=JPEG))
    rows = [(f"{server.base}/{'img' if i % 5 else 'gone'}/{i}.jpg", (STINGRAY, GOLDFINCH)[i % 2]) for i in range(n)]
    rows += [(f"{server.base}/img/1.jpg", STINGRAY), (f"{server.base}/broken.jpg", STINGRAY)]
    return rows + [(f"{server.base}/same/{name}.jpg", GOLDFINCH) for name in "ab"]


def catalog(root: Path, base: str) -> dict[str, list[tuple]]:
    con = sqlite3.connect(root / "c.sqlite")
    try:
        candidates = con.execute(
            "SELECT wnid, url, status, reason, image_sha256, final_url, attempts FROM candidates"
        ).fetchall()
        images = con.execute("SELECT sha256, path, width, height, format, bytes, mode, multi_class FROM images")
        return {
            "candidates": sorted(
                tuple(v.replace(base, "BASE") if isinstance(v, str) else v for v in r) for r in candidates
            ),
            "images": sorted(images.fetchall()),
        }
    finally:
        con.close()


def image_keys(url: str) -> set[str]:
    """Every key under the image prefix (the owner marker ``.catalog-id`` aside)."""
    keys = {key for key, _ in open_store(url).list()}
    assert keys - {".catalog-id"} == {key for key in keys if sha_of_key(key)}, keys  # nothing else there
    return keys - {".catalog-id"}


def journals(root: Path) -> list[str]:
    """The lines of every write journal left in the data directory."""
    return [line for path in (root / "data" / ".staging").glob("*.journal") for line in path.read_text().split()]


def test_crawl_into_s3_records_what_file_records_and_a_mismatched_object_is_the_items_error(
    tmp_path: Path, s3_env: SeaweedServer
) -> None:
    results, urls = {}, {"file": None, "s3": s3_url()}
    for name, url in urls.items():
        root = tmp_path / name
        root.mkdir()
        settings = settings_for(root)
        if url:
            settings.toml["storage"] = {"images": url}
        with ReplayServer() as server:
            summary = crawl(settings, urls=write_list(root / "list.csv", serve(server, 20)))
            results[name] = (summary.outcomes, summary.reasons, catalog(root, server.base))
        urls[name] = url or (root / "data" / "images").as_uri()
        assert journals(root) == []
    assert results["s3"] == results["file"]
    rows = results["file"][2]
    assert len(rows["images"]) == 17 and results["file"][1][("failed", "http_404")] == 4
    keys = {path.removeprefix("images/") for _, path, *_ in rows["images"]}
    assert image_keys(urls["s3"]) == image_keys(urls["file"]) == keys
    assert list(open_store(urls["s3"]).beside("_curation-preflight").list()) == []  # the check left nothing
    assert sorted(p.name for p in (tmp_path / "file" / "data").iterdir()) == [".crawl.lock", ".staging", "images"]

    # An object already at an image's key with other bytes: the item fails, the object stays as it was.
    taken = photo_for("taken")
    key = image_key(hashlib.sha256(taken).hexdigest(), "jpg")
    open_store(urls["s3"]).put_if_absent(key, b"other bytes")
    settings = settings_for(tmp_path / "s3")
    settings.toml["storage"] = {"images": urls["s3"]}
    with ReplayServer() as server:
        server.route("/taken.jpg", Reply(body=taken, headers=JPEG))
        summary = crawl(settings, urls=write_list(tmp_path / "taken.csv", [(f"{server.base}/taken.jpg", STINGRAY)]))
    assert summary.reasons == {("failed", "store_mismatch"): 1}
    assert open_store(urls["s3"]).get(key) == b"other bytes" and journals(tmp_path / "s3") == []
    con = sqlite3.connect(tmp_path / "s3" / "c.sqlite")
    (error,) = con.execute("SELECT last_error FROM candidates WHERE reason = 'store_mismatch'").fetchone()
    assert error == f"{key} is stored with 11 bytes, not the {len(taken)} being put; left as it is"


# A crawl (the CLI's main) that kills itself with SIGKILL at one point of the write protocol, at the
# Nth time it gets there: before a put (key journaled, no object), after a put (an object the catalog
# does not know), or after a commit (catalogued keys still journaled).
KILLED_CRAWL = textwrap.dedent(
    """
    import itertools, os, signal, sys
    import curation.crawl.pipeline as pipeline
    from curation import storage
    from curation.cli import main

    point, nth, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    calls, put, recorded = itertools.count(1), pipeline.put, storage.WriteJournal.recorded

    def die_here():
        if next(calls) == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    def killing_put(store, accepted):
        if point == "before-put":
            die_here()
        outcome = put(store, accepted)
        if point == "after-put":
            die_here()
        return outcome

    def killing_recorded(journal, keys):
        keys = list(keys)
        if point == "after-commit" and keys:
            die_here()
        return recorded(journal, keys)

    pipeline.put, storage.WriteJournal.recorded = killing_put, killing_recorded
    sys.exit(main(argv))
    """
)


def test_kill_9_at_three_points_then_a_rerun_leaves_the_store_equal_to_the_catalog(
    tmp_path: Path, s3_env: SeaweedServer
) -> None:
    url = s3_url()
    config = tmp_path / "curation.toml"
    config.write_text(
        f'[storage]\nimages = "{url}"\n[crawl]\nallow_private_hosts = true\nconcurrency = 4\nretries = 0\n'
        'contact = "t@e.org"\n'
    )
    with ReplayServer(latency=0.02) as server:
        listing = write_list(tmp_path / "list.csv", serve(server, 60))
        cli = ["--config", str(config), "--db", str(tmp_path / "c.sqlite"), "--data-dir", str(tmp_path / "data")]
        cli += ["crawl", "--urls", str(listing)]
        removed = []
        for point, nth in (("after-put", 6), ("before-put", 4), ("after-commit", 1)):
            killed = subprocess.run(
                [sys.executable, "-c", KILLED_CRAWL, point, str(nth), *cli], cwd=REPO, capture_output=True, text=True
            )
            assert killed.returncode == -signal.SIGKILL, (point, killed.stdout, killed.stderr)
            removed += [line for line in killed.stderr.splitlines() if "unrecorded images" in line]
            assert journals(tmp_path)  # each run died with keys in flight
        settings = settings_for(tmp_path)
        settings.toml["storage"] = {"images": url}
        summary = crawl(settings, urls=listing)
    counts = [int(re.search(r"removed 0 partial and (\d+) unrecorded images", line).group(1)) for line in removed]
    assert counts and counts[0] > 0  # the after-put objects, deleted by the next run
    con = sqlite3.connect(tmp_path / "c.sqlite")
    paths = {path.removeprefix("images/") for (path,) in con.execute("SELECT path FROM images")}
    statuses = dict(con.execute("SELECT status, count(*) FROM candidates GROUP BY status").fetchall())
    assert image_keys(url) == paths and len(paths) == 49  # no orphan, nothing lost
    assert statuses == {"downloaded": 51, "failed": 13} and summary.outcomes["downloaded"] < 51
    assert journals(tmp_path) == []


@pytest.mark.parametrize("case", ["unknown scheme", "bucket missing", "server down", "wrong key"])
def test_a_store_the_crawl_cannot_use_is_one_line_and_nothing_is_written(
    case: str, tmp_path: Path, s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, expected = {
        "unknown scheme": ("ftp://host/images", "image store ftp://host/images: unknown scheme ftp://"),
        "bucket missing": ("s3://no-such-bucket/images", "cannot list in s3://no-such-bucket/images: bucket no-such-bucket does not exist"),
        "server down": ("s3://images/down", "cannot list in s3://images/down: cannot reach the server at http://127.0.0.1:9"),
        "wrong key": ("s3://images/denied", "wrong secret key (SignatureDoesNotMatch): check AWS_SECRET_ACCESS_KEY"),
    }[case]  # fmt: skip
    if case == "server down":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    if case == "wrong key":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    settings = settings_for(tmp_path)
    settings.toml["storage"] = {"images": url, "retry_seconds": 0.5}
    with pytest.raises(CurationError) as exc:
        crawl(settings, urls=write_list(tmp_path / "list.csv", [("http://127.0.0.1:9/a.jpg", STINGRAY)]))
    assert expected in str(exc.value) and "\n" not in str(exc.value) and "wrong-secret" not in str(exc.value)
    assert case == "unknown scheme" or str(exc.value).startswith("storage preflight failed on the driver: ")
    assert not (tmp_path / "c.sqlite").exists() and not (tmp_path / "data").exists()


def test_the_cli_exits_1_with_the_line(tmp_path: Path, run_cli) -> None:
    result = run_cli(
        "--db", str(tmp_path / "c.sqlite"), "crawl", "--urls", "list.csv", env={"CURATION_STORAGE_IMAGES": "gs:///x"}
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "curation: error: image store gs:///x: no bucket, e.g. gs://bucket/prefix\n"
