"""Annotation stage: queue, votes, agreement, CSV, and the real review server's safety rails."""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from conftest import REPO, SAMPLES
from PIL import Image as PILImage
from sqlalchemy import delete, event, insert, select, text

from curation import catalog as cat
from curation.annotate.agreement import agreement_stats, conflicts, fleiss_kappa
from curation.annotate.app import (
    SECRET_META_KEY,
    ReviewConfig,
    create_app,
    rotate_session_secret,
    serving_in_thread,
    session_secret,
)
from curation.annotate.queue import crop_box, next_pairs, remaining, walk_pairs, web_link
from curation.annotate.votes import export_csv, import_csv, record_vote, undo_vote
from curation.errors import CurationError

SCRIPT_TITLE = '<script>alert("title")</script> Stingray & <b>friends</b>'
SCRIPT_AUTHOR = "<img src=x onerror=alert('author')>"


@dataclass
class ReviewCatalog:
    """A catalog with real photos: ``queue`` holds the reviewable pairs in mixed (hash) order."""

    url: str
    data_dir: Path
    queue: list[tuple[str, str]]
    excluded: dict[str, tuple[str, str]]  # why -> pair that must never be shown
    undeduped: tuple[str, str]  # in the queue although dedup has not seen it

    def open(self) -> cat.Catalog:
        return cat.open_catalog(self.url)


def sample_photos(n: int) -> list[Path]:
    """``n`` real ImageNet photos of distinct ImageNet-A classes, of moderate size."""
    files = sorted(p for p in SAMPLES.glob("*.JPEG") if 20_000 < p.stat().st_size < 150_000)
    assert len(files) >= n
    return files[:n]


def build_review_catalog(root: Path, n_queue: int = 8, url: str | None = None) -> ReviewCatalog:
    """Insert the rows the earlier stages would write, for ``n_queue`` reviewable photos plus
    one duplicate, one leaked, one the filter did not keep; one reviewable photo has no dedup row.
    The catalog is a SQLite file in ``root`` unless ``url`` names another (fresh) one."""
    url = url or f"sqlite:///{root / 'catalog.sqlite'}"
    data_dir = root / "data"
    catalog = cat.open_catalog(url)
    photos = sample_photos(n_queue + 3)
    shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos]
    first_in_queue = min(shas[:n_queue])
    excluded = {}
    with catalog.session() as s:
        for i, (photo, sha) in enumerate(zip(photos, shas, strict=True)):
            wnid = photo.stem
            rel = f"images/{sha[:2]}/{sha}.jpg"
            (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, data_dir / rel)
            with PILImage.open(photo) as im:
                width, height = im.size
            s.add(
                cat.Image(sha256=sha, path=rel, width=width, height=height, format="JPEG", bytes=photo.stat().st_size)
            )
            s.flush()
            other = photos[(i + 1) % len(photos)].stem
            s.add(
                cat.Candidate(
                    wnid=wnid,
                    source="flickr",
                    source_id=str(i),
                    url=f"http://127.0.0.1:9/{i}.jpg",
                    page_url="javascript:alert('link')" if i == 1 else f"https://www.flickr.com/photos/someone/{i}",
                    title=SCRIPT_TITLE if sha == first_in_queue else f"photo number {i}",
                    author=SCRIPT_AUTHOR if sha == first_in_queue else f"author {i}",
                    license="CC BY 2.0",
                    query=wnid,
                    status=cat.DOWNLOADED,
                    image_sha256=sha,
                )
            )
            s.add(
                cat.Prediction(
                    sha256=sha,
                    wnid=wnid,
                    model="resnet50.tv_in1k",
                    weights_hash="0" * 64,
                    rule="restricted",
                    pred_wnid=other,
                    confidence=0.40 + i / 100,
                    correct=False,
                )
            )
            kept = i != n_queue + 2
            s.add(cat.FilterVerdict(sha256=sha, wnid=wnid, kept=kept, models="[]", keep_rule="all-wrong"))
            if i == n_queue:
                s.add(cat.DedupStatus(sha256=sha, status=cat.DUPLICATE, cluster_id=shas[0]))
                excluded["duplicate"] = (sha, wnid)
            elif i == n_queue + 1:
                s.add(cat.DedupStatus(sha256=sha, status=cat.LEAKED))
                excluded["leaked"] = (sha, wnid)
            elif i == n_queue + 2:
                s.add(cat.DedupStatus(sha256=sha, status=cat.REPRESENTATIVE))
                excluded["not kept"] = (sha, wnid)
            elif i != 2:  # photo 2: dedup has not run on it yet
                s.add(cat.DedupStatus(sha256=sha, status=cat.REPRESENTATIVE, cluster_id=sha))
    catalog.engine.dispose()
    queue = sorted((shas[i], photos[i].stem) for i in range(n_queue))
    return ReviewCatalog(url, data_dir, queue, excluded, (shas[2], photos[2].stem))


@pytest.fixture(scope="session")
def review_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReviewCatalog]:
    root = tmp_path_factory.mktemp("review-template")
    return root, build_review_catalog(root)


@pytest.fixture
def review(review_template: tuple[Path, ReviewCatalog], tmp_path: Path) -> ReviewCatalog:
    """A fresh copy of the template review catalog for one test."""
    root, template = review_template
    shutil.copytree(root, tmp_path / "review")
    base = tmp_path / "review"
    return ReviewCatalog(
        f"sqlite:///{base / 'catalog.sqlite'}", base / "data", template.queue, template.excluded, template.undeduped
    )


