"""Actions per decision on the real review pages in headless Chromium: grid pages (by mouse and by
keyboard) against the one-by-one page (the baseline), in one process, on the shared photos.

A simulated reviewer with ground truth reviews ``--pages`` grid pages of ``--grid`` thumbnails, one
class per page, where each pair differs from the page's default verdict with probability
``--exceptions``; it reads the default from the page, flips exactly the exceptions (mouse: one click
each; keyboard: the shortest run of arrow keys to each, then Space, or its number where that is
shorter) and submits (one click or Enter).
A click, a key or a submit each count one action. After every run the catalog must hold exactly
the ground truth. Prints the median and range over ``--seeds`` seeds.

    .venv/bin/python benchmarks/grid_actions.py [--seeds 3] [--pages 4] [--grid 48] [--exceptions 0.05]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from PIL import Image as PILImage
from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation import catalog as cat  # noqa: E402
from curation.annotate.app import ReviewConfig, serving_in_thread  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO.parent / "shared" / "images" / "imagenet_samples"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 900}  # a page of 48 in view: 10 thumbnails a row, 5 rows


def build(root: Path, n_photos: int, n_classes: int) -> tuple[cat.Catalog, Path]:
    """``n_photos`` shared photos, each kept under each of ``n_classes`` classes (rows as the
    earlier stages write them, files copied under their SHA-256)."""
    data_dir = root / "data"
    catalog = cat.open_catalog(f"sqlite:///{root / 'catalog.sqlite'}")
    photos = sorted(SAMPLES.glob("*.JPEG"))[:n_photos]
    classes = sorted({p.stem for p in photos})[:n_classes]
    images, shas = [], []
    for photo in photos:
        sha = hashlib.sha256(photo.read_bytes()).hexdigest()
        rel = f"images/{sha[:2]}/{sha}.jpg"
        (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, data_dir / rel)
        with PILImage.open(photo) as im:
            images.append({"sha256": sha, "path": rel, "width": im.width, "height": im.height, "format": "JPEG",
                           "bytes": photo.stat().st_size})  # fmt: skip
        shas.append(sha)
    with catalog.session() as s:
        s.execute(insert(cat.Image), images)
        s.execute(
            insert(cat.FilterVerdict),
            [
                {"sha256": h, "wnid": w, "kept": True, "models": "[]", "keep_rule": "all-wrong"}
                for w in classes
                for h in shas
            ],
        )
        s.execute(insert(cat.DedupStatus), [{"sha256": h, "status": cat.REPRESENTATIVE} for h in shas])
    return catalog, data_dir


def opposite(verdict: str) -> str:
    return "wrong_class" if verdict == "accept" else "accept"


def grid_run(page, base: str, pages: int, rate: float, rng: random.Random, route: str) -> tuple[int, dict[str, str]]:
    """Review ``pages`` grid pages by ``route`` (mouse|keyboard); (actions, ground truth)."""
    from playwright.sync_api import expect

    thumbs = page.locator("#grid .thumb")
    truth: dict[str, str] = {}
    actions = 0
    page.goto(f"{base}/grid?annotator={route}")
    for _ in range(pages):
        expect(page.locator("body")).to_have_attribute("data-pending", "0", timeout=60_000)
        ids = [thumbs.nth(i).get_attribute("data-id") for i in range(thumbs.count())]
        if not ids:
            break
        default = page.locator("#default-verdict").text_content()
        default = {"wrong class": "wrong_class"}.get(default, default)
        flips = sorted(i for i in range(len(ids)) if rng.random() < rate)
        truth.update({pair: opposite(default) if i in flips else default for i, pair in enumerate(ids)})
        columns = columns_of(thumbs)
        if route == "mouse":
            for i in flips:
                thumbs.nth(i).click()
                actions += 1
            page.locator("#submit").click()
        else:
            at = 0
            for i in flips:  # the fewer keys: arrows then Space, or the thumbnail's number
                label = str(i + 1).zfill(2 if len(ids) >= 10 else 1)
                if distance(at, i, columns) + 1 <= len(label):
                    actions += arrows(page, at, i, columns) + 1
                    page.keyboard.press(" ")
                else:
                    actions += len(label)
                    for key in label:
                        page.keyboard.press(key)
                at = i
            page.keyboard.press("Enter")
        actions += 1
        expect(page.locator("body")).to_have_attribute(
            "data-pending", "0", timeout=60_000
        )  # saved, and the next page shown
    return actions, truth


def columns_of(thumbs) -> int:
    tops = [thumbs.nth(i).bounding_box()["y"] for i in range(min(thumbs.count(), 20))]
    return sum(1 for y in tops if y == tops[0])


def distance(at: int, to: int, columns: int) -> int:
    """Arrow keys from thumbnail ``at`` to ``to`` (rows, then columns)."""
    return abs(to // columns - at // columns) + abs(to % columns - at % columns)


def arrows(page, at: int, to: int, columns: int) -> int:
    """Press the fewest arrow keys from thumbnail ``at`` to ``to``; how many."""
    rows, cols = to // columns - at // columns, to % columns - at % columns
    keys = ["ArrowDown" if rows > 0 else "ArrowUp"] * abs(rows) + ["ArrowRight" if cols > 0 else "ArrowLeft"] * abs(
        cols
    )
    for key in keys:
        page.keyboard.press(key)
    return len(keys)


def single_run(page, base: str, wnid: str, rate: float, rng: random.Random) -> tuple[int, dict[str, str]]:
    """The baseline: every pair of class ``wnid`` on the one-by-one page, one key per verdict."""
    from playwright.sync_api import expect

    truth: dict[str, str] = {}
    page.goto(f"{base}/?annotator=single&wnid={wnid}")
    left = int(page.locator("#remaining").text_content())
    for k in range(1, left + 1):
        expect(page.locator("#wnid")).to_have_text(wnid)
        sha = page.locator("#photo").get_attribute("src").rsplit("/", 1)[1]
        truth[f"{sha}:{wnid}"] = "wrong_class" if rng.random() < rate else "accept"
        page.keyboard.press("a" if truth[f"{sha}:{wnid}"] == "accept" else "w")
        expect(page.locator("#remaining")).to_have_text(str(left - k))
    expect(page.locator("body")).to_have_attribute("data-pending", "0", timeout=60_000)
    return left, truth


def single_class(catalog: cat.Catalog) -> str:
    """The class the baseline reviews one by one: the last, so grid pages get whole classes."""
    with catalog.session() as s:
        return max(s.scalars(select(cat.FilterVerdict.wnid).distinct()))


def recorded(catalog: cat.Catalog, annotator: str) -> dict[str, str]:
    with catalog.session() as s:
        rows = s.execute(
            select(cat.Annotation.sha256, cat.Annotation.wnid, cat.Annotation.verdict).where(
                cat.Annotation.annotator == annotator
            )
        )
        return {f"{sha}:{wnid}": verdict for sha, wnid, verdict in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pages", type=int, default=4, help="grid pages per route and seed")
    parser.add_argument("--grid", type=int, default=48, help="thumbnails per page")
    parser.add_argument("--exceptions", type=float, default=0.05, help="share of pairs unlike the page default")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    results: dict[str, list[float]] = {"single (baseline)": [], "grid, mouse": [], "grid, keyboard": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as tmp:
                catalog, data_dir = build(Path(tmp), args.grid, 2 * args.pages + 1)
                with serving_in_thread(ReviewConfig(catalog=catalog, data_dir=data_dir, grid_size=args.grid)) as base:
                    page = browser.new_page(viewport=VIEWPORT)
                    rng = random.Random(seed)
                    n, truth = single_run(page, base, single_class(catalog), args.exceptions, rng)
                    assert recorded(catalog, "single") == truth, "single: the catalog differs from the verdicts"
                    results["single (baseline)"].append(n / len(truth))
                    for route in ("mouse", "keyboard"):
                        actions, truth = grid_run(page, base, args.pages, args.exceptions, rng, route)
                        got = recorded(catalog, route)
                        assert got == truth, (
                            route,
                            len(got),
                            len(truth),
                            [(k, got.get(k), v) for k, v in truth.items() if got.get(k) != v][:5],
                        )
                        results[f"grid, {route}"].append(actions / len(truth))
                    page.close()
                catalog.engine.dispose()
        browser.close()
    base_median = statistics.median(results["single (baseline)"])
    print(
        f"actions per decision, {args.seeds} seeds x {args.pages} pages of {args.grid}, {args.exceptions:.0%} exceptions"
    )
    for name, values in results.items():
        med = statistics.median(values)
        print(
            f"{name:<18} median {med:.3f}  range {min(values):.3f}-{max(values):.3f}  ({base_median / med:.1f}x fewer than single)"
        )


if __name__ == "__main__":
    main()
