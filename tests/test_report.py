"""`curation report`: the page renders, its PNGs are real images of sensible size, text is escaped."""

from __future__ import annotations

import re

from PIL import Image
from test_release_catalog import CLASSES, build_catalog

from curation import catalog as cat

PLOTS = ["funnel.png", "per_class.png", "sources_licences.png", "filter_confidence.png"]


def _check_png(path, min_side=300):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        assert min(im.size) >= min_side and max(im.size) < 6000, (path, im.size)
        # Not a blank canvas: a real plot has many distinct colours.
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50, path


def test_report_after_a_release(run_cli, catalog_url, tmp_path):
    built = build_catalog(catalog_url, tmp_path / "data")
    catalog = cat.open_catalog(catalog_url)
    with catalog.session() as s:
        s.get(cat.ImageClass, CLASSES[0]).name = "monarch <script>alert(1)</script> & co"
    base = ("--db", catalog_url, "--data-dir", str(built.data_dir))
    assert run_cli(*base, "release", str(tmp_path / "rel")).returncode == 0
    out = tmp_path / "report"
    result = run_cli(*base, "report", str(out), "--per-class", "4")
    assert result.returncode == 0, result.stderr
    assert "3 contact sheets" in result.stderr
    for name in PLOTS:
        _check_png(out / name)
    for wnid in CLASSES:
        _check_png(out / "sheets" / f"{wnid}.png", min_side=250)
    page = (out / "index.html").read_text()
    assert "<script>" not in page and "monarch &lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert "imagenet-a-rebuilt" in page
    for src in re.findall(r'src="([^"]+)"', page):
        assert (out / src).is_file(), src
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from elsewhere
    # Funnel numbers on the page are the catalog's.
    released = len(built.released)
    assert f'<td class="n">{released:,}</td>' in page


def test_report_before_any_release_shows_accepted_images(run_cli, catalog_url, tmp_path):
    built = build_catalog(catalog_url, tmp_path / "data")
    out = tmp_path / "report"
    result = run_cli("--db", catalog_url, "--data-dir", str(built.data_dir), "report", str(out))
    assert result.returncode == 0, result.stderr
    page = (out / "index.html").read_text()
    assert "No release yet" in page and "accepted by annotation" in page
    assert sorted(p.stem for p in (out / "sheets").glob("*.png")) == sorted(CLASSES)


def test_report_on_an_empty_catalog(run_cli, catalog_url, tmp_path):
    result = run_cli("--db", catalog_url, "report", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    for name in PLOTS:
        with Image.open(tmp_path / "report" / name) as im:
            assert im.format == "PNG" and min(im.size) > 200


def test_report_counts_in_sql_equal_a_walk_of_every_row(catalog_url, tmp_path):
    """The sources/licences aggregates and the confidence histogram come from SQL; they equal what a
    walk of every download and kept prediction gives: first candidate per (image, class) pair, and
    np.histogram's bins (values on a bin edge included)."""
    import numpy as np
    from sqlalchemy import select

    from curation.report import CONFIDENCE_BINS, confidence_histograms, release_sources

    build_catalog(catalog_url, tmp_path / "data")
    catalog = cat.open_catalog(catalog_url)
    with catalog.session() as s:
        kept = (
            s.execute(
                select(cat.Prediction)
                .join(
                    cat.FilterVerdict,
                    (cat.FilterVerdict.sha256 == cat.Prediction.sha256)
                    & (cat.FilterVerdict.wnid == cat.Prediction.wnid),
                )
                .where(cat.FilterVerdict.kept.is_(True))
            )
            .scalars()
            .all()
        )
        for prediction, value in zip(kept, [0.0, 0.05, 0.15, 0.35, 0.7, 0.95, 1.0, 0.999999, 0.1499999], strict=False):
            prediction.confidence = value
        first = s.scalars(select(cat.Candidate).order_by(cat.Candidate.id)).first()
        # A second, later candidate of the same pair from another source: counted once, as the first.
        s.add(cat.Candidate(wnid=first.wnid, source="urls", url="http://127.0.0.1:9/again.jpg", license=None,
                            status=cat.DOWNLOADED, image_sha256=first.image_sha256))  # fmt: skip
        s.add(cat.Candidate(wnid=first.wnid, source="urls", url="http://127.0.0.1:9/no-licence.jpg", license=None,
                            status=cat.DOWNLOADED, image_sha256=kept[-1].sha256))  # fmt: skip
    with catalog.session() as s:
        values = [p.confidence for p in kept]
        expected, _ = np.histogram(values, bins=CONFIDENCE_BINS, range=(0, 1))
        assert confidence_histograms(s) == {"resnet50.tv_in1k": expected.tolist()}
        seen, sources, licences = set(), {}, {}
        rows = s.execute(
            select(cat.Candidate.image_sha256, cat.Candidate.wnid, cat.Candidate.source, cat.Candidate.license)
            .where(cat.Candidate.status == cat.DOWNLOADED)
            .order_by(cat.Candidate.id)
        )
        for sha, wnid, source, licence in rows:
            if (sha, wnid) not in seen:
                seen.add((sha, wnid))
                sources[source] = sources.get(source, 0) + 1
                licences[licence or "unknown"] = licences.get(licence or "unknown", 0) + 1
        assert release_sources(s, None) == (sources, licences)
        assert "urls" in sources and "unknown" in licences  # the test exercises both


def test_count_axes_tick_whole_numbers_only(tmp_path, monkeypatch):
    """A handful of images (the demo's scale) must not tick 0.25, 0.50, ... on any count axis."""
    import matplotlib

    matplotlib.use("Agg")
    from collections import Counter

    from curation import report

    figures = {}
    real_save = report._save
    monkeypatch.setattr(report, "_save", lambda fig, path: (figures.setdefault(path.name, fig), real_save(fig, path)))
    counts = {"candidates": 3, "downloaded": 3, "kept": 2, "unique": 2, "accepted": 1, "released": 1}
    row = {"wnid": CLASSES[0], "name": "monarch", **counts}
    confidences = [0] * report.CONFIDENCE_BINS
    confidences[-1] = 2
    data = report.ReportData(
        funnel=[row],
        totals=counts,
        release={"name": "r"},
        sheet_source="released",
        sheet_items={},
        sources={"downloaded": Counter(flickr=3), "released": Counter(flickr=1)},
        licences=Counter({"CC BY 4.0": 1}),
        confidences={"lite0": confidences},
    )
    report.plot_funnel(data, tmp_path / "funnel.png")
    report.plot_per_class(data, tmp_path / "per_class.png")
    report.plot_sources(data, tmp_path / "sources_licences.png")
    report.plot_confidence(data, tmp_path / "filter_confidence.png")
    count_axes = {
        "funnel.png": [("x", 0)],
        "per_class.png": [("x", 0)],
        "sources_licences.png": [("y", 0), ("x", 1)],
        "filter_confidence.png": [("y", 0)],
    }
    for name, axes in count_axes.items():
        for which, index in axes:
            ax = figures[name].axes[index]
            low, high = ax.get_xlim() if which == "x" else ax.get_ylim()
            ticks = (ax.get_xticks() if which == "x" else ax.get_yticks()).tolist()
            shown = [t for t in ticks if min(low, high) <= t <= max(low, high)]
            assert len(shown) >= 2 and all(t == int(t) for t in shown), (name, which, shown)
