"""Kill -9 of a writer into a real S3 server (SeaweedFS), then recover: the journaled objects the
catalog does not know are deleted, the committed ones stay, and the store is never listed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from curation.store import ImageStore, open_store
from curation.store.recovery import open_journal, recover
from tests.conftest import REPO
from tests.seaweed_server import SeaweedServer

BATCH = 8
# A writer: each batch is journaled, put (8 threads) and committed (a line per key in committed.txt,
# the stand-in catalog), then dropped from the journal. After 3 batches it journals and puts a 4th
# and journals 2 keys it never puts, then waits to be killed with all of them in flight.
WRITER = textwrap.dedent(
    """
    import hashlib, os, sys, time
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path
    from curation.store import image_key, open_store
    from curation.store.recovery import open_journal

    url, data_dir = sys.argv[1], Path(sys.argv[2])
    store, journal = open_store(url), open_journal(data_dir, "catalog")
    committed = open(data_dir / "committed.txt", "a")
    def blob(i):
        data = f"image {i} ".encode() * 100
        return image_key(hashlib.sha256(data).hexdigest(), "jpg"), data
    with ThreadPoolExecutor(8) as pool:
        for batch in range(4):
            items = [blob(batch * BATCH + j) for j in range(BATCH)]
            for key, _ in items:
                journal.begin(key)
            list(pool.map(lambda item: store.put_if_absent(*item), items))
            if batch == 3:
                for key, _ in [blob(1000), blob(1001)]:
                    journal.begin(key)
                (data_dir / "in-flight").touch()
                time.sleep(600)
            committed.write("".join(key + "\\n" for key, _ in items))
            committed.flush()
            os.fsync(committed.fileno())
            journal.recorded(key for key, _ in items)
    """
).replace("BATCH", str(BATCH))


def test_kill_9_then_recover_deletes_exactly_the_unrecorded(
    tmp_path: Path, s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"s3://images/recover-{uuid.uuid4().hex[:12]}/images"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url, str(tmp_path)], cwd=REPO, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "in-flight").exists():
            assert writer.poll() is None, "the writer died"
            assert time.monotonic() < deadline, "the writer never reached its 4th batch"
            time.sleep(0.05)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    store = open_store(url)
    committed = set((tmp_path / "committed.txt").read_text().split())
    before = {key for key, _ in store.list()}
    assert len(committed) == 3 * BATCH and committed < before and len(before - committed) == BATCH

    def no_listing(prefix: str = "") -> None:
        raise AssertionError("recover listed the store")

    monkeypatch.setattr(store, "list", no_listing)
    asked: list[list[str]] = []
    removed = recover(store, tmp_path, "catalog", lambda keys: asked.append(keys) or set(keys) & committed)
    assert removed == BATCH
    assert len(asked) == 1 and len(asked[0]) == BATCH + 2  # the in-flight batch and the 2 never put
    monkeypatch.undo()
    assert {key for key, _ in store.list()} == committed  # 0 orphans, 0 lost
    assert list((tmp_path / ".staging").glob("*.journal")) == []
    assert recover(store, tmp_path, "catalog", lambda keys: set()) == 0  # nothing journaled any more


def test_store_journals_are_not_curation_storage_journals(tmp_path: Path) -> None:
    """curation.storage.recover (data_dir-relative paths) leaves the store's journals alone."""
    from curation import storage

    journal = open_journal(tmp_path, "catalog")
    journal.begin("ab/cd/key.jpg")
    journal.close()
    assert storage.recover(tmp_path, "catalog", lambda paths: set()) == (0, 0)
    assert journal.path.read_text() == "ab/cd/key.jpg\n"
    store: ImageStore = open_store(str(tmp_path / "images"))
    store.put_if_absent("ab/cd/key.jpg", b"x")
    assert recover(store, tmp_path, "catalog", lambda keys: set()) == 1
    assert not store.exists("ab/cd/key.jpg") and not journal.path.exists()
