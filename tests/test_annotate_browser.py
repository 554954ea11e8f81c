"""The review pages in real headless Chromium: one by one by the keyboard only, and grid pages by
keyboard and mouse, both through /api/v1/ alone. The pages show pairs in the server's order, whatever
it is: the tests read which pair is shown from the page."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select
from test_annotate import SCRIPT_TITLE, ReviewCatalog, ReviewConfig, build_review_catalog, votes_in
from test_review_api import widened

from curation import catalog as cat
from curation.annotate.app import serving_in_thread

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


def watched_page(browser, width: int = 1280, height: int = 800) -> tuple:
    """A new page and the lists its alert dialogs (dismissed) and script or console errors land in."""
    page = browser.new_page(viewport={"width": width, "height": height})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return page, dialogs, errors


@pytest.fixture
def review(tmp_path: Path) -> ReviewCatalog:
    return build_review_catalog(tmp_path / "review")


def test_keyboard_review_undo_and_reload(review, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    catalog = review.open()
    cfg = ReviewConfig(catalog=catalog, data_dir=review.data_dir)
    with serving_in_thread(cfg) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page, dialogs, errors = watched_page(browser)
        requests_seen: list[str] = []
        page.on("request", lambda r: requests_seen.append(r.url))

        with page.expect_response(lambda r: "/api/v1/next?" in r.url) as served:
            page.goto(f"{base}/?annotator=alice")
        shown = served.value.json()["items"]  # the server's order, as the page got it
        q = [(item["sha256"], item["wnid"]) for item in shown]
        assert sorted(q) == review.queue
        expect(page.locator(".who")).to_contain_text("alice")
        expect(page.locator("#wnid")).to_have_text(q[0][1])
        expect(page.locator("#title")).to_have_text(shown[0]["title"])
        expect(page.locator("#estimate-basis")).to_contain_text("accepts left: no estimate yet; basis:")
        preload = {f"{base}/image/{sha}" for sha, _ in q[1:4]}  # the next three are fetched ahead
        for _ in range(100):
            if preload <= set(requests_seen):
                break
            page.wait_for_timeout(50)
        assert preload <= set(requests_seen)

        def settle() -> None:
            # every vote and undo answered (wait_for_function would need eval, which the CSP forbids);
            # a decision can wait behind a page fetch, whose first model fit imports scikit-learn
            expect(page.locator("body")).to_have_attribute("data-pending", "0", timeout=30_000)

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

        with page.expect_response(lambda r: "/api/v1/next?" in r.url) as served:
            page.reload()  # a reload continues with the images alice has not judged
        rest = [(item["sha256"], item["wnid"]) for item in served.value.json()["items"]]
        assert sorted(rest) == sorted(q[6:])
        expect(page.locator("#wnid")).to_have_text(rest[0][1])
        expect(page.locator("#remaining")).to_have_text(str(len(q) - 6))
        assert votes_in(catalog) == expected
        kb.press("a")
        kb.press("a")  # the last image
        expect(page.locator("#done")).to_be_visible()
        settle()
        assert len(votes_in(catalog)) == 8

        script_pair = min(review.queue)  # its title is a <script>: shown as text, from the template
        page.goto(f"{base}/?pair={script_pair[0]}:{script_pair[1]}")
        expect(page.locator("#title")).to_have_text(SCRIPT_TITLE)

        page.goto(f"{base}/stats")
        expect(page.locator("#per-class")).to_contain_text(catalog_name(catalog, q[0][1]))
        browser.close()
    assert dialogs == [] and errors == [], (dialogs, errors)
    assert all(u.startswith(base) for u in requests_seen)  # nothing but the local server
    assert [u for u in requests_seen if "/api/" in u and "/api/v1/" not in u] == []
    shutil.copyfile(tmp_path / "review.png", "/tmp/annotate_screenshot.png")


def catalog_name(catalog: cat.Catalog, wnid: str) -> str:
    with catalog.session() as s:
        return s.get(cat.ImageClass, wnid).name


@pytest.fixture
def classes(tmp_path: Path) -> ReviewCatalog:
    """Every queued photo under every queued photo's class: 64 pairs, 8 per class (SQLite)."""
    return widened(tmp_path / "grid")


