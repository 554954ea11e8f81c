"""The review page in real headless Chromium, driven by the keyboard only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select
from test_annotate import SCRIPT_TITLE, ReviewCatalog, ReviewConfig, build_review_catalog, running_server, votes_in

from curation import catalog as cat

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium: run `make chromium`"
)


@pytest.fixture
def review(tmp_path: Path) -> ReviewCatalog:
    return build_review_catalog(tmp_path / "review")


def test_keyboard_review_undo_and_reload(review, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    catalog = review.open()
    q = review.queue
    cfg = ReviewConfig(catalog=catalog, data_dir=review.data_dir)
    with running_server(cfg) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        requests_seen: list[str] = []
        page.on("request", lambda r: requests_seen.append(r.url))

        page.goto(f"{base}/?annotator=alice")
        expect(page.locator(".who")).to_contain_text("alice")
        expect(page.locator("#wnid")).to_have_text(q[0][1])
        expect(page.locator("#title")).to_have_text(SCRIPT_TITLE)  # the <script> title is text
        preload = {f"{base}/image/{sha}" for sha, _ in q[1:4]}  # the next three are fetched ahead
        for _ in range(100):
            if preload <= set(requests_seen):
                break
            page.wait_for_timeout(50)
        assert preload <= set(requests_seen)

        def settle() -> None:
            # every vote and undo answered (wait_for_function would need eval, which the CSP forbids)
            expect(page.locator("body")).to_have_attribute("data-pending", "0")

        kb = page.keyboard
        kb.press("a")  # q0 accept
        expect(page.locator("#wnid")).to_have_text(q[1][1])
        kb.press("w")  # q1 wrong class
        expect(page.locator("#wnid")).to_have_text(q[2][1])
        kb.press("m")  # q2 ambiguous ...
        expect(page.locator("#wnid")).to_have_text(q[3][1])
        kb.press("u")  # ... undone: back on q2, no verdict
        expect(page.locator("#wnid")).to_have_text(q[2][1])
        settle()
        assert (q[2][0], q[2][1], "alice", "ambiguous") not in votes_in(catalog)
        kb.press("q")  # q2 low quality
        kb.press("ArrowRight")  # q3 skipped
        expect(page.locator("#wnid")).to_have_text(q[4][1])
        kb.press("x")  # q4 inappropriate ...
        kb.press("ArrowLeft")  # ... back to q4, which shows its verdict
        expect(page.locator("#current")).to_contain_text("inappropriate")
        kb.press("2")  # ... changed to wrong class
        expect(page.locator("#wnid")).to_have_text(q[5][1])
        kb.press("c")  # the centre crop the model saw
        expect(page.locator("#crop")).to_be_visible()
        kb.press("n")  # a note, then accept
        kb.type("clear shot, a but cropped")
        kb.press("Enter")
        kb.press("1")
        expect(page.locator("#wnid")).to_have_text(q[6][1])
        settle()
        page.screenshot(path=str(tmp_path / "review.png"))
        expect(page.locator("#saving")).to_have_text("saved")

        expected = {
            (q[0][0], q[0][1], "alice", "accept"),
            (q[1][0], q[1][1], "alice", "wrong_class"),
            (q[2][0], q[2][1], "alice", "low_quality"),
            (q[3][0], q[3][1], "alice", "skip"),
            (q[4][0], q[4][1], "alice", "wrong_class"),
            (q[5][0], q[5][1], "alice", "accept"),
        }
        assert votes_in(catalog) == expected
        with catalog.session() as s:
            notes = dict(s.execute(select(cat.Annotation.sha256, cat.Annotation.note)).all())
        assert notes[q[5][0]] == "clear shot, a but cropped" and notes[q[0][0]] is None

        page.reload()  # a reload continues with the first image alice has not judged
        expect(page.locator("#wnid")).to_have_text(q[6][1])
        expect(page.locator("#remaining")).to_have_text(str(len(q) - 6))
        assert votes_in(catalog) == expected
        kb.press("a")
        kb.press("a")  # the last image
        expect(page.locator("#done")).to_be_visible()
        settle()
        assert len(votes_in(catalog)) == 8

        page.goto(f"{base}/stats")
        expect(page.locator("#per-class")).to_contain_text(catalog_name(catalog, q[0][1]))
        browser.close()
    assert dialogs == [] and errors == [], (dialogs, errors)
    assert all(u.startswith(base) for u in requests_seen)  # nothing but the local server
    shutil.copyfile(tmp_path / "review.png", "/tmp/annotate_screenshot.png")


def catalog_name(catalog: cat.Catalog, wnid: str) -> str:
    with catalog.session() as s:
        return s.get(cat.ImageClass, wnid).name
