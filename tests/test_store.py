"""The image store interface on a local folder and on a real S3 server (SeaweedFS on loopback):
every operation, create-only semantics, the bad-input lines and the preflight."""

from __future__ import annotations

import hashlib
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from curation import options, storage
from curation.config import Settings
from curation.errors import CurationError
from curation.store import ImageStore, MissingObject, SizeMismatch, StoreError, image_key, open_images, open_store
from curation.store.preflight import PREFLIGHT_FOLDER, preflight
from tests.conftest import SAMPLES
from tests.seaweed_server import SECRET_KEY, SeaweedServer

A = "ab/cd/" + "abcd" + "0" * 60 + ".jpg"
B = "ab/ce/" + "abce" + "1" * 60 + ".png"
C = "ac/00/" + "ac00" + "2" * 60 + ".jpg"


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    """An empty store: a folder in the test's tmp dir, or a fresh prefix in the S3 server's bucket."""
    if request.param == "file":
        return open_store(str(tmp_path / "data" / "images"))
    request.getfixturevalue("s3_env")
    return open_store(f"s3://images/t-{uuid.uuid4().hex[:12]}/images", retry_seconds=2)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and SECRET_KEY not in message and "wrong-secret" not in message
    return message


def test_put_if_absent_get_head_exists(store: ImageStore) -> None:
    assert store.head(A) is None and not store.exists(A)
    assert store.put_if_absent(A, b"first bytes") is True
    assert store.put_if_absent(A, b"first bytes") is False  # already stored: same size counts as stored
    assert store.get(A) == b"first bytes"
    assert store.head(A) == len(b"first bytes") and store.exists(A)


def test_concurrent_puts_of_one_key(store: ImageStore) -> None:
    """A re-run or a second worker storing the same image at once: every put succeeds, the object is
    whole; on S3 exactly one of them created it (If-None-Match: *), on a local disk one or more
    renamed the same bytes into place."""
    data = bytes(range(256)) * 800
    with ThreadPoolExecutor(16) as pool:
        created = list(pool.map(lambda _: store.put_if_absent(A, data), range(16)))
    assert (sum(created) == 1) if store.url.startswith("s3://") else (sum(created) >= 1)
    assert store.get(A) == data


def test_size_mismatch_is_an_error_and_keeps_the_stored_bytes(store: ImageStore) -> None:
    store.put_if_absent(A, b"stored")
    with pytest.raises(SizeMismatch) as exc:
        store.put_if_absent(A, b"other bytes")
    assert f"{A} is stored with 6 bytes, not the 11 being put; left as it is" in one_line(exc)
    assert store.get(A) == b"stored"


def test_get_range(store: ImageStore) -> None:
    store.put_if_absent(A, b"0123456789")
    assert store.get_range(A, 0, 4) == b"0123"
    assert store.get_range(A, 3, 5) == b"34"
    assert store.get_range(A, 8, 100) == b"89"  # cut at the end
    assert store.get_range(A, 10, 20) == b""  # past the end
    assert store.get_range(A, 5, 5) == b""
    with pytest.raises(MissingObject):
        store.get_range(B, 0, 4)


def test_list_by_prefix(store: ImageStore) -> None:
    for key, data in ((A, b"a"), (B, b"bb"), (C, b"ccc")):
        store.put_if_absent(key, data)
    assert sorted(store.list()) == [(A, 1), (B, 2), (C, 3)]
    assert sorted(store.list("ab")) == [(A, 1), (B, 2)]
    assert list(store.list("ab/ce")) == [(B, 2)]
    assert list(store.list("a")) == []  # whole path segments only
    assert list(store.list("ff")) == []


def test_delete_then_a_missing_object_is_one_line(store: ImageStore) -> None:
    store.put_if_absent(A, b"bytes")
    store.delete(A)
    store.delete(A)  # nothing there: nothing happens
    assert store.head(A) is None
    with pytest.raises(MissingObject) as exc:
        store.get(A)
    assert one_line(exc) == f"image store {store.url}: missing object {A}"