def test_grid_pages_by_keyboard_and_mouse_with_undo(classes, tmp_path):
    """Two grid pages of 8 (4 columns at this width): one by keys, one by clicks; the second is
    undone, changed and sent again. The catalog holds exactly the page's verdicts."""
    from playwright.sync_api import expect, sync_playwright

    catalog = classes.open()
    cfg = ReviewConfig(catalog=catalog, data_dir=classes.data_dir, grid_size=8)
    with serving_in_thread(cfg) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page, _, errors = watched_page(browser, 600, 900)
        requests_seen: list[str] = []
        page.on("request", lambda r: requests_seen.append(r.url))
        thumbs = page.locator("#grid .thumb")

        def page_ids() -> list[str]:
            # the first page after votes waits for the order's model (its first fit imports scikit-learn)
            expect(page.locator("body")).to_have_attribute("data-pending", "0", timeout=30_000)
            return [thumbs.nth(i).get_attribute("data-id") for i in range(thumbs.count())]

        page.goto(f"{base}/grid")  # no name yet: the name form, then back to the grid
        page.fill("#annotator", "alice")
        page.keyboard.press("Enter")
        expect(thumbs).to_have_count(8)
        first = page_ids()
        assert page.url == f"{base}/grid"
        bob = browser.new_context().new_page()  # bob opens the same page; alice will finish it first
        bob.on("pageerror", lambda e: errors.append(str(e)))
        bob.goto(f"{base}/grid?annotator=bob")
        expect(bob.locator("#grid .thumb")).to_have_count(8)
        expect(bob.locator("body")).to_have_attribute("data-pending", "0")
        wnid = first[0].split(":")[1]
        assert all(i.endswith(":" + wnid) for i in first)  # one class per page
        expect(page.locator("#wnid")).to_have_text(wnid)
        expect(page.locator("#class-name")).to_have_text(catalog_name(catalog, wnid))
        expect(page.locator("#gloss")).not_to_be_empty()
        expect(page.locator("#default-verdict")).to_have_text("accept")  # no votes yet: the filter kept them all
        expect(page.locator("#remaining")).to_have_text("64")

        kb = page.keyboard
        kb.press("ArrowRight")
        kb.press(" ")  # 1: flipped to wrong class
        kb.press("ArrowDown")
        kb.press("m")  # 5 (one row down): ambiguous
        kb.press("ArrowRight")
        kb.press(" ")
        kb.press(" ")  # 6: flipped twice, back to the default
        expect(thumbs.nth(7).locator(".num")).to_have_text("8")
        kb.press("8")  # 7, by its number (one digit on a page of fewer than ten): flipped
        expect(page.locator(".thumb.exception")).to_have_count(3)
        kb.press("v")  # the large view of 7, with the model's crop
        expect(page.locator("#viewer")).to_be_visible()
        expect(page.locator("#photo")).to_have_attribute("src", "/image/" + first[7].split(":")[0])
        kb.press("c")
        expect(page.locator("#crop")).to_be_visible()
        kb.press("Escape")
        expect(page.locator("#viewer")).to_be_hidden()
        kb.press("c")  # thumbnails back to whole images
        kb.press("Enter")  # the page, in one key
        second = page_ids()
        assert len(second) == 8 and not set(second) & set(first)
        by_keys = {i: "accept" for i in first} | {
            first[1]: "wrong_class",
            first[5]: "ambiguous",
            first[7]: "wrong_class",
        }
        assert votes(catalog) == by_keys
        expect(page.locator("#remaining")).to_have_text("56")
        expect(page.locator("#estimate-basis")).to_contain_text("accepts left:")
        expect(page.locator("#estimate-basis")).to_contain_text("basis:")
        bob.keyboard.press("Enter")  # a stale page: nothing of it recorded, and bob is told why
        expect(bob.locator("#flash")).to_contain_text("saved 0 verdicts; 8 already finished by other reviewers")
        assert votes(catalog) == by_keys

        thumbs.nth(0).click()  # by mouse: 0 and 3 flipped, 3 back and forth again
        thumbs.nth(3).click()
        thumbs.nth(7).click()
        thumbs.nth(7).click()
        page.locator("#submit").click()
        expect(page.locator("#flash")).to_contain_text("saved 8 verdicts")
        third = page_ids()
        by_mouse = {i: "accept" for i in second} | {second[0]: "wrong_class", second[3]: "wrong_class"}
        assert votes(catalog) == by_keys | by_mouse and not set(third) & set(second)

        kb.press("u")  # undo the last page: it comes back with its verdicts, and leaves the catalog
        expect(page.locator(".thumb.exception")).to_have_count(2)
        assert page_ids() == second
        assert votes(catalog) == by_keys
        expect(page.locator("#remaining")).to_have_text("56")
        thumbs.nth(3).click()  # 3 was right after all
        kb.press("Enter")
        expect(page.locator("#flash")).to_contain_text("saved 8 verdicts")
        page_ids()
        page.screenshot(path=str(tmp_path / "grid.png"))
        browser.close()
    assert votes(catalog) == by_keys | by_mouse | {second[3]: "accept"}
    assert errors == [], errors
    assert all(u.startswith(base) for u in requests_seen)
    api = {u.split("?")[0].removeprefix(base) for u in requests_seen if "/api/" in u}
    assert api == {"/api/v1/next", "/api/v1/decisions", "/api/v1/undo"}
    shutil.copyfile(tmp_path / "grid.png", "/tmp/annotate_grid_screenshot.png")


def votes(catalog: cat.Catalog) -> dict[str, str]:
    """id -> verdict of every vote in the catalog (one annotator here)."""
    return {f"{sha}:{wnid}": verdict for sha, wnid, _name, verdict in votes_in(catalog)}
