"""`curation storage copy`: file:// -> s3:// -> file:// round trip on a real S3 server (SeaweedFS),
resumable, SHA-256 checked, never overwriting other bytes; `curation storage check` (the preflight)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from curation import storage
from curation.store import image_key, open_store
from tests.conftest import SAMPLES, VAL
from tests.seaweed_server import SeaweedServer

PHOTOS = ("n01498041.JPEG", "n01531178.JPEG", "n01534433.JPEG")


def fill(folder: Path) -> dict[str, bytes]:
    """Three real photos under their content addresses, and the catalog's owner file (not an image)."""
    store = open_store(str(folder))
    stored = {}
    for name in PHOTOS:
        data = (SAMPLES / name).read_bytes()
        image = storage.validate(data)
        stored[image_key(image.sha256, image.ext)] = data
        store.put_if_absent(image_key(image.sha256, image.ext), data)
    (folder / storage.OWNER_FILE).write_text("catalog\n")
    return stored


def test_round_trip_file_s3_file(tmp_path: Path, s3_env: SeaweedServer, run_cli) -> None:
    stored = fill(tmp_path / "a" / "images")
    bucket = f"s3://images/copy-{uuid.uuid4().hex[:12]}/images"
    there = run_cli("storage", "copy", str(tmp_path / "a" / "images"), bucket)
    assert there.returncode == 0, there.stderr
    assert there.stdout.startswith("storage copy: 3 copied, 0 already there, 1 other keys skipped, 0 refused;")
    assert sorted(open_store(bucket).list()) == sorted((k, len(v)) for k, v in stored.items())

    back = run_cli("storage", "copy", bucket, f"file://{tmp_path}/b/images")
    assert back.returncode == 0, back.stderr
    copied = tmp_path / "b" / "images"
    files = {p.relative_to(copied).as_posix(): p.read_bytes() for p in copied.rglob("*") if p.is_file()}
    assert files == stored  # byte for byte, today's layout, no owner file copied

    # Resumable: one object lost at the destination is copied again, the others are checked and kept.
    open_store(bucket).delete(next(iter(stored)))
    again = run_cli("storage", "copy", str(tmp_path / "a" / "images"), bucket)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("storage copy: 1 copied, 2 already there, 1 other keys skipped, 0 refused;")


def test_other_bytes_are_refused_and_kept(tmp_path: Path, s3_env: SeaweedServer, run_cli) -> None:
    stored = fill(tmp_path / "a" / "images")
    first, second, third = sorted(stored)
    target = open_store(str(tmp_path / "b" / "images"))
    target.put_if_absent(first, b"shorter")  # other size at the destination
    target.put_if_absent(second, bytes(len(stored[second])))  # same size, other bytes
    result = run_cli("storage", "copy", str(tmp_path / "a" / "images"), str(tmp_path / "b" / "images"))
    assert result.returncode == 1
    assert result.stdout.startswith("storage copy: 1 copied, 0 already there, 1 other keys skipped, 2 refused;")
    [line] = result.stderr.splitlines()
    assert line.startswith("curation: error: storage copy refused 2 objects: ") and line.endswith("(and 1 more)")
    assert target.get(first) == b"shorter" and target.get(second) == bytes(len(stored[second]))
    assert target.get(third) == stored[third]


def test_a_source_object_that_does_not_match_its_key_is_refused(tmp_path: Path, run_cli) -> None:
    source = open_store(str(tmp_path / "a"))
    key = image_key(hashlib.sha256(b"what the key names").hexdigest(), "jpg")
    source.put_if_absent(key, b"other bytes")
    result = run_cli("storage", "copy", str(tmp_path / "a"), str(tmp_path / "b"))
    assert result.returncode == 1
    assert f"{key}: its bytes do not hash to the SHA-256 its key names" in result.stderr
    assert not (tmp_path / "b" / key).exists()


def test_copy_bad_input_is_one_line(tmp_path: Path, run_cli) -> None:
    result = run_cli("storage", "copy", str(tmp_path / "a"), "ftp://x/images")
    assert result.returncode == 1
    assert (
        result.stderr
        == "curation: error: image store ftp://x/images: unknown scheme ftp:// (known: file://, s3://, gs://, az://)\n"
    )
    result = run_cli("storage", "copy", str(tmp_path / "a"), f"file://{tmp_path}/a")
    assert (
        result.stderr
        == f"curation: error: storage copy: {(tmp_path / 'a').as_uri()} is both the source and the destination\n"
    )


def test_check(tmp_path: Path, s3_env: SeaweedServer, run_cli, monkeypatch) -> None:
    node = socket.gethostname()
    ok = run_cli("storage", "check", "s3://images/checked")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"storage check: s3://images/checked: {node} can list, write, read and delete\n"
    assert list(open_store("s3://images/_curation-preflight").list()) == []
    default = run_cli("--data-dir", str(tmp_path / "d"), "storage", "check")
    assert default.stdout.startswith(f"storage check: {(tmp_path / 'd' / 'images').as_uri()}: "), default.stderr
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    bad = run_cli("storage", "check", "s3://images/checked")
    assert bad.returncode == 1
    assert bad.stderr == (
        f"curation: error: storage preflight failed on {node}: cannot list in s3://images/checked: "
        "wrong secret key (SignatureDoesNotMatch): check AWS_SECRET_ACCESS_KEY\n"
    )


def _fill_many(folder: Path, count: int) -> dict[str, str]:
    """``count`` real photos (ImageNet val) under their content addresses: key -> SHA-256."""
    store = open_store(str(folder))
    keys = {}
    for path in sorted(VAL.glob("*.JPEG"))[:count]:
        data = path.read_bytes()
        image = storage.validate(data)
        keys[image_key(image.sha256, image.ext)] = image.sha256
        store.put_if_absent(image_key(image.sha256, image.ext), data)
    return keys


@pytest.mark.parametrize("scheme", ["s3", "file"])
def test_kill_9_mid_copy_then_a_rerun_completes_it(tmp_path: Path, s3_env: SeaweedServer, run_cli, scheme) -> None:
    """A copy killed with SIGKILL leaves only whole objects under the destination's prefix (S3 puts are
    atomic; file:// writes go to a staging folder beside it and are renamed); the rerun copies the rest."""
    keys = _fill_many(tmp_path / "src" / "images", 300)
    target = f"s3://images/kill-{uuid.uuid4().hex[:12]}/images" if scheme == "s3" else f"file://{tmp_path}/dst/images"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATION_")}
    argv = [sys.executable, "-m", "curation", "storage", "copy", str(tmp_path / "src" / "images"), target]
    copier = subprocess.Popen([*argv, "--workers", "1"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    store = open_store(target)
    deadline = time.monotonic() + 120
    while len(list(store.list())) < 20 and copier.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    copier.kill()
    assert copier.wait() == -signal.SIGKILL  # killed mid-copy, not finished
    before = dict(store.list())
    assert 20 <= len(before) < len(keys)
    for key in before:  # nothing partial under the prefix: every object is a whole image under its own hash
        assert hashlib.sha256(store.get(key)).hexdigest() == keys[key]
    again = run_cli("storage", "copy", str(tmp_path / "src" / "images"), target)
    assert again.returncode == 0, again.stderr
    copied = len(keys) - len(before)
    assert again.stdout.startswith(f"storage copy: {copied} copied, {len(before)} already there, 0 other keys skipped")
    assert {key for key, _ in store.list()} == set(keys)