@pytest.mark.parametrize("key", ["", "../x", "/abs", "ab//cd", "ab/./cd", "ab\\cd"])
def test_a_bad_key_is_refused(store: ImageStore, key: str) -> None:
    with pytest.raises(StoreError, match="bad key"):
        store.put_if_absent(key, b"x")


def test_file_store_writes_todays_layout(tmp_path: Path) -> None:
    """file:// under data_dir/images is the data directory's layout (``Image.path``), byte for byte, and
    leaves no temp file."""
    data = (SAMPLES / "n01498041.JPEG").read_bytes()
    image = storage.validate(data)
    data_dir = tmp_path / "data"
    store = open_images(Settings(data_dir=data_dir))
    assert store.url == (data_dir / "images").absolute().as_uri()
    assert store.put_if_absent(image_key(image.sha256, image.ext), data) is True
    assert (data_dir / image.relative_path).read_bytes() == data
    assert [p.name for p in (data_dir / storage.STAGING).iterdir()] == []


def test_storage_options(tmp_path: Path, s3_env: SeaweedServer) -> None:
    settings = Settings(data_dir=tmp_path, toml={"storage": {"images": "s3://images/from-config", "retry_seconds": 5}})
    options.check_tables(settings.toml, "test")
    assert open_images(settings).url == "s3://images/from-config"
    assert open_images(settings, {"images": str(tmp_path / "x")}).url == (tmp_path / "x").as_uri()
    with pytest.raises(CurationError, match=r"unknown key \[storage\] image "):
        options.check_tables({"storage": {"image": "s3://images"}}, "test")
    with pytest.raises(CurationError, match="retry_seconds must be positive"):
        open_images(Settings(data_dir=tmp_path, toml={"storage": {"retry_seconds": 0}}))