def client() -> requests.Session:
    http = requests.Session()
    http.trust_env = False  # never a proxy: loopback only
    return http


def csrf_of(page: str) -> str:
    marker = '<meta name="csrf-token" content="'
    start = page.index(marker) + len(marker)
    return page[start : page.index('"', start)]


def votes_in(catalog: cat.Catalog) -> set[tuple[str, str, str, str]]:
    with catalog.session() as s:
        return set(
            s.execute(
                select(cat.Annotation.sha256, cat.Annotation.wnid, cat.Annotation.annotator, cat.Annotation.verdict)
            )
        )


# --------------------------------------------------------------------------- queue and votes


def test_queue_holds_kept_pairs_that_dedup_did_not_set_aside(review):
    catalog = review.open()
    with catalog.session() as s:
        assert next_pairs(s, "alice", 1, limit=100) == review.queue
        assert review.undeduped in review.queue
        for pair in review.excluded.values():
            assert pair not in next_pairs(s, "alice", 1, limit=100)
        # class order and a cursor page through the same pairs
        by_class = next_pairs(s, "alice", 1, limit=100, order="class")
        assert by_class == sorted(review.queue, key=lambda p: (p[1], p[0]))
        first_page = next_pairs(s, "alice", 1, limit=3, order="class")
        rest = next_pairs(s, "alice", 1, limit=100, order="class", after=first_page[-1])
        assert first_page + rest == by_class
        wnid = review.queue[0][1]
        assert next_pairs(s, "alice", 1, limit=100, wnid=wnid) == [review.queue[0]]


def test_votes_needed_and_skips(review):
    catalog = review.open()
    (a_sha, a_wnid), (b_sha, b_wnid) = review.queue[:2]
    with catalog.session() as s:
        record_vote(s, a_sha, a_wnid, "alice", "accept")
        record_vote(s, b_sha, b_wnid, "alice", "skip")
    with catalog.session() as s:
        # alice sees neither again; with one vote needed, bob no longer sees the accepted one
        assert (a_sha, a_wnid) not in next_pairs(s, "alice", 1, limit=100)
        assert (b_sha, b_wnid) not in next_pairs(s, "alice", 1, limit=100)
        bob = next_pairs(s, "bob", 1, limit=100)
        assert (a_sha, a_wnid) not in bob and (b_sha, b_wnid) in bob  # a skip is not a vote
        assert (a_sha, a_wnid) in next_pairs(s, "bob", 2, limit=100)
        assert remaining(s, "bob", 1) == len(review.queue) - 1
        assert cat.accepted_pairs(s, 1) == {(a_sha, a_wnid)}
        # a re-vote replaces, an undo removes
        record_vote(s, a_sha, a_wnid, "alice", "wrong_class", note="it is a ray, not a stingray")
    with catalog.session() as s:
        assert cat.accepted_pairs(s, 1) == set()
        assert undo_vote(s, a_sha, a_wnid, "alice") and not undo_vote(s, a_sha, a_wnid, "alice")
    assert votes_in(catalog) == {(b_sha, b_wnid, "alice", "skip")}
    with catalog.session() as s, pytest.raises(CurationError, match="unknown verdict"):
        record_vote(s, a_sha, a_wnid, "alice", "maybe")
    with catalog.session() as s, pytest.raises(CurationError, match="bad annotator"):
        record_vote(s, a_sha, a_wnid, "<alice>", "accept")


def test_a_sparse_queue_walks_only_the_classes_with_pairs_left(review):
    """With every pair decided, a page reads review_counts and walks no kept pair at all; with one
    pair open, class order walks that pair's class only (the cost follows the page, not the catalog)."""
    catalog = review.open()
    with catalog.session() as s:
        for sha, wnid in review.queue:
            record_vote(s, sha, wnid, "bob", "accept")
    walks: list[str] = []

    def watch(_conn, _cursor, statement, _parameters, _context, _many):
        if "FROM filter_verdicts" in statement:
            walks.append(statement)

    event.listen(catalog.engine, "before_cursor_execute", watch)
    try:
        with catalog.session() as s:
            for order in ("mixed", "class"):
                assert next_pairs(s, "alice", 1, order=order) == []
                assert next_pairs(s, "alice", 1, order=order, wnid=review.queue[0][1]) == []
            assert walks == []
            undo_vote(s, *review.queue[3], "bob")
            s.flush()
            assert next_pairs(s, "alice", 1, order="class") == [review.queue[3]]
            assert next_pairs(s, "alice", 1) == [review.queue[3]]
        assert len(walks) == 2
    finally:
        event.remove(catalog.engine, "before_cursor_execute", watch)


@pytest.mark.parametrize("order", ["mixed", "class"])
def test_paging_while_voting_shows_each_pair_once_per_annotator(review, order):
    """As the page does: fetch a batch after the last pair shown, vote on it, fetch the next."""
    catalog = review.open()
    for name in ("alice", "bob"):
        seen: list[tuple[str, str]] = []
        after = None
        while True:
            with catalog.session() as s:
                batch = next_pairs(s, name, 2, limit=2, after=after, order=order)
            if not batch:
                break
            with catalog.session() as s:
                for sha, wnid in batch:
                    record_vote(s, sha, wnid, name, "accept")
            seen += batch
            after = batch[-1]
        assert len(seen) == len(set(seen)) and set(seen) == set(review.queue)
        with catalog.session() as s:
            assert next_pairs(s, name, 2, limit=100, order=order) == [] and remaining(s, name, 2) == 0
    with catalog.session() as s:
        assert next_pairs(s, "carol", 2, limit=100) == []  # two votes each: every pair left the queue
        assert remaining(s, "carol", 3) == len(review.queue)
        assert remaining(s, "carol", 3, wnid=review.queue[0][1]) == 1  # per class


