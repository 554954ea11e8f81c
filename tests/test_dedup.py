"""Dedup stage on real photos: edited copies found, distinct photos kept apart, survivors chosen
by the documented rule, leaks against a reference set, kill -9 while hashing a reference folder."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, SAMPLES, VAL
from PIL import Image
from sqlalchemy import func, select

from curation import catalog as cat
from curation.dedup import DEFAULT_DHASH_MARGIN, DEFAULT_MAX_DISTANCE, DEFAULT_MAX_DISTANCES, licence_rank, run_stage
from curation.hamming_index import HammingIndex, brute_force_search
from curation.hashing import (
    ORIENTATIONS,
    bits_to_int,
    hash_file,
    hash_image,
    load_for_hashing,
    pack_extra,
    unpack_extra,
)
from tests.replay_server import JPEG, ReplayServer, Reply

sys.path.insert(0, str(REPO / "benchmarks"))
from dedup_thresholds import VARIANTS, shared_photos, variant_bytes  # noqa: E402

WNIDS = ("n01498041", "n01531178", "n01534433", "n01558993")
# Edits the default threshold does not always catch (see README: DCT hashes are not shift- or
# rotation-invariant), with the detection rate measured on all 1,500 shared photos at the default
# threshold of each orientation setting (pHash <= 10 with 2 orientations, <= 8 with 8).
PARTLY_CAUGHT = {
    2: {"crop_5pct": 0.55, "rotate_3deg": 0.83},
    8: {"crop_2pct": 0.93, "crop_5pct": 0.31, "rotate_1deg": 0.98, "rotate_3deg": 0.63, "watermark": 0.92},
}
# Turned and upside-down copies: found only when all 8 orientations are queried (none of 1,500 with 2).
TURNED = ("rot90", "rot180", "rot270", "vflip")


def add_image(
    session,
    data_dir: Path,
    data: bytes,
    wnid: str = WNIDS[0],
    licence: str | None = None,
    found: datetime | None = None,
) -> str:
    """Store image bytes as the crawl would: a file named by SHA-256, an Image and a Candidate row."""
    sha = hashlib.sha256(data).hexdigest()
    rel = Path("images") / sha[:2] / f"{sha}.jpg"
    (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    (data_dir / rel).write_bytes(data)
    with Image.open(io.BytesIO(data)) as img:
        width, height, fmt, mode = img.width, img.height, img.format, img.mode
    if session.get(cat.Image, sha) is None:
        session.add(
            cat.Image(
                sha256=sha, path=rel.as_posix(), width=width, height=height, format=fmt, bytes=len(data), mode=mode
            )
        )
        session.flush()
    session.add(
        cat.Candidate(
            wnid=wnid,
            source="test",
            url=f"http://127.0.0.1/{sha}/{wnid}",
            license=licence,
            status=cat.DOWNLOADED,
            image_sha256=sha,
            created_at=found or cat.utcnow(),
        )
    )
    return sha


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def statuses(catalog: cat.Catalog) -> dict[str, cat.DedupStatus]:
    with catalog.session() as session:
        return {row.sha256: row for row in session.scalars(select(cat.DedupStatus))}


def dedup(catalog: cat.Catalog, data_dir: Path, against: list[str] | None = None, orientations: int = 2):
    return run_stage(
        catalog,
        data_dir,
        DEFAULT_MAX_DISTANCES[orientations],
        DEFAULT_DHASH_MARGIN,
        against or [],
        workers=2,
        orientations=orientations,
    )


@pytest.fixture
def catalog(catalog_url: str) -> cat.Catalog:
    return cat.open_catalog(catalog_url)


# --------------------------------------------------------------------------- index and hashes


@pytest.mark.parametrize("radius", [0, 3, 8, 10, 14])
def test_index_finds_exactly_what_brute_force_finds(radius):
    rng = np.random.default_rng(radius)
    codes = rng.integers(0, 2**64, size=50_000, dtype=np.uint64)
    queries = rng.integers(0, 2**64, size=400, dtype=np.uint64)
    # Plant neighbours at every distance up to radius + 2, and exact copies.
    for i in range(200):
        flips = rng.choice(64, size=i % (radius + 3), replace=False)
        queries[i] = codes[i * 7] ^ np.uint64(sum(1 << int(b) for b in flips))
    codes[-5:] = codes[:5]
    got = HammingIndex(codes, radius).search(queries)
    want = brute_force_search(codes, queries, radius)
    as_set = lambda r: set(zip(*(a.tolist() for a in r), strict=True))  # noqa: E731
    assert as_set(got) == as_set(want)
    assert len(got[0]) == len(as_set(got))  # each pair once
    assert len(want[0]) >= 200 * (radius + 1) // (radius + 3)  # the planted ones within reach


def test_draft_decode_hashes_stay_close_to_imagehash_on_full_decodes():
    import imagehash

    photos = sorted(SAMPLES.glob("*.JPEG"))[:40]
    distances = []
    for path in photos:
        with Image.open(path) as img:
            full = bits_to_int(imagehash.phash(img.convert("RGB")).hash)
        distances.append(bin(hash_file(path).phash ^ full).count("1"))
    assert np.median(distances) <= 2 and max(distances) <= 8


def test_each_orientation_hashes_as_imagehash_does_on_the_transposed_image():
    import imagehash

    for path in sorted(VAL.glob("*.JPEG"))[:40]:
        grey = load_for_hashing(path)
        row = hash_image(grey).orientation_row()
        for k, orientation in enumerate(ORIENTATIONS):
            turned = grey if orientation.transpose is None else grey.transpose(orientation.transpose)
            small = turned.resize((32, 32), Image.Resampling.LANCZOS)
            want = [bits_to_int(imagehash.phash(small).hash), bits_to_int(imagehash.dhash(turned).hash)]
            assert row[2 * k : 2 * k + 2] == want, (path.name, orientation.kind)
        two = hash_image(grey, orientations=2)
        assert two.orientation_row()[:4] == row[:4] and two.extra == ()
        assert unpack_extra(pack_extra(tuple(row[4:]))) == tuple(row[4:])


def test_licence_ranking():
    ranks = [
        licence_rank(x)
        for x in (
            "CC0 1.0",
            "cc-by 4.0",
            "CC BY-SA 3.0",
            "cc-by-nd",
            "by-nc",
            "CC BY-NC-SA",
            "CC BY-NC-ND 2.0",
            None,
            "All rights reserved",
        )
    ]
    assert ranks == [0, 1, 2, 3, 4, 5, 6, 7, 7]


# --------------------------------------------------------------------------- the stage on real photos


@pytest.mark.parametrize("orientations", [2, 8])
def test_edited_copies_are_found_at_the_default_threshold(catalog, tmp_path, orientations):
    photos = shared_photos()[::60]  # 25 photos spread over both folders
    originals, copies = {}, {}
    with catalog.session() as session:
        for k, path in enumerate(photos):
            originals[path] = add_image(session, tmp_path, path.read_bytes(), wnid=WNIDS[k % 2])
            for name, data in variant_bytes(path).items():
                copies[(path, name)] = add_image(session, tmp_path, data, wnid=WNIDS[k % 2])
    summary = dedup(catalog, tmp_path, orientations=orientations)
    rows = statuses(catalog)
    cluster_of = {sha: row.cluster_id or sha for sha, row in rows.items()}
    caught = {name: 0 for name in VARIANTS}
    for (path, name), sha in copies.items():
        caught[name] += cluster_of[sha] == cluster_of[originals[path]]
    rates = {name: n / len(photos) for name, n in caught.items()}
    # Every copy of the fully caught kinds; the partly caught ones near their measured rate.
    expected = {name: 1.0 for name in VARIANTS} | {
        name: rate - 0.2 for name, rate in PARTLY_CAUGHT[orientations].items()
    }
    assert all(rates[name] >= expected[name] for name in VARIANTS if name not in TURNED), rates
    assert all(rates[name] == (1.0 if orientations == 8 else 0.0) for name in TURNED), rates
    # No cluster holds two distinct photos (or copies of two).
    photo_of = {sha: path for path, sha in originals.items()} | {sha: path for (path, _), sha in copies.items()}
    members: dict[str, set[Path]] = {}
    for sha, cluster in cluster_of.items():
        members.setdefault(cluster, set()).add(photo_of[sha])
    assert all(len(photos_in) == 1 for photos_in in members.values())
    # With 2 orientations the upside-down copy is the mirror image of the 180° one: they pair up alone.
    if orientations == 2:
        assert summary.clusters == len(photos) * 2
        assert all(cluster_of[copies[(p, "rot180")]] == cluster_of[copies[(p, "vflip")]] for p in photos)
    # Each cluster keeps exactly one representative.
    reps_per_cluster: dict[str, int] = {}
    for sha, row in rows.items():
        reps_per_cluster[cluster_of[sha]] = reps_per_cluster.get(cluster_of[sha], 0) + (
            row.status == cat.REPRESENTATIVE
        )
    assert set(reps_per_cluster.values()) == {1}
    if orientations == 2:  # copies not caught stand alone (at pHash <= 8 some pair among themselves)
        assert len(reps_per_cluster) == len(photos) + sum(len(photos) - n for n in caught.values()) - len(photos)
    with catalog.session() as session:
        links = session.scalars(select(cat.DuplicateLink).where(cat.DuplicateLink.reference.is_(None))).all()
        assert {link.sha256 for link in links} == {sha for sha, row in rows.items() if row.status == cat.DUPLICATE}
        assert all(rows[link.other].status == cat.REPRESENTATIVE for link in links)
        assert any(link.hash_kind == "phash_mirror" for link in links)
        turned_kinds = {link.hash_kind for link in links} - {"phash", "phash_mirror"}
        assert turned_kinds == (
            set() if orientations == 2 else {"phash_rot90", "phash_rot180", "phash_rot270", "phash_vflip"}
        )


def test_no_two_distinct_shared_photos_are_merged_and_rerun_is_idempotent(catalog_url, tmp_path, run_cli):
    catalog = cat.open_catalog(catalog_url)
    photos = shared_photos()
    assert len(photos) == 1500
    with catalog.session() as session:
        for k, path in enumerate(photos):
            add_image(session, tmp_path, path.read_bytes(), wnid=WNIDS[k % 4])
    first = run_cli("--db", catalog_url, "--data-dir", str(tmp_path), "dedup")
    assert first.returncode == 0, first.stderr
    assert "1500 images, 1500 hashed now" in first.stdout and "0 near-duplicate clusters" in first.stdout
    assert "1500 unique and not leaked" in first.stdout
    rows = statuses(catalog)
    assert len(rows) == 1500 and {r.status for r in rows.values()} == {cat.REPRESENTATIVE}
    with catalog.session() as session:
        before = session.execute(select(cat.DedupStatus.sha256, cat.DedupStatus.updated_at)).all()
    second = run_cli("--db", catalog_url, "--data-dir", str(tmp_path), "dedup")
    assert second.returncode == 0, second.stderr
    assert "0 hashed now" in second.stdout
    with catalog.session() as session:
        assert session.execute(select(cat.DedupStatus.sha256, cat.DedupStatus.updated_at)).all() == before
        assert session.scalar(select(func.count()).select_from(cat.PerceptualHash)) == 1500


def _base_photo() -> Image.Image:
    with Image.open(VAL / "ILSVRC2012_val_00000347.JPEG") as img:
        return img.convert("RGB")


@pytest.mark.parametrize(
    "copies, survivor",
    [
        # (size factor, licence, days after the first find) per copy; which copy survives
        ([(1, "CC0", 0), (2, "All rights reserved", 1)], 1),  # the largest resolution first
        ([(1, "CC BY-NC-ND 4.0", 0), (1, "CC BY-SA 4.0", 1), (1, None, 0)], 1),  # then the most open licence
        ([(1, "CC BY 2.0", 2), (1, "CC BY 2.0", 0), (1, "CC BY 2.0", 1)], 1),  # then the earliest found
    ],
)
def test_representative_rule(catalog, tmp_path, copies, survivor):
    base = _base_photo()
    t0 = datetime(2026, 1, 1)
    with catalog.session() as session:
        shas = [
            add_image(
                session,
                tmp_path,
                jpeg(base.resize((base.width * factor, base.height * factor)), 95 - k),
                WNIDS[0],
                licence,
                t0 + timedelta(days=days),
            )
            for k, (factor, licence, days) in enumerate(copies)
        ]
    summary = dedup(catalog, tmp_path)
    assert summary.clusters == 1 and summary.duplicates == len(copies) - 1
    rows = statuses(catalog)
    assert rows[shas[survivor]].status == cat.REPRESENTATIVE
    assert all(rows[s].cluster_id == shas[survivor] for s in shas)
    assert all(rows[s].status == cat.DUPLICATE for k, s in enumerate(shas) if k != survivor)


def test_label_conflict_and_incremental_runs(catalog, tmp_path):
    base = _base_photo()
    with catalog.session() as session:
        first = add_image(session, tmp_path, jpeg(base, 95), WNIDS[0])
        second = add_image(session, tmp_path, jpeg(base, 60), WNIDS[0])
        other = add_image(session, tmp_path, (SAMPLES / "n01498041.JPEG").read_bytes(), WNIDS[1])
    assert dedup(catalog, tmp_path).hashed_now == 3
    rows = statuses(catalog)
    assert rows[first].status == cat.REPRESENTATIVE and rows[second].cluster_id == first
    assert not any(r.label_conflict for r in rows.values())

    # A new, larger copy found for another class: hashed alone, becomes the survivor, conflict flagged.
    with catalog.session() as session:
        big = add_image(session, tmp_path, jpeg(base.resize((base.width * 2, base.height * 2)), 90), WNIDS[2])
    summary = dedup(catalog, tmp_path)
    assert summary.hashed_now == 1 and summary.label_conflicts == 3
    rows = statuses(catalog)
    assert rows[big].status == cat.REPRESENTATIVE
    assert {rows[s].cluster_id for s in (first, second, big)} == {big}
    assert all(rows[s].label_conflict for s in (first, second, big)) and not rows[other].label_conflict
    with catalog.session() as session:
        links = session.scalars(select(cat.DuplicateLink)).all()
        assert {(link.sha256, link.other) for link in links} == {(first, big), (second, big)}
        assert all(link.distance <= DEFAULT_MAX_DISTANCE and link.reference is None for link in links)


def _turned_copies(path: Path) -> tuple[bytes, bytes, bytes]:
    """A photo as a JPEG, turned by 90° (counter-clockwise) and flipped upside down, each saved anew."""
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    return (
        jpeg(rgb, 95),
        jpeg(rgb.transpose(Image.Transpose.ROTATE_90), 90),
        jpeg(rgb.transpose(Image.Transpose.FLIP_TOP_BOTTOM), 90),
    )


def test_turned_and_upside_down_copies_join_the_original_with_8_orientations(catalog_url, tmp_path, run_cli):
    catalog = cat.open_catalog(catalog_url)
    original, turned, upside_down = _turned_copies(VAL / "ILSVRC2012_val_00000347.JPEG")
    t0 = datetime(2026, 1, 1)
    with catalog.session() as session:
        shas = [
            add_image(session, tmp_path, data, found=t0 + timedelta(days=k))
            for k, data in enumerate((original, turned, upside_down))
        ]
        other = add_image(session, tmp_path, (SAMPLES / "n01498041.JPEG").read_bytes(), found=t0)
    cli = ["--db", catalog_url, "--data-dir", str(tmp_path)]
    two = run_cli(*cli, "dedup")  # the default: the image and its mirror only
    assert two.returncode == 0, two.stderr
    assert "0 near-duplicate clusters, 4 representatives" in two.stdout
    assert "(pHash <= 10, dHash <= 14, 2 orientations)" in two.stdout

    (tmp_path / "curation.toml").write_text("[dedup]\norientations = 8\n")
    eight = run_cli(*cli, "dedup")
    assert eight.returncode == 0, eight.stderr
    assert "0 hashed now, 4 given rotated hashes" in eight.stdout
    assert "1 near-duplicate clusters, 2 representatives, 2 duplicates" in eight.stdout
    assert "(pHash <= 8, dHash <= 12, 8 orientations)" in eight.stdout  # the zero-false-pair default for 8
    rows = statuses(catalog)
    assert rows[shas[0]].status == cat.REPRESENTATIVE and rows[other].status == cat.REPRESENTATIVE
    assert all(rows[s].status == cat.DUPLICATE and rows[s].cluster_id == shas[0] for s in shas[1:])
    with catalog.session() as session:
        kinds = dict(session.execute(select(cat.DuplicateLink.sha256, cat.DuplicateLink.hash_kind)).all())
    # The 90° copy is the original once turned by 270°; the upside-down copy, once flipped back.
    assert kinds == {shas[1]: "phash_rot270", shas[2]: "phash_vflip"}

    (tmp_path / "curation.toml").write_text("[dedup]\norientations = 4\n")
    bad = run_cli(*cli, "dedup")
    assert bad.returncode == 1 and bad.stderr.strip() == "curation: error: [dedup] orientations must be 2 or 8, got 4"


def _downgrade(url: str, revision: str) -> None:
    from alembic import command

    engine = cat.make_engine(url)
    config = cat.alembic_config(engine)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def test_hashes_from_before_0004_gain_the_rotated_orientations_and_keep_their_statuses(catalog_url, tmp_path, run_cli):
    catalog = cat.open_catalog(catalog_url)
    original, turned, _ = _turned_copies(VAL / "ILSVRC2012_val_00000347.JPEG")
    with catalog.session() as session:
        first = add_image(session, tmp_path, original)
        copy = add_image(session, tmp_path, jpeg(Image.open(io.BytesIO(original)).resize((200, 150)), 80))
        rotated = add_image(session, tmp_path, turned)
        other = add_image(session, tmp_path, (SAMPLES / "n01498041.JPEG").read_bytes())
    assert dedup(catalog, tmp_path).clusters == 1  # the original and its smaller copy
    with catalog.session() as session:
        hashes_before = session.execute(
            select(cat.PerceptualHash.sha256, cat.PerceptualHash.phash, cat.PerceptualHash.dhash_mirror)
        ).all()
        before = {
            row.sha256: (row.status, row.cluster_id, row.updated_at) for row in session.scalars(select(cat.DedupStatus))
        }
    catalog.engine.dispose()
    _downgrade(catalog_url, "0003")  # as a catalog hashed before revision 0004: no rotated hashes
    assert cat.current_revision(cat.make_engine(catalog_url)) == "0003"

    result = run_cli("--db", catalog_url, "--data-dir", str(tmp_path), "dedup", "--orientations", "8")
    assert result.returncode == 0, result.stderr
    assert "upgrading catalog schema 0003" in result.stderr
    assert "4 images, 0 hashed now, 4 given rotated hashes, 0 unreadable; 1 near-duplicate clusters" in result.stdout
    catalog = cat.open_catalog(catalog_url)
    with catalog.session() as session:
        assert (
            session.execute(
                select(cat.PerceptualHash.sha256, cat.PerceptualHash.phash, cat.PerceptualHash.dhash_mirror)
            ).all()
            == hashes_before
        )
        assert all(len(h) == 96 for h in session.scalars(select(cat.PerceptualHash.orientation_hashes)))
    rows = statuses(catalog)
    # The turned copy joins the cluster; the others keep their rows untouched.
    assert rows[rotated].status == cat.DUPLICATE and rows[rotated].cluster_id == first
    for sha in (first, copy, other):
        assert (rows[sha].status, rows[sha].cluster_id, rows[sha].updated_at) == before[sha]
    again = run_cli("--db", catalog_url, "--data-dir", str(tmp_path), "dedup", "--orientations", "8")
    assert "0 hashed now, 0 unreadable" in again.stdout


# --------------------------------------------------------------------------- reference sets


def _reference_folder(root: Path, photos: list[Path]) -> None:
    """An ImageNet-style tree: <wnid>/<file>."""
    for k, path in enumerate(photos):
        target = root / WNIDS[k % 3] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())


def test_leaks_against_a_reference_set_and_export_import(catalog_url, tmp_path, run_cli):
    data = tmp_path / "data"
    ref_root = tmp_path / "imagenet_like"
    reference_photos = sorted(VAL.glob("*.JPEG"))[:60]
    _reference_folder(ref_root, reference_photos)
    (ref_root / WNIDS[0] / "broken.jpg").write_bytes(b"not an image")
    cli = ["--db", catalog_url, "--data-dir", str(data)]
    added = run_cli(*cli, "dedup", "reference", "add", "val60", str(ref_root), "--workers", "2")
    assert added.returncode == 0, added.stderr
    assert "60 hashes (60 hashed now" in added.stdout and "1 unreadable" in added.stdout

    catalog = cat.open_catalog(catalog_url)
    with Image.open(reference_photos[5]) as img:
        leaked_copy = jpeg(img.convert("RGB").resize((454, 454)), 60)  # upscaled and re-encoded
    with catalog.session() as session:
        leak = add_image(session, data, leaked_copy, WNIDS[0])
        clean = [add_image(session, data, p.read_bytes(), WNIDS[1]) for p in sorted(SAMPLES.glob("*.JPEG"))[:10]]
    result = run_cli(*cli, "dedup", "--against", "val60")
    assert result.returncode == 0, result.stderr
    assert "1 leaked (against val60)" in result.stdout
    rows = statuses(catalog)
    assert rows[leak].status == cat.LEAKED
    assert all(rows[s].status == cat.REPRESENTATIVE for s in clean)
    with catalog.session() as session:
        link = session.scalars(select(cat.DuplicateLink).where(cat.DuplicateLink.reference == "val60")).one()
    assert (
        link.sha256 == leak and link.other.endswith(reference_photos[5].name) and link.distance <= DEFAULT_MAX_DISTANCE
    )

    # A later run without --against keeps the leak; export + import gives the same hashes.
    assert "1 leaked" in run_cli(*cli, "dedup").stdout
    exported = tmp_path / "val60.npz"
    assert run_cli(*cli, "dedup", "reference", "export", "val60", str(exported)).returncode == 0
    imported = run_cli(*cli, "dedup", "reference", "import", "copy", str(exported))
    assert imported.returncode == 0 and "60 hashes" in imported.stdout
    listing = run_cli(*cli, "dedup", "reference", "list").stdout
    assert "val60\t60\tcomplete" in listing and "copy\t60\tcomplete\t(imported)" in listing
    again = run_cli(*cli, "dedup", "--against", "copy")
    assert "1 leaked (against copy)" in again.stdout


def test_a_turned_copy_of_a_reference_image_is_leaked_without_rehashing_the_reference(catalog_url, tmp_path, run_cli):
    data = tmp_path / "data"
    ref_root = tmp_path / "imagenet_like"
    reference_photos = sorted(VAL.glob("*.JPEG"))[:30]
    _reference_folder(ref_root, reference_photos)
    cli = ["--db", catalog_url, "--data-dir", str(data)]
    assert run_cli(*cli, "dedup", "reference", "add", "val30", str(ref_root), "--workers", "2").returncode == 0
    hash_file_path = data / "references" / "val30" / "hashes.npz"
    stored = hash_file_path.read_bytes()

    catalog = cat.open_catalog(catalog_url)
    _, turned, _ = _turned_copies(reference_photos[7])
    with catalog.session() as session:
        leak = add_image(session, data, turned, WNIDS[0])
        clean = [add_image(session, data, p.read_bytes(), WNIDS[1]) for p in sorted(SAMPLES.glob("*.JPEG"))[:5]]
    assert "0 leaked (against val30)" in run_cli(*cli, "dedup", "--against", "val30").stdout
    result = run_cli(*cli, "dedup", "--against", "val30", "--orientations", "8")
    assert result.returncode == 0, result.stderr
    assert "1 leaked (against val30)" in result.stdout
    rows = statuses(catalog)
    assert rows[leak].status == cat.LEAKED and all(rows[s].status == cat.REPRESENTATIVE for s in clean)
    with catalog.session() as session:
        link = session.scalars(select(cat.DuplicateLink).where(cat.DuplicateLink.reference == "val30")).one()
    assert link.sha256 == leak and link.other.endswith(reference_photos[7].name) and link.hash_kind == "phash_rot270"
    assert hash_file_path.read_bytes() == stored  # the reference set was not hashed again


def test_kill_9_while_hashing_a_reference_folder_then_resume(catalog_url, tmp_path):
    data = tmp_path / "data"
    ref_root = tmp_path / "ref"
    photos = sorted(VAL.glob("*.JPEG"))[:400]
    _reference_folder(ref_root, photos)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATION_")}
    cmd = [sys.executable, "-m", "curation", "--db", catalog_url, "--data-dir", str(data)]
    cmd += ["dedup", "reference", "add", "ref", str(ref_root), "--workers", "1", "--chunk-size", "20"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    chunk_dir = data / "references" / "ref" / "chunks"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(chunk_dir.glob("chunk-*.npz"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its hashing worker, as kill -9 on the group
    proc.wait(timeout=30)
    done_before = len(list(chunk_dir.glob("chunk-*.npz")))
    assert done_before >= 3 and not (data / "references" / "ref" / "hashes.npz").exists()

    rerun = subprocess.run(
        cmd[:-4] + ["--workers", "2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done_before * 20} already done" in rerun.stdout
    with np.load(data / "references" / "ref" / "hashes.npz") as stored:
        keys = stored["keys"]
    assert len(keys) == len(set(keys.tolist())) == 400
    con = cat.open_catalog(catalog_url)
    with con.session() as session:
        row = session.get(cat.ReferenceSet, "ref")
        assert row.complete and row.count == 400
    assert not chunk_dir.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["dedup", "--against", "nope"], "unknown reference set 'nope'"),
        (["dedup", "--max-distance", "40"], "--max-distance must be between 0 and 16"),
        (["dedup", "reference", "add", "x", "/nonexistent/folder"], "reference folder or image list not found"),
        (["dedup", "reference", "export", "x", "out.npz"], "unknown reference set 'x'"),
    ],
)
def test_bad_input_is_one_clear_line(run_cli, catalog_url, tmp_path, args, message):
    result = run_cli("--db", catalog_url, "--data-dir", str(tmp_path), *args)
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_importing_a_file_that_is_not_a_hash_file_fails_cleanly(run_cli, catalog_url, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    result = run_cli("--db", catalog_url, "--data-dir", str(tmp_path), "dedup", "reference", "import", "x", str(bad))
    assert result.returncode == 1 and "not a readable .npz hash file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unreadable_image_is_recorded_and_the_stage_still_exits_0(catalog_url, tmp_path, run_cli):
    catalog = cat.open_catalog(catalog_url)
    with catalog.session() as session:
        good = add_image(session, tmp_path, (SAMPLES / "n01498041.JPEG").read_bytes())
        bad = add_image(session, tmp_path, (SAMPLES / "n01531178.JPEG").read_bytes())
        (tmp_path / session.get(cat.Image, bad).path).write_bytes(b"truncated")
    result = run_cli("--db", catalog_url, "--data-dir", str(tmp_path), "dedup")
    assert result.returncode == 0, result.stderr
    assert "2 images, 1 hashed now, 1 unreadable" in result.stdout
    assert "funnel: 2 downloaded -> 1 hashed -> 1 unique -> 1 unique and not leaked" in result.stdout
    rows = statuses(catalog)
    assert rows[good].status == cat.REPRESENTATIVE
    assert rows[bad].status == "failed" and "UnidentifiedImageError" in rows[bad].reason


def test_images_are_hashed_a_page_at_a_time(catalog, tmp_path, monkeypatch):
    """The driver reads and hands out one page of images to hash (1 M at once held 2.7 GiB in the
    driver and its forked workers); an unreadable image is recorded and the next pages go on."""
    from curation.dedup import hash_pages
    from curation.engine.local import LocalExecutor
    from curation.hashing import hash_file, to_signed

    with catalog.session() as session:
        shas = sorted(add_image(session, tmp_path, p.read_bytes()) for p in shared_photos()[:7])
        broken = shas[3]
        (tmp_path / session.get(cat.Image, broken).path).write_bytes(b"truncated")
    pages: list[int] = []

    class CountingExecutor(LocalExecutor):
        def map(self, task, items, **kwargs):
            pages.append(len(items))
            return super().map(task, items, **kwargs)

    monkeypatch.setattr(hash_pages, "HASH_PAGE", 3)
    summary = run_stage(catalog, tmp_path, DEFAULT_MAX_DISTANCE, DEFAULT_DHASH_MARGIN, [], 2, 2, CountingExecutor())
    assert pages == [3, 3, 1] and (summary.hashed_now, summary.failed) == (6, 1)
    with catalog.session() as session:
        rows = {r.sha256: (r.phash, r.dhash) for r in session.scalars(select(cat.PerceptualHash))}
        paths = {sha: tmp_path / session.get(cat.Image, sha).path for sha in shas}
    expected = {sha: hash_file(str(paths[sha]), orientations=2) for sha in shas if sha != broken}
    assert rows == {sha: (to_signed(h.phash), to_signed(h.dhash)) for sha, h in expected.items()}
    assert statuses(catalog)[broken].status == "failed"
    pages.clear()
    assert (
        run_stage(
            catalog, tmp_path, DEFAULT_MAX_DISTANCE, DEFAULT_DHASH_MARGIN, [], 2, 2, CountingExecutor()
        ).hashed_now
        == 0
    )
    assert pages == [1]  # only the unreadable image is tried again


def test_reference_from_a_list_of_images(run_cli, catalog_url, tmp_path):
    photos = sorted(VAL.glob("*.JPEG"))[:5]
    listing = tmp_path / "list.txt"
    listing.write_text("# five val photos\n" + "".join(f"{p}\n" for p in photos) + f"{photos[0]}\n")
    cli = ["--db", catalog_url, "--data-dir", str(tmp_path / "data")]
    result = run_cli(*cli, "dedup", "reference", "add", "five", str(listing), "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "five: 5 hashes (5 hashed now, 0 already done, 0 unreadable)" in result.stdout


# --------------------------------------------------------------------------- scale


def _clusters_and_links(catalog: cat.Catalog) -> tuple[dict, set]:
    with catalog.session() as session:
        rows = {r.sha256: (r.status, r.cluster_id, r.label_conflict) for r in session.scalars(select(cat.DedupStatus))}
        links = set(
            session.execute(
                select(
                    cat.DuplicateLink.sha256,
                    cat.DuplicateLink.other,
                    cat.DuplicateLink.hash_kind,
                    cat.DuplicateLink.reference,
                )
            ).all()
        )
    return rows, links


def _rerun_batches() -> list[list[tuple[bytes, str]]]:
    """Four batches of (JPEG, wnid) whose reruns merge into stored clusters: a larger copy that takes
    over a cluster, a copy that joins two stored clusters, copies turned by 90° and upside down, a
    copy found for another class, copies of reference images."""
    photos = shared_photos()[:40]
    _, turned, upside_down = _turned_copies(VAL / "ILSVRC2012_val_00000347.JPEG")
    reference_photos = sorted(VAL.glob("*.JPEG"))[100:130]
    base = _base_photo()
    first_batch = [(p.read_bytes(), WNIDS[k % 2]) for k, p in enumerate(photos[:30])]
    first_batch += [(jpeg(base, 95), WNIDS[0]), (jpeg(base, 70), WNIDS[0]), (turned, WNIDS[0])]
    first_batch += [(jpeg(Image.open(photos[k]), 60), WNIDS[0]) for k in (3, 4)]
    first_batch += [(jpeg(Image.open(reference_photos[2]), 70), WNIDS[1])]
    middle_batch = [(jpeg(Image.open(reference_photos[5]), 80), WNIDS[2]), (photos[30].read_bytes(), WNIDS[2])]
    second_batch = [(p.read_bytes(), WNIDS[2]) for p in photos[31:]]
    second_batch += [(jpeg(base.resize((base.width * 2, base.height * 2)), 90), WNIDS[1]), (upside_down, WNIDS[0])]
    second_batch += [(jpeg(base, 85), WNIDS[0]), (jpeg(Image.open(photos[3]).resize((320, 240)), 80), WNIDS[3])]
    second_batch += [
        (jpeg(Image.open(photos[31]), 50), WNIDS[2]),
        (jpeg(Image.open(reference_photos[2]), 50), WNIDS[2]),
    ]
    second_batch += [(jpeg(Image.open(photos[4]).resize((300, 200)), 75), WNIDS[1])]
    last_batch = [(jpeg(Image.open(photos[10]), 65), WNIDS[0]), (jpeg(Image.open(reference_photos[5]), 60), WNIDS[3])]
    return [first_batch, middle_batch, second_batch, last_batch]


def _build_in_runs(url: str, data_dir: Path, runs: list[tuple[list, list[str]]], orientations: int) -> cat.Catalog:
    """A catalog with the reference set ``ref30``, one dedup run after adding each batch."""
    from curation import reference_sets

    catalog = cat.open_catalog(url)
    reference_sets.add_folder(catalog, data_dir, "ref30", data_dir.parent / "reference", workers=1)
    added = 0
    for batch, against in runs:
        _add_batch(catalog, data_dir, batch, added)
        added += len(batch)
        dedup(catalog, data_dir, against, orientations=orientations)
    return catalog


def _add_batch(catalog: cat.Catalog, data_dir: Path, batch: list[tuple[bytes, str]], added: int) -> None:
    """Add images found a minute apart, the first ``added`` minutes after the first image."""
    with catalog.session() as session:
        for k, (data, wnid) in enumerate(batch):
            add_image(session, data_dir, data, wnid, found=datetime(2026, 1, 1) + timedelta(minutes=added + k))


@pytest.mark.parametrize("orientations", [2, 8])
def test_a_rerun_after_adding_images_gives_the_clusters_of_a_dedup_from_scratch(catalog_url, tmp_path, orientations):
    """The rerun searches only the new images in the stored index and merges them into the stored
    clusters, on the catalog under test (SQLite or PostgreSQL) against a dedup from scratch on
    SQLite; leaks of a reference set: one found by a run without ``--against`` and checked on the
    next run with it."""
    _reference_folder(tmp_path / "reference", sorted(VAL.glob("*.JPEG"))[100:130])
    batches = _rerun_batches()
    runs = [(batches[0], ["ref30"]), (batches[1], []), (batches[2], ["ref30"]), (batches[3], ["ref30"])]
    with _rows_read() as read:
        stepwise = _build_in_runs(catalog_url, tmp_path / "stepwise", runs, orientations)
    every = sum(len(batch) for batch in batches)
    # A rerun reads its new images twice (alone, then with the representatives of the clusters they
    # join); the run after one without --against reads every image: they must all be checked against the set.
    assert read[0] == len(batches[0]) and read[2] == every - len(batches[3]), read
    assert read[1] == 2 * len(batches[1]) and read[3] == 2 * len(batches[3]) + 2, read
    scratch_url = f"sqlite:///{tmp_path / 'scratch.sqlite'}"
    scratch = _build_in_runs(scratch_url, tmp_path / "scratch", [(sum(batches, []), ["ref30"])], orientations)
    rows, links = _clusters_and_links(stepwise)
    assert (rows, links) == _clusters_and_links(scratch)
    assert len(rows) == every
    sizes = Counter(cluster for _, cluster, _ in rows.values() if cluster)
    assert len(sizes) >= 3 and max(sizes.values()) >= 4  # the base photo's copies, photo 3's and 31's
    leaked = {sha for sha, (status, _, _) in rows.items() if status == cat.LEAKED}
    assert len(leaked) == 4 and sum(1 for link in links if link[3] == "ref30") == 4


def test_reruns_read_the_clusters_they_join_whole_only_when_their_representative_loses(catalog_url, tmp_path):
    """Every run checks the same reference set, so each rerun goes through the stored index. A copy
    of photo 4 found for another class flags photo 4's stored cluster as conflicted without reading
    its other member; the larger copy of the base photo takes over the base photo's cluster, which is
    then read whole; the result equals a dedup from scratch."""
    from curation.dedup import hash_table, rerun

    _reference_folder(tmp_path / "reference", sorted(VAL.glob("*.JPEG"))[100:130])
    batches = _rerun_batches()
    loaded: list[set[str]] = []
    real_load, real_members = hash_table.load_table, rerun._cluster_members
    read_whole: list[list[str]] = []

    def load(*args, **kwargs):
        table = real_load(*args, **kwargs)
        loaded[-1].update(table.shas.astype(str).tolist())
        return table

    def members(catalog, shas):
        read_whole.append(shas)
        return real_members(catalog, shas)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hash_table, "load_table", load)
        patch.setattr(rerun, "_cluster_members", members)
        data_dir = tmp_path / "stepwise"
        loaded.append(set())
        catalog = _build_in_runs(catalog_url, data_dir, [(batches[0], ["ref30"])], 2)
        for k in range(1, len(batches)):
            loaded.append(set())
            _add_batch(catalog, data_dir, batches[k], sum(len(b) for b in batches[:k]))
            dedup(catalog, data_dir, ["ref30"])
    base_copies = [hashlib.sha256(jpeg(_base_photo(), q)).hexdigest() for q in (95, 70)]
    photo_4 = _sha(shared_photos()[4].read_bytes()), _sha(jpeg(Image.open(shared_photos()[4]), 60))
    assert read_whole == [[base_copies[0]]], read_whole
    assert set(base_copies) <= loaded[2] and photo_4[0] in loaded[2] and photo_4[1] not in loaded[2]
    scratch_url = f"sqlite:///{tmp_path / 'scratch.sqlite'}"
    scratch = _build_in_runs(scratch_url, tmp_path / "scratch", [(sum(batches, []), ["ref30"])], 2)
    rows, links = _clusters_and_links(catalog)
    assert (rows, links) == _clusters_and_links(scratch)
    cluster_of_4 = [sha for sha, (_, cluster, _) in rows.items() if cluster == rows[photo_4[0]][1]]
    assert len(cluster_of_4) == 3 and all(rows[sha][2] for sha in cluster_of_4)  # conflicted, all three


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _crawl_list(url: str, data_dir: Path, server: Any, rows: list[tuple[str, bytes, str, str]]) -> None:
    """Crawl a URL list of (path, bytes, wnid, licence) served by ``server`` on 127.0.0.1."""
    from curation.config import Settings
    from curation.crawl import crawl

    for path, data, _, _ in rows:
        server.route(path, Reply(body=data, headers=JPEG))
    listing = data_dir.parent / f"{data_dir.name}-{len(server.routes)}.csv"
    listing.write_text("url,wnid,license\n" + "".join(f"{server.base}{p},{w},{lic}\n" for p, _, w, lic in rows))
    allow = {"allow_private_hosts": ["127.0.0.0/8"], "min_side": 64, "contact": "tests@example.org"}
    summary = crawl(Settings(db_url=url, data_dir=data_dir, toml={"crawl": allow}), urls=listing)
    assert summary.outcomes["downloaded"] == len(rows), summary.outcomes


def test_an_image_the_crawl_finds_again_is_decided_again_by_the_rerun(catalog_url, tmp_path):
    """Three copies of one photo are crawled for one class under an unknown licence and clustered.
    The crawl then finds a duplicate's bytes again at another URL, for another class and under CC0:
    the rerun reads it again, it takes over the cluster (same size, better licence) and all three
    are flagged as found for two classes, as in a dedup from scratch."""
    base = _base_photo()
    copies = [jpeg(base, quality) for quality in (95, 85, 70)]
    first = [(f"/{k}.jpg", data, WNIDS[0], "all rights reserved") for k, data in enumerate(copies)]
    with ReplayServer() as server:
        _crawl_list(catalog_url, tmp_path / "stepwise", server, first)
        catalog = cat.open_catalog(catalog_url)
        dedup(catalog, tmp_path / "stepwise")
        rows = statuses(catalog)
        duplicate = next(data for data in copies if rows[_sha(data)].status == cat.DUPLICATE)
        again = [("/again.jpg", duplicate, WNIDS[1], "CC0")]
        _crawl_list(catalog_url, tmp_path / "stepwise", server, again)
        dedup(catalog, tmp_path / "stepwise")
        scratch_url = f"sqlite:///{tmp_path / 'scratch.sqlite'}"
        _crawl_list(scratch_url, tmp_path / "scratch", server, first + again)
    scratch = cat.open_catalog(scratch_url)
    dedup(scratch, tmp_path / "scratch")
    rows, links = _clusters_and_links(catalog)
    assert (rows, links) == _clusters_and_links(scratch)
    assert rows[_sha(duplicate)][0] == cat.REPRESENTATIVE and len(rows) == 3
    assert {cluster for _, cluster, _ in rows.values()} == {_sha(duplicate)}
    assert all(conflict for _, _, conflict in rows.values())


@contextlib.contextmanager
def _rows_read():
    """The number of hash rows each dedup run read from the catalog (the sum of its reads)."""
    from curation.dedup import hash_table, stage

    counts: list[int] = []
    real_load, real_run = hash_table.load_table, stage.run_stage

    def load(*args, **kwargs):
        table = real_load(*args, **kwargs)
        counts[-1] += len(table.shas)
        return table

    def run(*args, **kwargs):
        counts.append(0)
        return real_run(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hash_table, "load_table", load)
        patch.setattr(sys.modules[__name__], "run_stage", run)
        yield counts


def _add_hashed(catalog, rows: list[tuple[str, int, int]]) -> None:
    """Image rows named by sha256(name) with these (phash, dhash) codes, mirrors equal; no files."""
    from curation.hashing import to_signed

    with catalog.session() as session:
        for name, phash, dhash in rows:
            sha = hashlib.sha256(name.encode()).hexdigest()
            session.add(cat.Image(sha256=sha, path=f"x/{sha}.jpg", width=100, height=100, format="JPEG", bytes=1))
            session.flush()
            values = {"phash": to_signed(phash), "dhash": to_signed(dhash)}
            session.add(
                cat.PerceptualHash(sha256=sha, phash_mirror=values["phash"], dhash_mirror=values["dhash"], **values)
            )


def _traced_dedup(catalog, data_dir):
    """A dedup run and the peak of Python memory it allocated."""
    import tracemalloc

    tracemalloc.start()
    try:
        summary = dedup(catalog, data_dir)
        return summary, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_cluster_of_thousands_of_copies_costs_memory_linear_in_its_size(catalog, tmp_path):
    """1,500 images with the same hashes and 300 near-copies of them (distinct hashes, a few bits
    apart): every pair matches, 3.2 M pairs, which as Python objects alone would take over 1 GB.
    Catalog rows are inserted directly (no image files: nothing is left to hash)."""
    rng = np.random.default_rng(7)
    phash, dhash = (int(v) for v in rng.integers(0, 2**63, size=2, dtype=np.int64))
    flips = [(1 << i) | (1 << j) for i in range(25) for j in range(i + 1, 25)][:300]
    codes = [phash] * 1500 + [phash ^ f for f in flips]
    _add_hashed(catalog, [(f"copy {k}", code, dhash) for k, code in enumerate(codes)])
    summary, peak = _traced_dedup(catalog, tmp_path)
    assert summary.clusters == 1 and summary.duplicates == len(codes) - 1
    assert peak < 150 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    with catalog.session() as session:
        links = session.scalar(select(func.count()).select_from(cat.DuplicateLink))
        self_links = session.scalar(
            select(func.count())
            .select_from(cat.DuplicateLink)
            .where(cat.DuplicateLink.sha256 == cat.DuplicateLink.other)
        )
    assert links == len(codes) - 1 and self_links == 0

    # One more copy: the rerun reads that cluster (linear in its size), not every pair of it.
    _add_hashed(catalog, [("one more copy", phash ^ 0b111, dhash)])
    summary, peak = _traced_dedup(catalog, tmp_path)
    assert summary.clusters == 1 and summary.duplicates == len(codes)
    assert peak < 150 * 2**20, f"rerun peak {peak / 2**20:.0f} MiB"


def _insert_hashes(session, rows: list[tuple[int, int, int, int]], start: int = 0) -> list[str]:
    """Image and PerceptualHash rows straight into the catalog: (pHash, dHash, mirror pHash, mirror dHash)."""
    from curation.hashing import to_signed

    shas = []
    for k, (phash, dhash, phash_mirror, dhash_mirror) in enumerate(rows, start):
        sha = hashlib.sha256(f"synthetic {k}".encode()).hexdigest()
        session.add(cat.Image(sha256=sha, path=f"x/{sha}.jpg", width=100 + k, height=100, format="JPEG", bytes=1))
        session.flush()
        session.add(
            cat.PerceptualHash(
                sha256=sha,
                phash=to_signed(phash),
                dhash=to_signed(dhash),
                phash_mirror=to_signed(phash_mirror),
                dhash_mirror=to_signed(dhash_mirror),
            )
        )
        shas.append(sha)
    return shas


def test_a_rerun_finds_an_old_image_whose_mirror_matches_a_new_one(catalog, tmp_path):
    """The rule compares an orientation of the query with the plain hashes of the other image: an old
    image whose mirror matches a new image's plain hashes (while the new image's mirror matches
    nothing) must still join it on the incremental rerun, and the stored cluster must hold."""
    a, x, far, d = 0x0F0F_0F0F_0F0F_0F0F, 0x3333_3333_0000_FFFF, 0xFFFF_0000_5555_AAAA, 0x1234_5678_9ABC_DEF0
    with catalog.session() as session:
        old, twin = _insert_hashes(session, [(a, d, x, d), (a ^ 1, d, x ^ 1, d)])
    assert dedup(catalog, tmp_path).clusters == 1
    with catalog.session() as session:
        (new,) = _insert_hashes(session, [(x, d, far, d)], start=2)
    summary = dedup(catalog, tmp_path)
    rows = statuses(catalog)
    assert summary.clusters == 1 and summary.duplicates == 2
    assert len({rows[s].cluster_id for s in (old, twin, new)}) == 1


def test_a_leaked_new_image_marks_every_member_of_the_stored_cluster_it_joins(catalog, tmp_path):
    """A new image that matches a reference item joins a stored cluster of two whose images do not
    (pHash 12 and 13 bits from it): the whole cluster becomes leaked, its member that the rerun never
    reads included (one UPDATE by cluster id)."""
    from curation import reference_sets
    from curation.dedup import hash_table

    x, far, d = 0x0F0F_0F0F_0F0F_0F0F, 0xFFFF_0000_5555_AAAA, 0x1234_5678_9ABC_DEF0
    hash_file = tmp_path / "reference.npz"
    np.savez(
        hash_file,
        keys=np.array([b"ref/one.jpg"]),
        phash=np.array([x ^ 0xFFF], np.uint64),
        dhash=np.array([d], np.uint64),
    )
    reference_sets.import_file(catalog, tmp_path, "synthetic", hash_file)
    with catalog.session() as session:  # the larger (start=10) survives: the copy, 111 pixels wide
        original, copy = _insert_hashes(session, [(x, d, far, d), (x ^ 1 << 20, d, far, d)], start=10)
    first = dedup(catalog, tmp_path, ["synthetic"])
    assert first.clusters == 1 and first.leaked == 0
    with catalog.session() as session:
        (new,) = _insert_hashes(session, [(x ^ 0x3F, d, far, d)])
    loaded: set[str] = set()
    real_load = hash_table.load_table

    def load(*args, **kwargs):
        table = real_load(*args, **kwargs)
        loaded.update(table.shas.astype(str).tolist())
        return table

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hash_table, "load_table", load)
        summary = dedup(catalog, tmp_path, ["synthetic"])
    rows = statuses(catalog)
    assert copy in loaded and original not in loaded
    assert [rows[sha].status for sha in (original, copy, new)] == [cat.LEAKED] * 3
    assert {rows[sha].cluster_id for sha in (original, copy, new)} == {copy}
    assert summary.leaked == 3 and summary.leaked_representatives == 1 and summary.clusters == 1


def test_a_lost_index_is_rebuilt_from_the_catalog(catalog, tmp_path):
    """The stored index is a cache the catalog names: with its folder gone, the rerun reads every
    hash, finds the same matches and writes a new index; the next rerun uses that one."""
    import shutil

    from curation.dedup_index import INDEX_META, index_dir

    rng = np.random.default_rng(3)
    codes = [int(v) for v in rng.integers(0, 2**63, size=40, dtype=np.int64)]
    mirrors = [int(v) for v in rng.integers(0, 2**63, size=4, dtype=np.int64)]
    d = 0x1234_5678_9ABC_DEF0
    with catalog.session() as session:
        old = _insert_hashes(session, [(c, d, c ^ (1 << 63), d) for c in codes])
    dedup(catalog, tmp_path)
    shutil.rmtree(index_dir(tmp_path))
    with catalog.session() as session:
        (copy,) = _insert_hashes(session, [(codes[7] ^ 0b11, d, mirrors[0], d)], start=40)
    with _rows_read() as read:
        summary = dedup(catalog, tmp_path)
        assert read == [41] and summary.clusters == 1 and statuses(catalog)[copy].cluster_id in (old[7], copy)
        with catalog.session() as session:
            (second,) = _insert_hashes(session, [(codes[9] ^ 0b101, d, mirrors[1], d)], start=41)
        summary = dedup(catalog, tmp_path)
    assert read[1] == 1 + 2 and summary.clusters == 2  # the new image twice, the one it joins
    assert statuses(catalog)[second].cluster_id in (old[9], second)

    def segments() -> list[tuple[str, int]]:
        with catalog.session() as session:
            state = json.loads(session.get(cat.Meta, INDEX_META).value)
        named = [(entry["name"], entry["rows"]) for entry in state["segments"]]
        assert {folder.name for folder in index_dir(tmp_path).iterdir()} == {name for name, _ in named}
        return named

    assert [rows for _, rows in segments()] == [41, 1]  # the rebuilt index, then the rerun's segment
    # Two more reruns: the second one-row segment merges with the first; a copy of an image of the
    # merged segment (its mirror matching the new image's own hashes) is still found.
    with catalog.session() as session:
        (third,) = _insert_hashes(session, [(codes[11] ^ 0b1, d, mirrors[2], d)], start=42)
    dedup(catalog, tmp_path)
    assert [rows for _, rows in segments()] == [41, 2]
    with catalog.session() as session:
        (fourth,) = _insert_hashes(session, [(mirrors[1] ^ 0b1000, d, mirrors[3], d)], start=43)
    summary = dedup(catalog, tmp_path)
    rows = statuses(catalog)
    assert rows[fourth].cluster_id == rows[second].cluster_id and rows[third].cluster_id in (old[11], third)
    assert summary.clusters == 3 and [rows for _, rows in segments()] == [41, 3]  # merged again


def test_dedup_of_an_empty_catalog_ends_cleanly(run_cli, tmp_path: Path) -> None:
    for orientations in ("2", "8"):
        result = run_cli("--db", str(tmp_path / "empty.sqlite"), "dedup", "--orientations", orientations)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("dedup: 0 images, 0 hashed now"), result.stdout


# --------------------------------------------------------------------------- races with other stages


@contextlib.contextmanager
def _before_the_mark(racer):
    """Run ``racer()`` once, inside a dedup run, after it has read and decided its images and just
    before it marks them clustered: the widest window a concurrent stage can commit in."""
    from curation.dedup import writes

    real_mark = writes.mark_clustered
    raced: list[bool] = []

    def mark(*args, **kwargs):
        if not raced:
            raced.append(True)
            racer()
        return real_mark(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writes, "mark_clustered", mark)
        yield raced


def _every_image_clustered(catalog: cat.Catalog) -> bool:
    with catalog.session() as session:
        flags = session.execute(select(cat.Image.sha256, cat.PerceptualHash.clustered).outerjoin(cat.PerceptualHash))
        return all(clustered for _, clustered in flags)


@pytest.mark.parametrize("stored", [False, True], ids=["first-run", "rerun"])
def test_images_a_second_dedup_hashes_meanwhile_are_left_to_it(catalog, tmp_path, stored):
    """`curation dedup` hashes before it takes the dedup lock, so a second run started while the
    first clusters hashes images the first never read. The first marks clustered only the rows it
    read: the second, once it holds the lock, clusters the new copy (a status, its cluster)."""
    from curation.dedup import hash_pages
    from curation.engine.local import LocalExecutor
    from curation.store.reader import ImageReader

    original, other = (p.read_bytes() for p in shared_photos()[:2])
    with catalog.session() as session:
        add_image(session, tmp_path, other)
    if stored:
        dedup(catalog, tmp_path)
    with catalog.session() as session:
        first = add_image(session, tmp_path, original)
    copy_bytes = jpeg(Image.open(io.BytesIO(original)), 70)

    def second_run_hashes() -> None:
        with catalog.session() as session:
            add_image(session, tmp_path, copy_bytes)
        images = ImageReader(str(tmp_path / "images"), 60.0)
        assert hash_pages.hash_new_images(catalog, images, 1, 2, LocalExecutor())[0] == 1

    with _before_the_mark(second_run_hashes) as raced:
        dedup(catalog, tmp_path)
    assert raced
    summary = dedup(catalog, tmp_path)  # the second run, past the lock: nothing left to hash
    rows = statuses(catalog)
    copy = _sha(copy_bytes)
    assert copy in rows and rows[copy].cluster_id == rows[first].cluster_id == first  # found first
    assert summary.clusters == 1 and summary.images == 3 and _every_image_clustered(catalog)


@pytest.mark.parametrize("stored", [False, True], ids=["first-run", "rerun"])
def test_an_image_the_crawl_finds_again_while_dedup_decides_is_decided_again(catalog_url, tmp_path, stored):
    """The crawl finds a copy's bytes again, for another class and under CC0, after a dedup run read
    and decided it but before that run marks it clustered. The mark must not swallow the re-find:
    the next run decides the cluster again, the re-found copy takes it over (same size, more open
    licence) and all three copies are flagged as found for two classes."""
    base = _base_photo()
    copies = [(f"/{k}.jpg", jpeg(base, quality), WNIDS[0], "all rights reserved") for k, quality in enumerate((95, 85))]
    last = [("/2.jpg", jpeg(base, 70), WNIDS[0], "all rights reserved")]
    again = [("/again.jpg", last[0][1], WNIDS[1], "CC0")]
    data_dir = tmp_path / "data"
    with ReplayServer() as server:
        _crawl_list(catalog_url, data_dir, server, copies if stored else copies + last)
        catalog = cat.open_catalog(catalog_url)
        if stored:
            dedup(catalog, data_dir)
            _crawl_list(catalog_url, data_dir, server, last)
        with _before_the_mark(lambda: _crawl_list(catalog_url, data_dir, server, again)) as raced:
            dedup(catalog, data_dir)
        assert raced
        dedup(catalog, data_dir)
    rows, _ = _clusters_and_links(catalog)
    refound = _sha(last[0][1])
    assert len(rows) == 3 and rows[refound][0] == cat.REPRESENTATIVE
    assert {cluster for _, cluster, _ in rows.values()} == {refound}
    assert all(conflict for _, _, conflict in rows.values()) and _every_image_clustered(catalog)