def test_gs_and_az_stores_are_obstores_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built offline (no request is sent); no server for them here, so only their URLs are checked."""
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_NAME", raising=False)
    assert open_store("gs://bucket/pre/images").beside("x").url == "gs://bucket/pre/x"
    with pytest.raises(CurationError) as exc:
        open_store("az://container/images")
    assert one_line(exc) == (
        "image store az://container/images: cannot configure the client: Generic MicrosoftAzure error: "
        "Account must be specified"
    )
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "account")
    assert open_store("az://container/images").beside("x").url == "az://container/x"


def test_beside_is_outside_the_image_prefix(tmp_path: Path, s3_env: SeaweedServer) -> None:
    assert open_store("s3://images/run/imgs").beside("x").url == "s3://images/run/x"
    assert open_store("s3://images/imgs").beside("x").url == "s3://images/x"
    assert open_store(f"file://{tmp_path}/data/images").beside("x").url == (tmp_path / "data" / "x").as_uri()


# ----------------------------------------------------------------------------- bad input, one line each


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "ftp://host/images",
            "image store ftp://host/images: unknown scheme ftp:// (known: file://, s3://, gs://, az://)",
        ),
        ("s3:///images", "image store s3:///images: no bucket, e.g. s3://bucket/prefix"),
        ("file://relative/images", "image store file://relative/images: a file URL needs an absolute path"),
        ("s3://images/p?endpoint=x", "image store s3://images/p?endpoint=x: no ?query or #fragment"),
    ],
)
def test_a_bad_url_is_one_line(url: str, message: str) -> None:
    with pytest.raises(CurationError) as exc:
        open_store(url)
    assert one_line(exc).startswith(message)


def test_a_missing_bucket_is_one_line(s3_env: SeaweedServer) -> None:
    store = open_store("s3://no-such-bucket/images")
    with pytest.raises(StoreError) as exc:
        store.get(A)
    expected = f"image store s3://no-such-bucket/images: bucket no-such-bucket does not exist at {s3_env.endpoint}"
    assert one_line(exc) == expected
    with pytest.raises(StoreError, match="bucket no-such-bucket does not exist"):
        list(store.list())


def test_a_server_down_is_one_line(s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    store = open_store("s3://images/p", retry_seconds=0.5)
    started = time.monotonic()
    with pytest.raises(StoreError) as exc:
        store.put_if_absent(A, b"x")
    assert (
        one_line(exc)
        == f"image store s3://images/p: cannot reach the server at {closed}: connection failed (is it running?)"
    )
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        (
            "AWS_SECRET_ACCESS_KEY",
            "wrong-secret",
            "wrong secret key (SignatureDoesNotMatch): check AWS_SECRET_ACCESS_KEY",
        ),
        ("AWS_ACCESS_KEY_ID", "nobody", "unknown access key (InvalidAccessKeyId): check AWS_ACCESS_KEY_ID"),
    ],
)
def test_wrong_credentials_are_one_line(
    s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(variable, value)
    store = open_store("s3://images/p")
    for operation in (lambda: store.put_if_absent(A, b"x"), lambda: store.get(A), lambda: list(store.list())):
        with pytest.raises(StoreError) as exc:
            operation()
        assert one_line(exc) == f"image store s3://images/p: {reason}"


def test_no_credentials_is_one_line(tmp_path: Path, s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(StoreError) as exc:
        open_store("s3://images/p", retry_seconds=0.5).get(A)
    assert one_line(exc) == (
        "image store s3://images/p: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
        "or give the machine a role (the instance metadata service did not answer)"
    )


# ----------------------------------------------------------------------------- preflight


def test_preflight_leaves_nothing(store: ImageStore) -> None:
    store.put_if_absent(A, b"an image")
    preflight(store)
    preflight(store, node="10.0.0.7 (node 1)")
    assert list(store.list()) == [(A, 8)]
    assert list(store.beside(PREFLIGHT_FOLDER).list()) == []


def test_preflight_names_the_node_and_the_reason(s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CurationError) as exc:
        preflight(open_store("s3://no-such-bucket/images"), node="node-a")
    assert one_line(exc) == (
        "storage preflight failed on node-a: cannot list in s3://no-such-bucket/images: "
        f"bucket no-such-bucket does not exist at {s3_env.endpoint}"
    )
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(CurationError) as exc:
        preflight(open_store("s3://images/p"), node="node-b")
    assert one_line(exc) == (
        "storage preflight failed on node-b: cannot list in s3://images/p: "
        "wrong secret key (SignatureDoesNotMatch): check AWS_SECRET_ACCESS_KEY"
    )


def test_preflight_on_a_folder_it_cannot_write(tmp_path: Path) -> None:
    (tmp_path / PREFLIGHT_FOLDER).write_text("a file where the preflight folder goes")
    with pytest.raises(CurationError) as exc:
        preflight(open_store(str(tmp_path / "images")))
    assert one_line(exc).startswith(
        f"storage preflight failed on driver: cannot write in {(tmp_path / 'images').as_uri()}: "
    )


def test_sha_named_keys() -> None:
    from curation.store import sha_of_key

    sha = hashlib.sha256(b"x").hexdigest()
    assert sha_of_key(image_key(sha, "jpg")) == sha
    assert sha_of_key(f"{sha[:2]}/00/{sha}.jpg") is None
    assert sha_of_key(".catalog-id") is None


def test_an_aws_profile_gives_the_credentials(
    tmp_path: Path, s3_env: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.seaweed_server import ACCESS_KEY

    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = wrong-secret\n"
        f"[seaweed]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "seaweed")
    store = open_store(f"s3://images/profile-{uuid.uuid4().hex[:12]}")
    assert store.put_if_absent(A, b"via a profile") and store.get(A) == b"via a profile"
    monkeypatch.delenv("AWS_PROFILE")  # then the default profile, whose secret is wrong
    with pytest.raises(StoreError) as exc:
        open_store("s3://images/p").get(A)
    assert one_line(exc).endswith("wrong secret key (SignatureDoesNotMatch): check AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    with pytest.raises(CurationError) as exc:
        open_store("s3://images/p")
    assert one_line(exc) == f"AWS_PROFILE=nobody: no such profile in {credentials}"