def _migration(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "db" / "migrations" / "versions" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _queue_sizes(session, annotators: list[str], wnids: list[str]) -> dict:
    """remaining() per annotator, vote count and class, against the queue itself (walked, not read
    from review_counts as next_pairs does), and next_pairs against the walk."""
    sizes = {}
    for name in annotators:
        for needed in (1, 2, 3):
            queue = walk_pairs(session, name, needed, limit=10_000)
            assert next_pairs(session, name, needed, limit=10_000) == queue
            sizes[(name, needed, None)] = (remaining(session, name, needed), len(queue))
            for wnid in wnids:
                in_class = sum(1 for _, w in queue if w == wnid)
                sizes[(name, needed, wnid)] = (remaining(session, name, needed, wnid), in_class)
    return sizes


def test_review_counts_stay_exact_whoever_writes(catalog_url, tmp_path):
    """The queue sizes come from review_counts, which triggers keep exact: after random votes,
    re-votes, skips, undos, CSV imports, auto-accepts, filter verdicts kept or dropped and dedup
    statuses set or cleared (multi-row statements included), every count equals the queue's length
    and the table equals a recount from scratch, on SQLite and PostgreSQL."""
    import random

    from curation.annotate.auto_accept import auto_accept
    from curation.dialect import upsert

    rng = random.Random(5)
    catalog = cat.open_catalog(catalog_url)
    with catalog.session() as s:
        wnids = list(s.scalars(select(cat.ImageClass.wnid).order_by(cat.ImageClass.wnid).limit(3)))
        shas = [hashlib.sha256(f"pair {k}".encode()).hexdigest() for k in range(12)]
        s.execute(
            insert(cat.Image),
            [{"sha256": h, "path": "x.jpg", "width": 1, "height": 1, "format": "JPEG", "bytes": 1} for h in shas],
        )
        verdicts = [
            {"sha256": h, "wnid": w, "kept": rng.random() < 0.7, "models": "[]", "keep_rule": "all-wrong"}
            for h in shas
            for w in wnids
            if rng.random() < 0.6
        ]
        s.execute(insert(cat.FilterVerdict), verdicts)
    pairs = [(v["sha256"], v["wnid"]) for v in verdicts]
    annotators = ["ann", "bo", "cy"]
    for step in range(60):
        with catalog.session() as s:
            action = rng.choice(["vote", "vote", "vote", "undo", "kept", "dedup", "undedup", "csv", "bulk"])
            sha, wnid = rng.choice(pairs)
            if action == "vote":
                record_vote(s, sha, wnid, rng.choice(annotators), rng.choice(["accept", "skip", "wrong_class"]))
            elif action == "undo":
                undo_vote(s, sha, wnid, rng.choice(annotators))
            elif action == "kept":
                verdict = s.get(cat.FilterVerdict, (sha, wnid))
                verdict.kept = not verdict.kept
            elif action == "dedup":
                status = rng.choice([cat.REPRESENTATIVE, cat.DUPLICATE, cat.LEAKED])
                upsert(s, cat.DedupStatus, {"sha256": sha, "status": status}, keys=["sha256"], update=["status"])
            elif action == "undedup":
                s.execute(delete(cat.DedupStatus).where(cat.DedupStatus.sha256 == sha))
            elif action == "csv":  # several votes on one pair in one import
                rows = "".join(f"{sha},{wnid},{name},{rng.choice(['accept', 'skip'])},,\n" for name in annotators)
                import_csv(s, io.StringIO("sha256,wnid,annotator,verdict,note,created_at\n" + rows))
            else:  # one multi-row statement: every vote of a pair replaced at once
                s.execute(delete(cat.Annotation).where(cat.Annotation.sha256 == sha, cat.Annotation.wnid == wnid))
                votes = [
                    {"sha256": sha, "wnid": wnid, "annotator": name, "verdict": rng.choice(["accept", "skip"])}
                    for name in annotators
                ]
                s.execute(insert(cat.Annotation), votes)
        if step == 30:
            with catalog.session() as s:
                auto_accept(s)
                s.execute(delete(cat.FilterVerdict).where(cat.FilterVerdict.wnid == wnids[0]))
            pairs = [pair for pair in pairs if pair[1] != wnids[0]]
        with catalog.session() as s:
            sizes = _queue_sizes(s, [*annotators, "newcomer"], wnids)
            assert all(counted == listed for counted, listed in sizes.values()), (step, action, sizes)
    with catalog.session() as s:
        maintained = set(
            s.execute(
                select(cat.ReviewCount.annotator, cat.ReviewCount.wnid, cat.ReviewCount.votes, cat.ReviewCount.pairs)
            )
        )
        s.execute(delete(cat.ReviewCount))
        s.execute(text(_migration("0009_review_counts").RECOUNT))
        recounted = set(
            s.execute(
                select(cat.ReviewCount.annotator, cat.ReviewCount.wnid, cat.ReviewCount.votes, cat.ReviewCount.pairs)
            )
        )
    assert maintained == recounted and all(row[3] > 0 for row in maintained)


def test_crop_box_and_links():
    assert crop_box(400, 200) == {"width": 43.75, "height": 87.5, "left": 28.125, "top": 6.25}
    assert crop_box(256, 256) == {"width": 87.5, "height": 87.5, "left": 6.25, "top": 6.25}
    assert web_link("https://example.org/a?b=1") == "https://example.org/a?b=1"
    for bad in ("javascript:alert(1)", "JAVASCRIPT:alert(1)", "data:text/html,x", "/etc/passwd", "//evil", "", None):
        assert web_link(bad) is None


# --------------------------------------------------------------------------- agreement


def test_fleiss_kappa_matches_the_textbook_example():
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories -> 0.210.
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-5)
    assert fleiss_kappa([[3, 0], [3, 0]]) is None  # one category only: undefined
    assert fleiss_kappa([[1, 0]]) is None  # nobody rated twice
    assert fleiss_kappa([[2, 0], [0, 2]]) == pytest.approx(1.0)


