"""Possible copies on the review pages: dedup's undecided near-copies (table ``possible_copies``)
reach each served item of ``/api/v1/next`` in one query per page, the single and grid pages show
them as escaped "possible copy of ..." notes (real Chromium), and review never turns them into
links: deciding such a pair writes a verdict and nothing else."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import event, insert, select
from test_annotate import ReviewCatalog
from test_annotate_browser import CHROMIUM, CHROMIUM_ARGS, watched_page
from test_review_api import start, widened

from curation import catalog as cat
from curation.annotate.app import ReviewConfig, serving_in_thread

SCRIPT_KEY = 'n01440764/<script>alert("key")</script>&<b>.JPEG'  # a reference key: anyone's text
SET = "imagenet-train"


def add_possible(catalog: cat.Catalog, review: ReviewCatalog) -> tuple[str, str]:
    """The first queued image may copy the second (crawl, 31 inliers) and a reference item whose key
    holds markup (too few keypoints); an image dedup set aside has a row too. Returns (query, other)."""
    shas = sorted({sha for sha, _ in review.queue})
    outside = review.excluded["duplicate"][0]
    query, other = shas[0], shas[1]
    rows = [
        {"sha256": query, "other": other, "reference": None, "kind": "embed+orb:band", "score": 31.0, "cosine": 0.71},
        {"sha256": query, "other": SCRIPT_KEY, "reference": SET, "kind": "embed+orb:few-keypoints", "score": 3.0,
         "cosine": 0.55},
        {"sha256": outside, "other": query, "reference": None, "kind": "embed+orb:band", "score": 22.0, "cosine": 0.6},
    ]  # fmt: skip
    with catalog.session() as s:
        s.execute(insert(cat.PossibleCopy).values(created_at=cat.utcnow()), rows)
    return query, other


def dedup_state(catalog: cat.Catalog) -> tuple[list, list, list]:
    """Every duplicate link, dedup status and possible copy, as plain rows."""
    with catalog.session() as s:
        links = [tuple(r) for r in s.execute(select(cat.DuplicateLink.__table__)).all()]
        statuses = [tuple(r) for r in s.execute(select(cat.DedupStatus.__table__)).all()]
        possible = [tuple(r) for r in s.execute(select(cat.PossibleCopy.__table__)).all()]
    return sorted(links, key=repr), sorted(statuses, key=repr), sorted(possible, key=repr)


def test_next_lists_possible_copies_in_one_query_and_review_writes_no_link(catalog_url, tmp_path):
    review = widened(tmp_path, catalog_url)  # 64 pairs: each image under 8 classes
    catalog = review.open()
    query, other = add_possible(catalog, review)
    before = dedup_state(catalog)
    statements: list[tuple[str, object]] = []
    with serving_in_thread(ReviewConfig(catalog=catalog, data_dir=review.data_dir)) as base:
        http, csrf = start(base, "alice")

        def count(_conn, _cursor, sql, params, *_rest) -> None:
            statements.append((sql, params))

        event.listen(catalog.engine, "before_cursor_execute", count)
        answer = http.get(base + "/api/v1/next", params={"limit": 64}, timeout=30).json()
        event.remove(catalog.engine, "before_cursor_execute", count)
        assert len(answer["items"]) == 64  # a possible copy never takes a pair out of review
        mine = [(sql, params) for sql, params in statements if "possible_copies" in sql]
        assert len(mine) == 1  # one query for the page, not one per item
        if catalog_url.startswith("sqlite"):  # ... and by the index on possible_copies.sha256, not a scan
            with catalog.engine.connect() as conn:
                plan = " ".join(
                    str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + mine[0][0], mine[0][1])
                )
            assert "possible_copies USING INDEX" in plan and "SCAN possible_copies" not in plan, plan
        with_copies = {item["id"] for item in answer["items"] if item["possible_copies"]}
        assert with_copies == {f"{query}:{w}" for sha, w in review.queue if sha == query}
        copies = next(item for item in answer["items"] if item["sha256"] == query)["possible_copies"]
        assert copies == [  # best score first
            {"kind": "embed+orb:band", "score": 31.0, "cosine": 0.71, "reference": None, "sha256": other,
             "image": f"/image/{other}", "key": None},
            {"kind": "embed+orb:few-keypoints", "score": 3.0, "cosine": 0.55, "reference": SET, "sha256": None,
             "image": None, "key": SCRIPT_KEY},
        ]  # fmt: skip
        photo = http.get(base + copies[0]["image"], timeout=30)  # the crawled image, served by catalog id
        assert photo.status_code == 200 and hashlib.sha256(photo.content).hexdigest() == other
        grid = http.get(base + "/api/v1/next", params={"mode": "grid", "wnid": review.queue[0][1]}, timeout=30).json()
        assert [item["possible_copies"] for item in grid["items"] if item["sha256"] == query] == [copies]
        single = http.get(base + "/", params={"pair": f"{query}:{review.queue[0][1]}"}, timeout=30).text
        assert "<script>alert" not in single  # the boot data is JSON with < escaped, the key intact inside
        boot = json.loads(single.split('<script id="boot" type="application/json">')[1].split("</script>")[0])
        assert boot["items"][0]["possible_copies"] == copies
        # a reviewer rejects the copy with the page's verdicts: a vote, nothing else
        decided = http.post(
            base + "/api/v1/decisions",
            json={"decisions": [{"id": f"{query}:{w}", "verdict": "duplicate"}
                                for sha, w in review.queue if sha == query]},
            headers=csrf,
            timeout=30,
        ).json()  # fmt: skip
        assert decided["recorded"] == 8 and decided["errors"] == []
    assert dedup_state(catalog) == before  # no link, no status, the possible copies as they were


pytestmark_browser = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not at /usr/bin/chromium")


@pytest.fixture
def classes(tmp_path: Path) -> ReviewCatalog:
    return widened(tmp_path / "grid")


@pytestmark_browser
def test_pages_show_an_escaped_possible_copy_note_and_mark_the_grid(classes):
    from playwright.sync_api import expect, sync_playwright

    catalog = classes.open()
    query, other = add_possible(catalog, classes)
    wnid = classes.queue[0][1]  # the first pair in hash order: the query image under its first class
    plain = next(pair for pair in classes.queue if pair[0] != query)
    with serving_in_thread(ReviewConfig(catalog=catalog, data_dir=classes.data_dir)) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page, dialogs, errors = watched_page(browser)
        loaded: dict[str, int] = {}
        page.on("response", lambda r: loaded.__setitem__(r.url, r.status))

        page.goto(f"{base}/?annotator=alice")
        expect(page.locator("#wnid")).to_have_text(wnid)
        copies = page.locator("#copies")
        expect(copies).to_be_visible()
        expect(copies).to_contain_text("possible copy of")
        expect(page.locator("#copy-list .copy")).to_have_count(2)
        expect(page.locator("#copy-list .copy-key")).to_have_text(SCRIPT_KEY)  # the literal text, not markup
        expect(page.locator("#copy-list .copy").nth(1)).to_contain_text(SET)
        expect(page.locator("#copy-list .copy-thumb")).to_have_attribute("src", f"/image/{other}")
        expect(page.locator("#copy-list b")).to_have_count(1)  # the set's name: the key's <b> stayed text
        page.wait_for_load_state("networkidle")
        assert loaded.get(f"{base}/image/{other}") == 200

        page.goto(f"{base}/?pair={plain[0]}:{plain[1]}")  # a pair without possible copies: no note
        expect(page.locator("#wnid")).to_have_text(plain[1])
        expect(copies).to_be_hidden()

        page.goto(f"{base}/grid?wnid={wnid}")
        thumbs = page.locator("#grid .thumb")
        expect(thumbs).to_have_count(8)
        marked = page.locator("#grid .thumb.maybe-copy")
        expect(marked).to_have_count(1)
        expect(marked.locator(".copy-mark")).to_be_visible()
        expect(marked).to_have_attribute("data-id", f"{query}:{wnid}")
        marked.locator(".copy-mark").click()  # the large view, with the note
        expect(page.locator("#viewer")).to_be_visible()
        expect(page.locator("#photo")).to_have_attribute("src", f"/image/{query}")
        expect(page.locator("#copies")).to_contain_text("possible copy of")
        expect(page.locator("#copy-list .copy-key")).to_have_text(SCRIPT_KEY)
        page.keyboard.press("ArrowRight")  # the next thumbnail has none: the note goes
        expect(page.locator("#copies")).to_be_hidden()

        page.goto(f"{base}/?pair={query}:{wnid}")  # the same photo: the duplicate verdict, one key
        expect(copies).to_be_visible()
        page.keyboard.press("d")
        expect(page.locator("#wnid")).not_to_have_text(wnid)
        votes: list[tuple] = []
        for _ in range(50):  # the page sends in the background
            with catalog.session() as s:
                votes = s.execute(select(cat.Annotation.annotator, cat.Annotation.verdict).where(
                    cat.Annotation.sha256 == query, cat.Annotation.wnid == wnid)).all()  # fmt: skip
            if votes:
                break
            page.wait_for_timeout(100)
        assert [tuple(v) for v in votes] == [("alice", "duplicate")]
        browser.close()
    assert dialogs == [] and errors == []
