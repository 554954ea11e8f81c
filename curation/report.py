"""`curation report OUT_DIR`: one HTML page with PNG plots of where the catalog stands.

Writes ``index.html`` (inline CSS, every catalog text escaped, images linked relatively) with
``funnel.png`` (crawled -> downloaded -> kept -> unique -> accepted -> released),
``per_class.png``, ``sources_licences.png``, ``filter_confidence.png`` (the filter model's
confidence on kept images) and ``sheets/<wnid>.png``: per class, a contact sheet like the
paper's Figure 1 (the photo, its true class, the filter model's prediction and confidence).
Sheets show the latest release's images, or the accepted (else kept) ones before any release.
"""

from __future__ import annotations

import argparse
import html
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import case, func, literal, select
from sqlalchemy.orm import Session

from curation import catalog as cat
from curation.annotate import votes_needed as votes_needed_setting
from curation.annotate.progress import progress_line, review_progress
from curation.config import Settings
from curation.errors import CurationError
from curation.release import Item, attach_provenance
from curation.store.reader import ImageReader, Source, fetch_sources, open_reader, source_file

STAGES = [
    ("candidates", "crawled"),
    ("downloaded", "downloaded"),
    ("kept", "kept by filter"),
    ("unique", "unique"),
    ("accepted", "accepted"),
    ("released", "released"),
]
THUMBNAIL = 320