def test_agreement_stats_by_hand(review):
    catalog = review.open()
    (p1, w1), (p2, w2), (p3, w3) = review.queue[:3]
    votes = [
        (p1, w1, "alice", "accept"),
        (p1, w1, "bob", "accept"),
        (p1, w1, "carol", "accept"),
        (p2, w2, "alice", "accept"),
        (p2, w2, "bob", "wrong_class"),
        (p2, w2, "carol", "skip"),  # not a vote
        (p3, w3, "alice", "low_quality"),
    ]
    with catalog.session() as s:
        for sha, wnid, who, verdict in votes:
            record_vote(s, sha, wnid, who, verdict, note="why not" if who == "bob" else None)
    with catalog.session() as s:
        stats = agreement_stats(s)
        rows = conflicts(s)
    assert stats["votes"] == 6 and stats["images"] == 3 and stats["images_multi"] == 2 and stats["conflicts"] == 1
    assert stats["annotators"] == {"alice": 3, "bob": 2, "carol": 1}
    # pairs: item1 (a,b) (a,c) (b,c) agree, item2 (a,b) disagrees -> 3 of 4
    assert stats["pairwise_agreement"] == pytest.approx(0.75)
    assert {(p["a"], p["b"]): p["agreement"] for p in stats["pairs"]} == {
        ("alice", "bob"): 0.5,
        ("alice", "carol"): 1.0,
        ("bob", "carol"): 1.0,
    }
    # kappa over item1 [3 accept] and item2 [1 accept, 1 wrong]: P = (1 + 0) / 2, Pe = (4/5)^2 + (1/5)^2
    pe = 0.8**2 + 0.2**2
    assert stats["fleiss_kappa"] == pytest.approx((0.5 - pe) / (1 - pe))
    assert stats["fleiss_kappa_accept"] == pytest.approx((0.5 - pe) / (1 - pe))
    per_class = {c["wnid"]: c for c in stats["per_class"]}
    assert per_class[w1]["accept_rate"] == 1.0 and per_class[w2]["accept_rate"] == 0.5
    assert per_class[w3]["accept_rate"] == 0.0 and per_class[w3]["low_quality"] == 1
    assert [(r["sha256"], r["tally"]) for r in rows] == [(p2, {"accept": 1, "wrong_class": 1})]
    assert {v["annotator"]: v["note"] for v in rows[0]["votes"]} == {"alice": None, "bob": "why not"}


# --------------------------------------------------------------------------- CSV and CLI


