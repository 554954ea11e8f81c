"""A catalog of real photos as the earlier stages would leave it, and the release's selection on it.

`build_catalog` is shared by the release and report tests: it copies real ImageNet validation
photos into a data directory the way crawl stores them and inserts the rows crawl, filter, dedup
and annotate would write (those stages are built separately).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from conftest import VAL
from PIL import Image

from curation import catalog as cat
from curation.release import needs_attribution, select_items

# Three ImageNet-A classes with several real validation photos each.
CLASSES = ["n02279972", "n04562935", "n02037110"]
MODEL = "resnet50.tv_in1k@abc123"


@dataclass
class Built:
    """What the builder put in, so tests can check what comes out."""

    data_dir: Path
    released: dict[str, str] = field(default_factory=dict)  # sha256 -> wnid, expected in the release
    excluded: dict[str, str] = field(default_factory=dict)  # sha256 -> why it must be left out
    png_sha: str = ""
    by_sa_author: str = "Ada Lovelace"


def _val_photos(wnid: str) -> list[Path]:
    with open(VAL / "manifest.csv") as fh:
        return sorted(VAL / r["file"] for r in csv.DictReader(fh) if r["wnid"] == wnid)


def _store(data_dir: Path, data: bytes, ext: str) -> tuple[str, str]:
    sha = hashlib.sha256(data).hexdigest()
    relative = f"images/{sha[:2]}/{sha[2:4]}/{sha}.{ext}"
    (data_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    (data_dir / relative).write_bytes(data)
    return sha, relative


def build_catalog(url: str, data_dir: Path) -> Built:
    """Fill a fresh catalog with real photos of three classes in every state the release must judge."""
    catalog = cat.open_catalog(url)
    built = Built(data_dir=data_dir)
    when = datetime(2026, 11, 20, 12, 0, 0)
    with catalog.session() as s:
        for c, wnid in enumerate(CLASSES):
            for k, photo in enumerate(_val_photos(wnid)[:5]):
                data, ext, fmt = photo.read_bytes(), "jpg", "JPEG"
                if c == 0 and k == 0:  # one PNG original: released as a JPEG
                    buffer = io.BytesIO()
                    Image.open(photo).save(buffer, format="PNG")
                    data, ext, fmt = buffer.getvalue(), "png", "PNG"
                sha, relative = _store(data_dir, data, ext)
                with Image.open(io.BytesIO(data)) as im:
                    width, height = im.size
                s.add(cat.Image(sha256=sha, path=relative, width=width, height=height, format=fmt, bytes=len(data)))
                s.flush()
                licence, author = ("CC BY-SA 2.0", built.by_sa_author) if k == 1 else ("CC0 1.0", "")
                s.add(
                    cat.Candidate(
                        wnid=wnid,
                        source="flickr" if k % 2 else "inaturalist",
                        url=f"http://127.0.0.1:9/{wnid}/{k}.{ext}",
                        page_url=f"http://127.0.0.1:9/photos/{wnid}/{k}",
                        title=f"photo {k} of {wnid}",
                        author=author,
                        license=licence,
                        status=cat.DOWNLOADED,
                        image_sha256=sha,
                        created_at=when,
                        updated_at=when,
                    )
                )
                kept = k != 4
                s.add(
                    cat.Prediction(
                        sha256=sha,
                        wnid=wnid,
                        model="resnet50.tv_in1k",
                        weights_hash="abc123",
                        rule="restricted",
                        pred_wnid="n03717622",
                        pred_index=640,
                        confidence=0.5 + 0.1 * k,
                        correct=not kept,
                    )
                )
                s.add(
                    cat.FilterVerdict(
                        sha256=sha, wnid=wnid, kept=kept, models=json.dumps([MODEL]), keep_rule="all-wrong"
                    )
                )
                status = cat.DUPLICATE if k == 3 else cat.REPRESENTATIVE
                s.add(cat.DedupStatus(sha256=sha, status=status, cluster_id=sha))
                verdicts = ["accept", "accept"] if k != 2 else ["accept", "wrong_class"]
                if c == 2 and k == 2:
                    verdicts = ["accept", "accept", "skip"]
                for a, verdict in enumerate(verdicts):
                    s.add(cat.Annotation(sha256=sha, wnid=wnid, annotator=f"ann{a}", verdict=verdict, created_at=when))
                if k == 4:
                    built.excluded[sha] = "not kept by the filter"
                elif k == 3:
                    built.excluded[sha] = "duplicate"
                elif k == 2 and c != 2:
                    built.excluded[sha] = "not accepted (tie)"
                else:
                    built.released[sha] = wnid
                if c == 0 and k == 0:
                    built.png_sha = sha
        # A real photo accepted under two classes: left out of both.
        data = _val_photos(CLASSES[0])[5].read_bytes()
        sha, relative = _store(data_dir, data, "jpg")
        s.add(cat.Image(sha256=sha, path=relative, width=1, height=1, format="JPEG", bytes=len(data)))
        s.flush()
        for wnid in CLASSES[:2]:
            s.add(
                cat.FilterVerdict(sha256=sha, wnid=wnid, kept=True, models=json.dumps([MODEL]), keep_rule="all-wrong")
            )
            s.add(cat.Annotation(sha256=sha, wnid=wnid, annotator="ann0", verdict="accept"))
        s.add(cat.DedupStatus(sha256=sha, status=cat.REPRESENTATIVE, cluster_id=sha))
        built.excluded[sha] = "several classes"
    return built


def copy_data(built: Built, to: Path) -> None:
    shutil.copytree(built.data_dir, to)


def test_selection_follows_every_stage(catalog_url, tmp_path):
    built = build_catalog(catalog_url, tmp_path / "data")
    catalog = cat.open_catalog(catalog_url)
    with catalog.session() as s:
        selection = select_items(s, votes_needed=1, min_per_class=0, max_per_class=None)
    assert {i.sha256: i.wnid for i in selection.items} == built.released
    assert selection.dropped["accepted for several classes"] == 2
    assert sum(selection.dropped.values()) == 2 + sum(1 for r in built.excluded.values() if r == "not accepted (tie)")
    first = next(i for i in selection.items if i.sha256 == built.png_sha)
    assert first.filter_model == MODEL and first.filter_prediction == "n03717622"
    assert first.filter_prediction_name == "manhole cover" and first.votes["accept"] == 2


def test_per_class_limits_are_deterministic(catalog_url, tmp_path):
    build_catalog(catalog_url, tmp_path / "data")
    catalog = cat.open_catalog(catalog_url)
    with catalog.session() as s:
        all_items = select_items(s, 1, 0, None).items
        capped = select_items(s, 1, 0, 2)
        again = select_items(s, 1, 0, 2)
        floored = select_items(s, 1, 3, None)
    assert [i.sha256 for i in capped.items] == [i.sha256 for i in again.items]
    for wnid in CLASSES:
        expected = sorted(i.sha256 for i in all_items if i.wnid == wnid)[:2]
        assert [i.sha256 for i in capped.items if i.wnid == wnid] == expected
    # Only the third class has three accepted images.
    assert {i.wnid for i in floored.items} == {CLASSES[2]}


def test_needs_attribution():
    for licence in [
        "CC BY 2.0",
        "CC BY-SA 4.0",
        "cc-by-sa",
        "CC-BY-NC 2.0",
        "https://creativecommons.org/licenses/by/4.0/",
    ]:
        assert needs_attribution(licence), licence
    for licence in ["CC0 1.0", "Public Domain Mark", "", "all rights reserved"]:
        assert not needs_attribution(licence), licence