@dataclass
class ReportData:
    """Everything the page and the plots show, read from the catalog once."""

    funnel: list[dict[str, Any]]
    totals: dict[str, int]
    release: dict[str, Any] | None
    sheet_source: str
    sheet_items: dict[str, list[Item]]
    sources: dict[str, Counter]  # "downloaded" / "shown" -> source -> count
    licences: Counter
    confidences: dict[str, list[int]]  # model -> kept images per CONFIDENCE_BINS bin of its confidence
    by_target: dict[str, Any] | None = None  # out-of-distribution kinds: the funnel by target folder
    review: dict[str, Any] | None = None  # how far review got (annotate.progress.review_progress)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="HTML report with plots: funnel, classes, sources, contact sheets")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for index.html and the PNGs")
    parser.add_argument("--per-class", type=int, default=8, metavar="N", help="images per contact sheet (default 8)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.per_class < 1:
        raise CurationError("--per-class must be at least 1")
    catalog = cat.open_catalog(settings.db_url)
    votes_needed = votes_needed_setting(settings)
    with catalog.session() as session:
        data = gather(session, votes_needed, args.per_class)
    try:
        (args.out_dir / "sheets").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CurationError(f"cannot create {args.out_dir}: {exc.strerror}") from None
    import matplotlib

    matplotlib.use("Agg")
    plot_funnel(data, args.out_dir / "funnel.png")
    plot_per_class(data, args.out_dir / "per_class.png")
    plot_sources(data, args.out_dir / "sources_licences.png")
    plot_confidence(data, args.out_dir / "filter_confidence.png")
    with catalog.session() as session:
        data.by_target = target_funnel(session, votes_needed)
        data.review = review_progress(session)
    sheets = write_sheets(data, args.out_dir / "sheets", open_reader(settings, check=False))
    (args.out_dir / "index.html").write_text(render_html(data, sheets), encoding="utf-8")
    print(
        f"report: {args.out_dir / 'index.html'} with 4 plots and {len(sheets)} contact sheets "
        f"({data.totals['released']} released, {data.totals['accepted']} accepted)",
        file=sys.stderr,
    )
    return 0


# --------------------------------------------------------------------------- data


def gather(session: Session, votes_needed: int, per_class: int) -> ReportData:
    """Read the funnel, the latest release, sources, licences, confidences and sheet images."""
    rows = cat.funnel(session, votes_needed)
    totals = {key: sum(r[key] for r in rows) for key, _ in STAGES}
    names = {r["wnid"]: r["name"] for r in rows}
    latest = session.scalars(select(cat.Release).order_by(cat.Release.id.desc()).limit(1)).first()
    if latest is not None:
        pairs = session.execute(
            select(cat.ReleaseItem.sha256, cat.ReleaseItem.wnid).where(cat.ReleaseItem.release_id == latest.id)
        ).all()
        sheet_source = f"release {latest.name} {latest.version}"
        release = {
            "name": latest.name,
            "version": latest.version,
            "images": latest.n_images,
            "archive_sha256": latest.archive_sha256 or "",
            "created": f"{latest.created_at:%Y-%m-%d %H:%M} UTC",
            "out_dir": latest.out_dir,
        }
    else:
        release = None
        accepted = cat.accepted_query(votes_needed).subquery()
        pairs = _first_per_class(session, select(accepted.c.sha256, accepted.c.wnid), per_class)
        sheet_source = "accepted by annotation (no release yet)"
        if not pairs:
            kept = select(cat.FilterVerdict.sha256, cat.FilterVerdict.wnid).where(cat.FilterVerdict.kept.is_(True))
            pairs = _first_per_class(session, kept, per_class)
            sheet_source = "kept by the filter (nothing accepted yet)"
    by_class: dict[str, list[str]] = {}
    for sha, wnid in sorted(pairs):
        by_class.setdefault(wnid, []).append(sha)
    images = {
        im.sha256: im
        for im in session.scalars(
            select(cat.Image).where(cat.Image.sha256.in_({s for shas in by_class.values() for s in shas[:per_class]}))
        )
    }
    items = [
        Item(
            sha256=sha,
            wnid=wnid,
            class_name=names.get(wnid, wnid),
            path=images[sha].path,
            format=images[sha].format,
            width=images[sha].width,
            height=images[sha].height,
        )
        for wnid, shas in sorted(by_class.items())
        for sha in shas[:per_class]
        if sha in images
    ]
    attach_provenance(session, items, names)
    sheet_items: dict[str, list[Item]] = {}
    for item in items:
        sheet_items.setdefault(item.wnid, []).append(item)
    downloaded = Counter(
        dict(
            session.execute(
                select(cat.Candidate.source, func.count())
                .where(cat.Candidate.status == cat.DOWNLOADED)
                .group_by(cat.Candidate.source)
            ).all()
        )
    )
    shown_sources, licences = release_sources(session, latest)
    confidences = confidence_histograms(session)
    return ReportData(
        funnel=rows,
        totals=totals,
        release=release,
        sheet_source=sheet_source,
        sheet_items=sheet_items,
        sources={"downloaded": downloaded, "released": shown_sources},
        licences=licences,
        confidences=confidences,
    )


def _first_per_class(session: Session, pairs: Any, per_class: int) -> list[tuple[str, str]]:
    """The ``per_class`` pairs with the smallest sha256 of each class among ``pairs`` (a select of
    sha256, wnid), ranked in SQL: memory proportional to what the sheets show."""
    ranked = pairs.subquery()
    rank = func.row_number().over(partition_by=ranked.c.wnid, order_by=ranked.c.sha256).label("rank")
    numbered = select(ranked.c.sha256, ranked.c.wnid, rank).subquery()
    rows = session.execute(select(numbered.c.sha256, numbered.c.wnid).where(numbered.c.rank <= per_class))
    return [(sha, wnid) for sha, wnid in rows]


def target_funnel(session: Session, votes_needed: int) -> dict[str, Any] | None:
    """The funnel by target folder of an out-of-distribution kind (ImageNet-O); None for other kinds."""
    from curation.kinds import catalog_kind

    kind = catalog_kind(session)
    if kind.funnel_by != "prediction":
        return None
    from curation.kinds.by_target import funnel_by_target
    from curation.status import target_names

    return funnel_by_target(session, target_names(session, kind), votes_needed)


def _target_table(by_target: dict[str, Any]) -> list[str]:
    """HTML rows of the by-target funnel: targets that kept at least one image."""
    from curation.kinds.by_target import TARGET_COLUMNS

    e = html.escape
    rows = [r for r in by_target["targets"] if r["kept"]]
    return [
        f"<h2>By target folder ({len(rows)} of {len(by_target['targets'])} targets)</h2>",
        "<p>The ImageNet-1k class the filter model confused each kept photo with; source classes below.</p>",
        "<table><tr><th>target</th><th>class</th>" + "".join(f"<th>{c}</th>" for c in TARGET_COLUMNS) + "</tr>",
        *[
            f"<tr><td>{e(r['wnid'])}</td><td>{e(r['name'])}</td>"
            + "".join(f'<td class="n">{r[c]:,}</td>' for c in TARGET_COLUMNS)
            + "</tr>"
            for r in rows
        ],
        "</table>",
    ]


def release_sources(session: Session, latest: cat.Release | None) -> tuple[Counter, Counter]:
    """Sources and licences of the latest release's images (of every download before a release),
    each (image, class) pair counted once, by its first candidate: two GROUP BY aggregates in SQL,
    memory proportional to the number of sources and licences."""
    query = select(func.min(cat.Candidate.id).label("id")).where(cat.Candidate.status == cat.DOWNLOADED)
    if latest is not None:
        query = query.join(
            cat.ReleaseItem,
            (cat.ReleaseItem.sha256 == cat.Candidate.image_sha256) & (cat.ReleaseItem.wnid == cat.Candidate.wnid),
        ).where(cat.ReleaseItem.release_id == latest.id)
    first = query.group_by(cat.Candidate.image_sha256, cat.Candidate.wnid).subquery()

    def count_by(column: Any) -> Counter:
        by = select(column, func.count()).join(first, first.c.id == cat.Candidate.id).group_by(column)
        return Counter(dict(session.execute(by).all()))

    return count_by(cat.Candidate.source), count_by(func.coalesce(cat.Candidate.license, "unknown"))


# Bins of the confidence histogram over [0, 1]; their edges are numpy's (np.histogram's bins=20, range=(0, 1)).
CONFIDENCE_BINS = 20


def confidence_histograms(session: Session) -> dict[str, list[int]]:
    """Per model, kept images per confidence bin, counted in SQL (one GROUP BY; memory per bin, not
    per prediction). A value goes to the bin np.histogram puts it in: the number of inner edges it
    reaches (the last bin holds 1.0)."""
    import numpy as np

    confidence = cat.Prediction.confidence
    inner_edges = np.linspace(0, 1, CONFIDENCE_BINS + 1)[1:-1]
    bin_of = sum((case((confidence >= float(edge), 1), else_=0) for edge in inner_edges), literal(0))
    rows = session.execute(
        select(cat.Prediction.model, bin_of.label("bin"), func.count())
        .join(
            cat.FilterVerdict,
            (cat.FilterVerdict.sha256 == cat.Prediction.sha256) & (cat.FilterVerdict.wnid == cat.Prediction.wnid),
        )
        .where(cat.FilterVerdict.kept.is_(True), confidence.between(0, 1))
        .group_by(cat.Prediction.model, bin_of)
    )
    histograms: dict[str, list[int]] = {}
    for model, index, n in rows:
        histograms.setdefault(model, [0] * CONFIDENCE_BINS)[int(index)] += n
    return histograms


# --------------------------------------------------------------------------- plots


def _whole_numbers(axis: Any) -> None:
    """Ticks at whole numbers only on a count axis (small counts would tick 0.25, 0.50, ...)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=100, bbox_inches="tight", facecolor="white")
    import matplotlib.pyplot as plt

    plt.close(fig)


def plot_funnel(data: ReportData, path: Path) -> None:
    import matplotlib.pyplot as plt

    labels = [label for _, label in STAGES]
    values = [data.totals[key] for key, _ in STAGES]
    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    bars = ax.barh(labels[::-1], values[::-1], color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:,}" for v in values[::-1]], padding=3)
    ax.set_xlabel("images (image, class pairs)")
    ax.set_title("Pipeline funnel")
    ax.set_xlim(0, max(values + [1]) * 1.15)
    _whole_numbers(ax.xaxis)
    _save(fig, path)


def plot_per_class(data: ReportData, path: Path) -> None:
    import matplotlib.pyplot as plt

    stage = "released" if data.release else "accepted"
    rows = sorted(data.funnel, key=lambda r: (-r[stage], -r["kept"], r["wnid"]))
    rows = [r for r in rows if r["kept"] or r[stage]] or rows[:20]
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.16 * len(rows) + 1)), layout="constrained")
    positions = range(len(rows))[::-1]
    ax.barh(positions, [r["kept"] for r in rows], color="#c6d4e8", label="kept by filter")
    ax.barh(positions, [r[stage] for r in rows], color="#4c72b0", label=stage)
    ax.set_yticks(
        list(positions), [f"{r['name'][:28]} ({r['wnid']})" for r in rows], fontsize=9 if len(rows) <= 40 else 7
    )
    ax.set_ylim(-1, len(rows))
    ax.set_xlabel("images")
    _whole_numbers(ax.xaxis)
    ax.set_title(f"Images per class ({len(rows)} classes)")
    ax.legend(loc="lower right")
    _save(fig, path)


def plot_sources(data: ReportData, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    sources = sorted(set(data.sources["downloaded"]) | set(data.sources["released"]))
    width = 0.4
    shown = "released" if data.release else "downloaded"
    for offset, (key, label) in enumerate([("downloaded", "downloaded"), ("released", shown)]):
        if key == "released" and not data.release:
            continue
        counts = [data.sources[key].get(s, 0) for s in sources]
        left.bar([i + offset * width for i in range(len(sources))], counts, width, label=label)
    left.set_xticks([i + width / 2 for i in range(len(sources))], sources, rotation=30, ha="right")
    left.set_ylabel("images")
    _whole_numbers(left.yaxis)
    left.set_title("Sources")
    left.legend()
    licences = data.licences.most_common(12)
    right.barh([name[:30] for name, _ in licences][::-1], [n for _, n in licences][::-1], color="#55a868")
    right.set_xlabel("images")
    _whole_numbers(right.xaxis)
    right.set_title(f"Licences ({shown})")
    _save(fig, path)


def plot_confidence(data: ReportData, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    centres = [(k + 0.5) / CONFIDENCE_BINS for k in range(CONFIDENCE_BINS)]
    for model, counts in sorted(data.confidences.items()):
        ax.hist(
            centres, bins=CONFIDENCE_BINS, range=(0, 1), weights=counts, alpha=0.6, label=f"{model} ({sum(counts)})"
        )
    _whole_numbers(ax.yaxis)
    ax.set_xlabel("filter model's confidence in its (wrong) prediction")
    ax.set_ylabel("kept images")
    ax.set_title("Filter confidence on kept images")
    if data.confidences:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no kept images yet", ha="center", va="center", transform=ax.transAxes)
    _save(fig, path)


def _thumbnail(source: Source) -> Any:
    """A thumbnail of a fetched image; a grey square for one that is missing or unreadable."""
    from PIL import Image

    from curation.storage import open_rgb

    try:
        if isinstance(source, Exception):
            raise OSError(str(source))
        image = open_rgb(source_file(source))
    except (OSError, ValueError):
        return Image.new("RGB", (THUMBNAIL, THUMBNAIL), (200, 200, 200))
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image


def write_sheets(data: ReportData, folder: Path, images: ImageReader) -> dict[str, str]:
    """One contact sheet per class, its images read from the image store together; returns wnid ->
    file name relative to the report folder."""
    import matplotlib.pyplot as plt
    from tqdm import tqdm

    written = {}
    for wnid, items in tqdm(
        sorted(data.sheet_items.items()), desc="report", unit="class", file=sys.stderr, disable=None
    ):
        columns = min(4, len(items))
        rows = (len(items) + columns - 1) // columns
        fig, axes = plt.subplots(
            rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False, layout="constrained"
        )
        for ax in axes.flat:
            ax.axis("off")
        sources = fetch_sources([images.ref(item.path) for item in items])
        for ax, item, source in zip(axes.flat, items, sources, strict=False):
            ax.imshow(_thumbnail(source))
            prediction = item.filter_prediction_name or item.filter_prediction or "?"
            confidence = f" ({100 * item.filter_confidence:.0f}%)" if item.filter_confidence is not None else ""
            ax.set_title(f"{item.class_name[:24]}\n→ {prediction[:24]}{confidence}", fontsize=10)
        fig.suptitle(f"{items[0].class_name} ({wnid}): true class → filter prediction", fontsize=12)
        _save(fig, folder / f"{wnid}.png")
        written[wnid] = f"sheets/{wnid}.png"
    return written


# --------------------------------------------------------------------------- html

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; } td, th { border: 1px solid #ccc; padding: .2rem .5rem; }
th { background: #f0f3f8; } td.n { text-align: right; } img { max-width: 100%; }
.sheets img { border: 1px solid #ddd; margin: .5rem 0; } code { background: #f4f4f4; padding: 0 .2rem; }
"""


def render_html(data: ReportData, sheets: dict[str, str]) -> str:
    """The report page; every value from the catalog goes through ``html.escape``."""
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Curation report</title>',
        f"<style>{CSS}</style></head><body>",
        "<h1>Curation report</h1>",
    ]
    if data.release:
        r = data.release
        parts.append(
            f"<p>Latest release: <b>{e(r['name'])} {e(r['version'])}</b>, {r['images']:,} images, written "
            f"{e(r['created'])} to <code>{e(r['out_dir'])}</code>; archive sha256 <code>{e(r['archive_sha256'])}</code>.</p>"
        )
    else:
        parts.append("<p>No release yet.</p>")
    if data.review:
        parts.append(f"<p>{e(progress_line(data.review))}</p>")
    parts += [
        "<h2>Funnel</h2>",
        "<table><tr>" + "".join(f"<th>{e(label)}</th>" for _, label in STAGES) + "</tr><tr>",
        "".join(f'<td class="n">{data.totals[key]:,}</td>' for key, _ in STAGES) + "</tr></table>",
        '<img src="funnel.png" alt="pipeline funnel">',
        *(_target_table(data.by_target) if data.by_target else []),
        "<h2>Images per class</h2>",
        '<img src="per_class.png" alt="images per class">',
        "<h2>Sources and licences</h2>",
        '<img src="sources_licences.png" alt="sources and licences">',
        "<table><tr><th>licence</th><th>images</th></tr>",
        *[f'<tr><td>{e(name)}</td><td class="n">{n:,}</td></tr>' for name, n in data.licences.most_common()],
        "</table>",
        "<h2>Filter confidence on kept images</h2>",
        '<img src="filter_confidence.png" alt="filter confidence histogram">',
        "<h2>Classes</h2>",
        "<table><tr><th>wnid</th><th>class</th>"
        + "".join(f"<th>{e(label)}</th>" for _, label in STAGES)
        + "<th>sheet</th></tr>",
    ]
    for row in data.funnel:
        link = f'<a href="#{e(row["wnid"])}">view</a>' if row["wnid"] in sheets else ""
        parts.append(
            f"<tr><td>{e(row['wnid'])}</td><td>{e(row['name'])}</td>"
            + "".join(f'<td class="n">{row[key]:,}</td>' for key, _ in STAGES)
            + f"<td>{link}</td></tr>"
        )
    parts += ["</table>", f"<h2>Contact sheets ({e(data.sheet_source)})</h2>", '<div class="sheets">']
    for wnid, file in sorted(sheets.items()):
        name = data.sheet_items[wnid][0].class_name
        parts.append(f'<h3 id="{e(wnid)}">{e(name)} ({e(wnid)})</h3><img src="{e(file)}" alt="{e(name)}">')
    parts += ["</div>", "</body></html>"]
    return "\n".join(parts) + "\n"