def test_export_import_round_trip_and_bad_rows(review, run_cli, tmp_path):
    catalog = review.open()
    (p1, w1), (p2, w2) = review.queue[:2]
    with catalog.session() as s:
        record_vote(s, p1, w1, "alice", "accept", note='has a "comma", and quotes')
        record_vote(s, p2, w2, "bob", "ambiguous")
    out = tmp_path / "votes.csv"
    result = run_cli("--db", review.url, "annotate", "export", str(out))
    assert result.returncode == 0, result.stderr
    assert "exported 2 verdicts" in result.stderr
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["sha256"], r["annotator"], r["verdict"], r["note"]) for r in rows] == sorted(
        [(p1, "alice", "accept", 'has a "comma", and quotes'), (p2, "bob", "ambiguous", "")],
        key=lambda r: next(w for s_, w in review.queue if s_ == r[0]),
    )
    with catalog.session() as s:
        s.execute(cat.Annotation.__table__.delete())
    assert votes_in(catalog) == set()
    # add bad rows: each is rejected with its line, the good ones all land
    with out.open("a", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([p1, w1, "carol", "maybe", "", ""])
        writer.writerow(["../../etc/passwd", w1, "carol", "accept", "", ""])
        writer.writerow([p1, "n99999999", "carol", "accept", "", ""])
        writer.writerow([p1, w1, "<script>", "accept", "", ""])
        writer.writerow([p1, w1, "carol", "accept", "", "yesterday"])
    result = run_cli("--db", review.url, "annotate", "import", str(out))
    assert result.returncode == 0, result.stderr
    assert "2 added, 0 updated, 0 unchanged, 5 rejected" in result.stderr
    assert "line 4: unknown verdict 'maybe'" in result.stderr
    assert votes_in(catalog) == {(p1, w1, "alice", "accept"), (p2, w2, "bob", "ambiguous")}
    # an older verdict does not overwrite a newer one; a newer one does
    older = io.StringIO(
        f"sha256,wnid,annotator,verdict,note,created_at\n{p1},{w1},alice,wrong_class,,2001-01-01T00:00:00\n"
    )
    newer = io.StringIO(
        f"sha256,wnid,annotator,verdict,note,created_at\n{p2},{w2},bob,accept,,2999-01-01T00:00:00+02:00\n"
    )
    with catalog.session() as s:
        assert import_csv(s, older).unchanged == 1
        assert import_csv(s, newer).updated == 1
    assert votes_in(catalog) == {(p1, w1, "alice", "accept"), (p2, w2, "bob", "accept")}
    with catalog.session() as s:
        buffer = io.StringIO()
        assert export_csv(s, buffer) == 2
        assert "2998-12-31T22:00:00" in buffer.getvalue()  # stored in UTC
    missing = run_cli("--db", review.url, "annotate", "import", str(tmp_path / "nope.csv"))
    assert missing.returncode == 1 and missing.stderr.strip().count("\n") == 0 and "no such file" in missing.stderr
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("a,b\n1,2\n")
    result = run_cli("--db", review.url, "annotate", "import", str(bad_header))
    assert result.returncode == 1 and "lacks the column(s) sha256, wnid, annotator, verdict" in result.stderr


def test_import_reads_in_chunks_and_looks_up_only_their_images(review, monkeypatch):
    import curation.annotate.votes as votes

    monkeypatch.setattr(votes, "IMPORT_CHUNK", 2)
    catalog = review.open()
    (p1, w1), (p2, w2) = review.queue[:2]
    lines = [
        f"{p1},{w1},alice,wrong_class,,2001-01-01T00:00:00",
        f"{'f' * 64},{w1},alice,accept,,",  # not in the catalog
        f"{p2},{w2},bob,accept,,2001-01-01T00:00:00",
        f"{p1},{w1},alice,accept,,2002-01-01T00:00:00",  # newer, two chunks after the first
        f"{p2},{w2},bob,ambiguous,,2000-01-01T00:00:00",  # older: left alone
    ]
    looked_up: list[int] = []  # hashes per images lookup

    def watch(_conn, _cursor, statement, parameters, _context, _many):
        if statement.startswith("SELECT images.sha256") and "IN" in statement:
            looked_up.append(len(parameters))

    event.listen(catalog.engine, "before_cursor_execute", watch)
    with catalog.session() as s:
        result = votes.import_csv(s, io.StringIO("sha256,wnid,annotator,verdict,note,created_at\n" + "\n".join(lines)))
    event.remove(catalog.engine, "before_cursor_execute", watch)
    assert (result.added, result.updated, result.unchanged) == (2, 1, 1)
    assert result.rejected == ["line 3: image ffffffffffff... is not in the catalog"]
    assert looked_up == [2, 2, 1]
    assert votes_in(catalog) == {(p1, w1, "alice", "accept"), (p2, w2, "bob", "accept")}


def test_stats_command(review, run_cli):
    catalog = review.open()
    (p1, w1) = review.queue[0]
    with catalog.session() as s:
        record_vote(s, p1, w1, "alice", "accept")
        record_vote(s, p1, w1, "bob", "wrong_class")
    result = run_cli("--db", review.url, "annotate", "stats", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["votes"] == 2 and data["conflicts"] == 1 and data["pairwise_agreement"] == 0.0
    text = run_cli("--db", review.url, "annotate", "stats")
    assert text.returncode == 0
    assert text.stdout.startswith("annotation: 2 votes by 2 annotator(s) on 1 images; 1 with 2+ votes, 1 conflicting")
    assert any(line.split() == ["alice", "/", "bob", "1", "0.000"] for line in text.stdout.splitlines())
    assert any(
        line.split()[:1] == [w1] and line.split()[-3:] == ["1", "2", "0.500"] for line in text.stdout.splitlines()
    )


# --------------------------------------------------------------------------- the server


def test_non_loopback_bind_without_token_refuses_to_start(run_cli, catalog_url):
    for host in ("0.0.0.0", "192.0.2.10", "::", "example.org"):
        result = run_cli("--db", catalog_url, "annotate", "serve", "--host", host, "--port", "0", timeout=60)
        assert result.returncode == 1, (host, result.stdout)
        assert result.stderr.count("\n") == 1 and "without --token" in result.stderr
        assert result.stdout == ""
    with pytest.raises(CurationError, match="without --token"):
        create_app(ReviewConfig(catalog=cat.open_catalog(catalog_url), data_dir=Path("."), bind_host="0.0.0.0"))


def test_serve_prints_the_url_and_serves_the_page(review, tmp_path, run_cli):
    import subprocess
    import sys

    (tmp_path / "curation.toml").write_text("[annotate]\nvotes_needed = 0\n")
    bad = run_cli("--db", review.url, "annotate", "serve", "--port", "0", timeout=60)
    assert (
        bad.returncode == 1
        and bad.stderr == "curation: error: [annotate] votes_needed must be a positive integer, not 0\n"
    )
    (tmp_path / "curation.toml").write_text("[annotate]\nvotes_needed = 3\n")

    before = session_secret(review.open())
    proc = subprocess.Popen(
        [sys.executable, "-m", "curation", "--db", review.url, "--data-dir", str(review.data_dir), "annotate", "serve"]
        + ["--port", "0", "--annotator", "alice", "--new-secret"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("annotate: review page at http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[4]
        page = client().get(url, timeout=30)
        assert page.status_code == 200
        assert "annotator <b>alice</b> · 3 votes per image" in page.text
        assert f"{len(review.queue)}</b> left" in page.text
        assert session_secret(review.open()) != before  # --new-secret replaced it before serving
        grid = line.split("grid pages: ")[1].split(";")[0]
        assert grid == url + "grid" and 'id="grid"' in client().get(grid, timeout=30).text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_script_in_titles_renders_as_text(review):
    catalog = review.open()
    cfg = ReviewConfig(catalog=catalog, data_dir=review.data_dir, default_annotator="alice")
    script_pair = min(review.queue)  # the photo whose title and author are markup
    with serving_in_thread(cfg) as base:
        page = client().get(f"{base}/?pair={script_pair[0]}:{script_pair[1]}", timeout=30).text
        served = client().get(f"{base}/api/v1/next?limit=100", timeout=30).json()["items"]
    # the one pair of ?pair= is rendered by the server: escaped text (the rest come from /api/v1/next)
    assert "&lt;script&gt;alert(&#34;title&#34;)&lt;/script&gt; Stingray &amp; &lt;b&gt;friends&lt;/b&gt;" in page
    assert "&lt;img src=x onerror=alert(&#39;author&#39;)&gt;" in page
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>friends" not in page
    # the queue travels as JSON inside a data block, with < > & ' escaped
    boot = page[page.index('<script id="boot" type="application/json">') :]
    boot = boot[boot.index(">") + 1 : boot.index("</script>")]
    assert "<" not in boot and ">" not in boot and "\\u003cscript\\u003e" in boot
    assert json.loads(boot)["items"][0]["title"] == SCRIPT_TITLE
    # a javascript: page link is never linked, on the page or through the API the pages read
    assert "javascript:" not in page and len(served) == len(review.queue)
    assert all(item["page_url"] is None or item["page_url"].startswith("https://") for item in served)
    assert {item["title"] for item in served} >= {SCRIPT_TITLE, "photo number 1"}


def test_images_only_by_catalog_id(review):
    catalog = review.open()
    cfg = ReviewConfig(catalog=catalog, data_dir=review.data_dir, default_annotator="alice")
    sha = review.queue[0][0]
    (review.data_dir / "secret.txt").write_text("root:x:0:0")
    with serving_in_thread(cfg) as base:
        good = client().get(f"{base}/image/{sha}", timeout=30)
        assert good.status_code == 200 and good.headers["Content-Type"] == "image/jpeg"
        assert hashlib.sha256(good.content).hexdigest() == sha
        assert good.headers["X-Content-Type-Options"] == "nosniff"
        port = int(base.rsplit(":", 1)[1])
        for path in (
            "/image/../../etc/passwd",
            "/image/..%2F..%2Fetc%2Fpasswd",
            "/image/%2e%2e/%2e%2e/etc/passwd",
            "/image/..%252f..%252fetc%252fpasswd",
            "/image/../secret.txt",
            "/image/" + sha.upper(),
            "/image/" + "0" * 64,
            "/image/" + sha + "/../../secret.txt",
            "/static/../catalog.sqlite",
            "/static/..%2f..%2f..%2fcatalog.py",
            "/image/images/" + sha[:2] + "/" + sha + ".jpg",
        ):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", path)  # sent as is: no client-side normalisation of ../
            response = conn.getresponse()
            body = response.read()
            conn.close()
            assert response.status in (400, 404), path
            assert b"root:" not in body and b"SQLite" not in body, path
        # a catalog row whose path leaves the data folder is refused too
        with catalog.session() as s:
            s.get(cat.Image, sha).path = "../../../../etc/passwd"
        assert client().get(f"{base}/image/{sha}", timeout=30).status_code == 404


def test_token_csrf_and_host_checks(review):
    catalog = review.open()
    sha, wnid = review.queue[0]
    cfg = ReviewConfig(catalog=catalog, data_dir=review.data_dir, default_annotator="alice", token="s3cret-token")
    with serving_in_thread(cfg) as base:
        anonymous = client()
        for path in ("/", "/grid", "/stats", "/conflicts", f"/image/{sha}", "/static/grid.js", "/api/v1/next"):
            assert anonymous.get(base + path, timeout=30).status_code == 403, path
        assert anonymous.get(base + "/?token=wrong", timeout=30).status_code == 403
        assert anonymous.post(base + "/api/v1/decisions", json={}, timeout=30).status_code == 403
        # the printed URL's token becomes an HttpOnly cookie and leaves the address bar
        http = client()
        first = http.get(base + f"/grid?token=s3cret-token&wnid={wnid}", allow_redirects=False, timeout=30)
        assert first.status_code == 302 and first.headers["Location"] == f"/grid?wnid={wnid}"
        assert "HttpOnly" in first.headers["Set-Cookie"] and "SameSite=Strict" in first.headers["Set-Cookie"]
        page = http.get(base + "/", timeout=30)
        assert page.status_code == 200
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        header_only = client().get(base + "/stats", headers={"X-Curation-Token": "s3cret-token"}, timeout=30)
        assert header_only.status_code == 200
        # POSTs need the session's CSRF token
        vote = {"decisions": [{"id": f"{sha}:{wnid}", "verdict": "accept"}]}
        assert http.post(base + "/api/v1/decisions", json=vote, timeout=30).status_code == 400
        guess = {"X-CSRF-Token": "guess"}
        assert http.post(base + "/api/v1/decisions", json=vote, headers=guess, timeout=30).status_code == 400
        assert votes_in(catalog) == set()
        csrf = {"X-CSRF-Token": csrf_of(page.text)}
        ok = http.post(base + "/api/v1/decisions", json=vote, headers=csrf, timeout=30)
        assert ok.status_code == 200 and ok.json()["recorded"] == 1
        assert votes_in(catalog) == {(sha, wnid, "alice", "accept")}
        assert http.get(base + "/api/v1/decisions", timeout=30).status_code == 405  # no state change by GET
    loopback = ReviewConfig(catalog=catalog, data_dir=review.data_dir, default_annotator="alice")
    with serving_in_thread(loopback) as base:
        # DNS rebinding: a foreign Host name is refused on a loopback server
        assert client().get(base + "/", headers={"Host": "evil.example"}, timeout=30).status_code == 400
        assert client().get(base + "/", headers={"Host": "localhost"}, timeout=30).status_code == 200
        undo = {"ids": [f"{sha}:{wnid}"]}
        bad = client().post(base + "/api/v1/undo", json=undo, headers={"X-CSRF-Token": "x"}, timeout=30)
        assert bad.status_code == 400
    assert votes_in(catalog) == {(sha, wnid, "alice", "accept")}


def test_api_refuses_bad_votes(review):
    catalog = review.open()
    sha, wnid = review.queue[0]
    cfg = ReviewConfig(catalog=catalog, data_dir=review.data_dir)
    with serving_in_thread(cfg) as base:
        http = client()
        name_page = http.get(base + "/", timeout=30).text
        assert "Who is reviewing?" in name_page  # no name yet
        assert http.post(base + "/name", data={"annotator": "eve"}, timeout=30).status_code == 400  # no CSRF
        named = http.post(base + "/name", data={"annotator": "eve", "csrf_token": csrf_of(name_page)}, timeout=30)
        assert named.status_code == 200 and "annotator <b>eve</b>" in named.text
        assert http.get(base + "/?annotator=%3Cscript%3E", timeout=30).status_code == 400
        page = http.get(base + "/?annotator=bob", timeout=30)
        assert "annotator <b>bob</b>" in page.text
        headers = {"X-CSRF-Token": csrf_of(page.text)}
        dup_sha, dup_wnid = review.excluded["duplicate"]
        cases = [  # the pages' one way to decide: each bad item refused on its own
            ({"id": f"{sha}:{wnid}", "verdict": "delete everything"}, "bad_verdict"),
            ({"id": f"../../etc/passwd:{wnid}", "verdict": "accept"}, "bad_id"),
            ({"id": f"{sha}:n01", "verdict": "accept"}, "bad_id"),
            ({"id": f"{dup_sha}:{dup_wnid}", "verdict": "accept"}, "not_reviewable"),
            ({"id": f"{sha}:{wnid}", "verdict": "accept", "note": 5}, "bad_note"),
            ("not an object", "bad_id"),
        ]
        response = http.post(base + "/api/v1/decisions", json={"decisions": [c for c, _ in cases]}, headers=headers)
        assert response.json()["recorded"] == 0
        assert [e["code"] for e in response.json()["errors"]] == [code for _, code in cases]
        for body in (["not", "an", "object"], {"decisions": "accept"}, {"decisions": []}):
            refused = http.post(base + "/api/v1/decisions", json=body, headers=headers, timeout=30)
            assert refused.status_code == 400 and refused.json()["ok"] is False, body
        assert votes_in(catalog) == set()
        # the grid page checks its class as the one-by-one page does
        assert http.get(base + "/grid?wnid=n01", timeout=30).status_code == 400
        grid = http.get(base + "/grid?wnid=" + wnid, timeout=30).text
        boot = json.loads(grid[grid.index('type="application/json">') + 24 : grid.index("</script>")])
        assert boot["mode"] == "grid" and boot["grid_size"] == 48 and boot["wnid"] == wnid and boot["remaining"] == 1


def test_twenty_parallel_votes_all_land(review):
    """20 annotators decide 3 pairs at once through the pages' API: each decision waits for the pair's
    lock and lands (votes_needed leaves room for all: refusing the surplus is test_review_api's)."""
    catalog = review.open()
    cfg = ReviewConfig(catalog=catalog, data_dir=review.data_dir, votes_needed=20)
    n = 20
    with serving_in_thread(cfg) as base:
        sessions = []
        for i in range(n):
            http = client()
            page = http.get(f"{base}/?annotator=ann{i:02d}", timeout=30)
            sessions.append((http, csrf_of(page.text)))
        barrier = threading.Barrier(n)
        answers: list[object] = [None] * n

        def vote(i: int) -> None:
            http, token = sessions[i]
            sha, wnid = review.queue[i % 3]  # many annotators on the same few pairs at the same moment
            verdict = ("accept", "wrong_class", "ambiguous", "low_quality")[i % 4]
            barrier.wait()
            response = http.post(
                f"{base}/api/v1/decisions",
                json={"decisions": [{"id": f"{sha}:{wnid}", "verdict": verdict, "note": f"note {i}"}]},
                headers={"X-CSRF-Token": token},
                timeout=60,
            )
            answers[i] = (response.status_code, response.json()["recorded"])

        threads = [threading.Thread(target=vote, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert answers == [(200, 1)] * n
    expected = {
        (*review.queue[i % 3], f"ann{i:02d}", ("accept", "wrong_class", "ambiguous", "low_quality")[i % 4])
        for i in range(n)
    }
    assert votes_in(catalog) == expected


def test_stats_and_conflicts_pages_and_adjudication(review):
    catalog = review.open()
    (p1, w1), (p2, w2) = review.queue[:2]
    with catalog.session() as s:
        record_vote(s, p1, w1, "alice", "accept")
        record_vote(s, p1, w1, "bob", "wrong_class", note="<i>looks like a ray</i>")
        record_vote(s, p2, w2, "alice", "accept")
        record_vote(s, p2, w2, "bob", "accept")
    cfg = ReviewConfig(catalog=catalog, data_dir=review.data_dir, votes_needed=2, consensus="dynamic")
    with serving_in_thread(cfg) as base:
        http = client()
        stats = http.get(base + "/stats", timeout=30).text
        assert '<b id="pairwise">0.500</b>' in stats and "built-in method" not in stats
        assert '<td>alice / bob</td><td class="n">2</td>' in stats
        assert '<b id="kappa">-0.333</b>' in stats  # P = 1/2, Pe = (3/4)^2 + (1/4)^2: (0.5-0.625)/0.375
        conflicts_page = http.get(base + "/conflicts", timeout=30).text
        assert "&lt;i&gt;looks like a ray&lt;/i&gt;" in conflicts_page and "<i>looks" not in conflicts_page
        link = f"/?pair={p1}:{w1}"
        assert f'href="{link}"' in conflicts_page
        assert p2 not in conflicts_page  # agreeing votes are no conflict
        # carol adjudicates the conflicting pair: under dynamic consensus a disagreement asks for a vote
        served = http.post(base + "/api/v1/session", json={"annotator": "carol"}, timeout=30)
        left = http.get(base + "/api/v1/next", params={"limit": 1}, timeout=30).json()["remaining"]
        page = http.get(base + "/", timeout=30).text
        assert (
            json.loads(page[page.index('type="application/json">') + 24 : page.index("</script>")])["remaining"] == left
        )
        single = http.get(base + link, timeout=30).text
        boot = json.loads(single[single.index('type="application/json">') + 24 : single.index("</script>")])
        assert [(i["sha256"], i["wnid"]) for i in boot["items"]] == [(p1, w1)]
        response = http.post(
            base + "/api/v1/decisions",
            json={"decisions": [{"id": f"{p1}:{w1}", "verdict": "accept"}]},
            headers={"X-CSRF-Token": served.json()["csrf"]},
            timeout=30,
        )
        assert response.json() == {"ok": True, "recorded": 1, "errors": []}
        assert http.get(base + "/?pair=nonsense", timeout=30).status_code == 400
    # The adjudicating vote is recorded; whether it closes the pair is the dynamic rule's call.
    p1_votes = {(p1, w1, "alice", "accept"), (p1, w1, "bob", "wrong_class"), (p1, w1, "carol", "accept")}
    assert {v for v in votes_in(catalog) if v[0] == p1} == p1_votes


# --------------------------------------------------------------------------- sessions across restarts


def test_sessions_survive_a_restart_until_the_secret_is_rotated(review):
    sha, wnid = review.queue[0]
    vote = {"decisions": [{"id": f"{sha}:{wnid}", "verdict": "accept"}]}
    http = client()  # one browser: its cookies go to every 127.0.0.1 port
    with serving_in_thread(ReviewConfig(catalog=review.open(), data_dir=review.data_dir)) as base:
        page = http.get(base + "/?annotator=dora", timeout=30)
        assert "annotator <b>dora</b>" in page.text
        csrf = csrf_of(page.text)
    catalog = review.open()  # the restarted server: a new process would open the catalog afresh
    with serving_in_thread(ReviewConfig(catalog=catalog, data_dir=review.data_dir)) as base:
        assert "annotator <b>dora</b>" in http.get(base + "/", timeout=30).text
        voted = http.post(base + "/api/v1/decisions", json=vote, headers={"X-CSRF-Token": csrf}, timeout=30)
        assert voted.status_code == 200 and voted.json()["recorded"] == 1
    assert votes_in(catalog) == {(sha, wnid, "dora", "accept")}
    with catalog.session() as s:
        assert len(bytes.fromhex(s.get(cat.Meta, SECRET_META_KEY).value)) == 32  # kept in the catalog, as hex

    rotate_session_secret(catalog)
    with serving_in_thread(ReviewConfig(catalog=review.open(), data_dir=review.data_dir)) as base:
        assert "Who is reviewing?" in http.get(base + "/", timeout=30).text  # signed out
        undo = {"ids": [f"{sha}:{wnid}"]}
        stale = http.post(base + "/api/v1/undo", json=undo, headers={"X-CSRF-Token": csrf}, timeout=30)
        assert stale.status_code == 400 and "CSRF" in stale.json()["error"]
    assert votes_in(catalog) == {(sha, wnid, "dora", "accept")}


def test_session_secret_per_catalog_and_one_for_concurrent_first_starts(tmp_path):
    urls = [f"sqlite:///{tmp_path / name}.sqlite" for name in ("one", "two")]
    first = [session_secret(cat.open_catalog(url)) for url in urls]
    assert len(first[0]) == 32 and first[0] != first[1]
    assert [session_secret(cat.open_catalog(url)) for url in urls] == first

    fresh = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    cat.open_catalog(fresh).engine.dispose()  # migrated once; then eight servers start together
    n = 8
    catalogs = [cat.open_catalog(fresh) for _ in range(n)]
    barrier = threading.Barrier(n)
    secrets_seen: list[bytes | None] = [None] * n

    def start(i: int) -> None:
        barrier.wait()
        secrets_seen[i] = session_secret(catalogs[i])

    threads = [threading.Thread(target=start, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert secrets_seen[0] is not None and secrets_seen == [secrets_seen[0]] * n
    with catalogs[0].session() as s:
        assert bytes.fromhex(s.get(cat.Meta, SECRET_META_KEY).value) == secrets_seen[0]

    with catalogs[0].session() as s:
        s.get(cat.Meta, SECRET_META_KEY).value = "not hex"
    with pytest.raises(CurationError, match="--new-secret"):
        create_app(ReviewConfig(catalog=catalogs[0], data_dir=tmp_path))
    rotate_session_secret(catalogs[0])
    assert session_secret(catalogs[0]) not in (secrets_seen[0], None)
