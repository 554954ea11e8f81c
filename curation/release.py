"""`curation release OUT_DIR`: write the dataset in the original ImageNet-A layout.

Selected are the (image, class) pairs the filter kept, that dedup left as representatives (not
duplicates, not leaked against a reference set, no label conflict) and that annotation accepted;
an image accepted for more than one class is left out (ImageNet-A images show a single class).

``OUT_DIR/<name>/<wnid>/<sha256>.jpg`` holds the images. JPEG originals are copied byte for byte;
other formats (PNG, GIF, WebP) and JPEGs whose EXIF orientation is not upright (loaders such as
``ImageFolder`` ignore EXIF) are re-encoded once as JPEG (quality 95) from the catalog's agreed
RGB view, so every file is a ``.jpg`` that shows what the filter model saw. Beside the images:
``README.txt`` ("wnid name" lines), ``manifest.csv``, ``ATTRIBUTION.md``, ``DATASHEET.md``, the dataset
card ``README.md`` and ``croissant.json`` (see ``release_card`` and ``croissant``: the release loads
in torchvision, timm, Hugging Face ``datasets`` and mlcroissant) and ``SHA256SUMS``; nothing else at
its top level but the wnid folders. Beside the folder, a deterministic ``<name>.tar.gz`` (sorted entries, fixed
mtime/owners, gzip mtime 0) and its ``.sha256``. Everything is written to a hidden temporary
folder beside OUT_DIR and renamed at the end, so a killed release leaves nothing half-made.

The catalog's dataset kind chooses the folder: ImageNet-A releases an image under its crawled class;
ImageNet-O under the 1k target the filter model confused it with (``<target_wnid>/<sha256>.jpg``), with
README.txt listing the 200 targets, the source synset and MSP in the manifest, and the MSP threshold
and pool rule in the DATASHEET.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from curation import catalog as cat
from curation.annotate import votes_needed as votes_needed_setting
from curation.config import Settings
from curation.croissant import write_croissant
from curation.errors import CurationError
from curation.release_card import auto_accept_warning, check_layout, check_wnid_folder, dataset_card, folder_of

MANIFEST_COLUMNS = [
    "file",
    "wnid",
    "class_name",
    "sha256",
    "image_sha256",
    "width",
    "height",
    "converted_from",
    "source",
    "image_url",
    "page_url",
    "title",
    "author",
    "license",
    "filter_model",
    "filter_prediction",
    "filter_prediction_name",
    "filter_confidence",
    "votes_accept",
    "votes_total",
]
OOD_MANIFEST_COLUMNS = ["source_wnid", "source_name", "msp"]  # added for out-of-distribution kinds
JPEG_QUALITY = 95
ARCHIVE_MTIME = 0
SECRET_KEY = re.compile(r"key|token|secret|password", re.IGNORECASE)
ATTRIBUTION_LICENCE = re.compile(r"\bby\b", re.IGNORECASE)


@dataclass
class Item:
    """One (image, class) pair of the release with everything the manifest says about it."""

    sha256: str
    wnid: str
    class_name: str
    path: str  # of the original, relative to the data directory
    format: str
    width: int
    height: int
    source: str = ""
    image_url: str = ""
    page_url: str = ""
    title: str = ""
    author: str = ""
    license: str = ""
    crawled_at: datetime | None = None
    filter_model: str = ""
    filter_rule: str = ""
    filter_prediction: str = ""
    filter_prediction_name: str = ""
    filter_confidence: float | None = None
    keep_rule: str = ""
    votes: Counter = field(default_factory=Counter)
    folder: str = ""  # the release label when it is not the crawled class (ImageNet-O: the predicted target)
    folder_name: str = ""

    @property
    def label(self) -> str:
        """The wnid the release files the image under."""
        return self.folder or self.wnid

    @property
    def file(self) -> str:
        return f"{self.label}/{self.sha256}.jpg"


@dataclass
class Selection:
    """The chosen items plus how many pairs were left out, by reason."""

    items: list[Item]
    dropped: Counter


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "release", help="write the ImageFolder release, its manifest, datasheet, checksums and tarball"
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to create (must be empty or absent)")
    parser.add_argument(
        "--name",
        help="dataset folder and archive name (default: the kind's, e.g. imagenet-a-rebuilt, imagenet-o-rebuilt)",
    )
    parser.add_argument("--version", dest="release_version", default="1.0", help="release version (default 1.0)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    parser.add_argument("--min-per-class", type=int, default=0, metavar="N", help="leave out classes with fewer")
    parser.add_argument("--max-per-class", type=int, default=None, metavar="N", help="keep at most N per class")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from curation.kinds import catalog_kind

    catalog = cat.open_catalog(settings.db_url)
    with catalog.session() as session:
        kind = catalog_kind(session)
    args.name = args.name or kind.release_name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
        raise CurationError(f"bad --name {args.name!r}: use letters, digits, '.', '_' and '-'")
    if args.min_per_class < 0 or (args.max_per_class is not None and args.max_per_class < 1):
        raise CurationError("--min-per-class must be >= 0 and --max-per-class >= 1")
    if args.max_per_class is not None and args.max_per_class < args.min_per_class:
        raise CurationError("--max-per-class is smaller than --min-per-class")
    out_dir: Path = args.out_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise CurationError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not args.force:
        raise CurationError(f"{out_dir} is not empty; pass --force to replace it")
    _refuse_precious(out_dir, settings)
    votes_needed = votes_needed_setting(settings)
    with catalog.session() as session:
        selection = select_items(session, votes_needed, args.min_per_class, args.max_per_class)
        if not selection.items:
            raise CurationError(
                f"nothing to release: no image is kept by the filter, unique and accepted (votes_needed={votes_needed})"
            )
        context = datasheet_context(session, settings, selection, votes_needed, args)
    written, failures = write_release(selection.items, out_dir, args.name, settings.data_dir, context)
    options = {
        "name": args.name,
        "version": args.release_version,
        "votes_needed": votes_needed,
        "min_per_class": args.min_per_class,
        "max_per_class": args.max_per_class,
        "left_out": dict(sorted(selection.dropped.items())),
        "failed": dict(sorted(Counter(failures.values()).items())),
    }
    with catalog.session() as session:
        record = cat.Release(
            name=args.name,
            version=args.release_version,
            out_dir=str(out_dir.resolve()),
            n_images=len(written),
            archive_sha256=context["archive_sha256"],
            settings=json.dumps(options, sort_keys=True),
        )
        session.add(record)
        session.flush()
        session.add_all(
            [cat.ReleaseItem(release_id=record.id, sha256=i.sha256, wnid=i.wnid, file=i.file) for i in written]
        )
    n_classes = len({i.label for i in written})
    left_out = ", ".join(f"{n} {reason}" for reason, n in sorted(selection.dropped.items())) or "none"
    print(
        f"release {args.name} {args.release_version}: {len(written)} images in {n_classes} classes "
        f"written to {out_dir} ({len(failures)} failed; left out: {left_out}); "
        f"archive sha256 {context['archive_sha256']}",
        file=sys.stderr,
    )
    for sha, reason in sorted(failures.items()):
        print(f"  failed {sha[:16]}: {reason}", file=sys.stderr)
    print(f"  evaluate: {eval_command(kind, out_dir / args.name)}", file=sys.stderr)
    return 0


def eval_command(kind: Any, root: Path) -> str:
    """The `curation eval` line that scores a model on this kind of release with the kind's metrics."""
    if kind.metrics == "ood":
        return f"curation eval {root} --ood --in-dist ID_DIR --model NAME (AUPR, AUROC, FPR95)"
    return f"curation eval {root} --model NAME (restricted top-1, calibration error, AURRA)"


def _refuse_precious(out_dir: Path, settings: Settings) -> None:
    """OUT_DIR is replaced whole: never let it be (or hold) the data dir, the catalog or the current folder."""
    target = out_dir.resolve()
    precious = [("the data directory", settings.data_dir), ("the current folder", Path.cwd())]
    if settings.db_url.startswith("sqlite:///"):
        precious.append(("the catalog", Path(settings.db_url[len("sqlite:///") :])))
    for what, path in precious:
        resolved = path.resolve()
        if resolved == target or target in resolved.parents:
            raise CurationError(f"refusing to write a release to {out_dir}: it holds {what}")


# --------------------------------------------------------------------------- selection


def select_items(session: Session, votes_needed: int, min_per_class: int, max_per_class: int | None) -> Selection:
    """The release's (image, class) pairs with their provenance; deterministic for a given catalog.

    Above ``max_per_class`` a class keeps its images with the smallest sha256 (a fixed pseudo-random
    choice); classes below ``min_per_class`` are left out whole.
    """
    from sqlalchemy import func

    dropped: Counter = Counter()
    reviewable = (
        select(cat.FilterVerdict, cat.DedupStatus.label_conflict, cat.Image)
        .join(cat.DedupStatus, cat.DedupStatus.sha256 == cat.FilterVerdict.sha256)
        .join(cat.Image, cat.Image.sha256 == cat.FilterVerdict.sha256)
        .where(cat.FilterVerdict.kept.is_(True), cat.DedupStatus.status == cat.REPRESENTATIVE)
    )
    total = session.scalar(select(func.count()).select_from(reviewable.subquery())) or 0
    accepted = cat.accepted_query(votes_needed).subquery()
    rows = session.execute(
        reviewable.join(
            accepted, (accepted.c.sha256 == cat.FilterVerdict.sha256) & (accepted.c.wnid == cat.FilterVerdict.wnid)
        ).order_by(cat.FilterVerdict.wnid, cat.FilterVerdict.sha256)
    ).all()
    dropped["not accepted"] += total - len(rows)
    names = dict(session.execute(select(cat.ImageClass.wnid, cat.ImageClass.name)).all())
    chosen: list[tuple[cat.FilterVerdict, cat.Image]] = []
    for verdict, label_conflict, image in rows:
        if label_conflict:
            dropped["label conflict"] += 1
        else:
            chosen.append((verdict, image))
    classes_of = Counter(verdict.sha256 for verdict, _ in chosen)
    single = [(v, im) for v, im in chosen if classes_of[v.sha256] == 1]
    dropped["accepted for several classes"] += len(chosen) - len(single)
    folders = release_folders(session, [(v.sha256, v.wnid) for v, _ in single])
    by_class: dict[str, list[tuple[cat.FilterVerdict, cat.Image]]] = defaultdict(list)
    for verdict, image in single:
        folder = verdict.wnid if folders is None else folders.get((verdict.sha256, verdict.wnid))
        if folder is None:
            dropped["no filter prediction"] += 1
            continue
        by_class[folder].append((verdict, image))
    items: list[Item] = []
    for folder in sorted(by_class):
        pairs = sorted(by_class[folder], key=lambda pair: pair[0].sha256)
        if len(pairs) < min_per_class:
            dropped[f"class below --min-per-class {min_per_class}"] += len(pairs)
            continue
        if max_per_class is not None and len(pairs) > max_per_class:
            dropped[f"above --max-per-class {max_per_class}"] += len(pairs) - max_per_class
            pairs = pairs[:max_per_class]
        for verdict, image in pairs:
            items.append(
                Item(
                    sha256=image.sha256,
                    wnid=verdict.wnid,
                    class_name=names.get(verdict.wnid, verdict.wnid),
                    folder="" if folder == verdict.wnid else folder,
                    folder_name="" if folder == verdict.wnid else names.get(folder, folder),
                    path=image.path,
                    format=image.format,
                    width=image.width,
                    height=image.height,
                    keep_rule=verdict.keep_rule,
                    filter_model=_first_model(verdict.models),
                )
            )
    attach_provenance(session, items, names)
    return Selection(items=items, dropped=Counter({k: v for k, v in dropped.items() if v}))


def release_folders(session: Session, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], str] | None:
    """(sha256, wnid) -> release folder, for kinds that file images under the model's prediction
    (ImageNet-O: the predicted target); None for kinds that use the crawled class."""
    from curation.kinds import catalog_kind

    if catalog_kind(session).release_folder != "prediction":
        return None
    from curation.kinds.by_target import predicted_targets

    return predicted_targets(session, pairs)


def _first_model(models_json: str) -> str:
    try:
        models = json.loads(models_json)
    except (TypeError, ValueError):
        return ""
    return str(models[0]) if isinstance(models, list) and models else ""


# Images whose candidates, predictions and votes are read per query (indexed IN look-ups).
PROVENANCE_BATCH = 500


def attach_provenance(session: Session, items: list[Item], names: dict[str, str]) -> None:
    """Fill each item's source, licence, filter prediction and votes from the catalog: indexed
    look-ups of the items' images only, memory proportional to the items."""
    from curation.synsets import wordnet_lemmas

    lemmas = wordnet_lemmas()
    for start in range(0, len(items), PROVENANCE_BATCH):
        part = items[start : start + PROVENANCE_BATCH]
        shas = sorted({i.sha256 for i in part})
        candidates, any_class = _first_candidates(session, shas)
        predictions = _predictions_by_model(session, shas)
        votes = _votes(session, shas)
        for item in part:
            cand = candidates.get((item.sha256, item.wnid)) or any_class.get(item.sha256)
            if cand is not None:
                item.source = cand.source
                item.image_url = cand.url or ""
                item.page_url = cand.page_url or ""
                item.title = cand.title or ""
                item.author = cand.author or ""
                item.license = cand.license or ""
                item.crawled_at = cand.created_at
            by_model = predictions.get((item.sha256, item.wnid), {})
            if item.filter_model not in by_model and by_model:
                item.filter_model = min(by_model)
            pred = by_model.get(item.filter_model)
            if pred is not None:
                item.filter_rule = pred.rule
                item.filter_prediction = pred.pred_wnid or ""
                item.filter_prediction_name = (
                    names.get(pred.pred_wnid or "") or lemmas.get(pred.pred_wnid or "", "").split(",")[0]
                )
                item.filter_confidence = pred.confidence
            item.votes = votes.get((item.sha256, item.wnid), Counter())


def _first_candidates(session: Session, shas: list[str]) -> tuple[dict, dict]:
    """The first downloaded candidate of each (image, class) and of each image."""
    columns = (cat.Candidate.image_sha256, cat.Candidate.wnid, cat.Candidate.source, cat.Candidate.url)
    columns += (cat.Candidate.page_url, cat.Candidate.title, cat.Candidate.author, cat.Candidate.license)
    candidates: dict[tuple[str, str], Any] = {}
    any_class: dict[str, Any] = {}
    for cand in session.execute(
        select(*columns, cat.Candidate.created_at)
        .where(cat.Candidate.image_sha256.in_(shas), cat.Candidate.status == cat.DOWNLOADED)
        .order_by(cat.Candidate.id)
    ):
        candidates.setdefault((cand.image_sha256, cand.wnid), cand)
        any_class.setdefault(cand.image_sha256, cand)
    return candidates, any_class


def _predictions_by_model(session: Session, shas: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """(sha256, wnid) -> "model@weights" -> its successful prediction."""
    p = cat.Prediction
    predictions: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    for pred in session.execute(
        select(p.sha256, p.wnid, p.model, p.weights_hash, p.rule, p.pred_wnid, p.confidence)
        .where(p.sha256.in_(shas), p.status == "ok")
        .order_by(p.rule.desc(), p.id)
    ):  # "top1" before "restricted", so the restricted rule wins when a model ran both
        predictions[(pred.sha256, pred.wnid)][f"{pred.model}@{pred.weights_hash}"] = pred
    return predictions


def _votes(session: Session, shas: list[str]) -> dict[tuple[str, str], Counter]:
    """(sha256, wnid) -> verdict counts, skips left out."""
    from sqlalchemy import func

    a = cat.Annotation
    votes: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for sha, wnid, verdict, n in session.execute(
        select(a.sha256, a.wnid, a.verdict, func.count())
        .where(a.sha256.in_(shas), a.verdict != "skip")
        .group_by(a.sha256, a.wnid, a.verdict)
    ):
        votes[(sha, wnid)][verdict] = n
    return votes


# --------------------------------------------------------------------------- writing


def released_bytes(original: Path, fmt: str) -> tuple[bytes, str]:
    """The bytes to release for an original image and the format it was converted from ('' if copied)."""
    from PIL import Image

    data = original.read_bytes()
    if fmt.upper() == "JPEG":
        with Image.open(io.BytesIO(data)) as im:
            orientation = im.getexif().get(0x0112, 1)
        if orientation == 1:
            return data, ""
    from curation.storage import open_rgb

    buffer = io.BytesIO()
    open_rgb(original).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), fmt.upper() if fmt.upper() != "JPEG" else "JPEG (EXIF-rotated)"


def write_release(
    items: list[Item], out_dir: Path, name: str, data_dir: Path, context: dict[str, Any]
) -> tuple[list[Item], dict[str, str]]:
    """Write the release under a temporary folder and rename it to ``out_dir``.

    Returns the written items and, per failed sha256, a one-line reason (missing or changed file).
    Sets ``context["archive_sha256"]``.
    """
    from tqdm import tqdm

    for folder in sorted({i.file.split("/", 1)[0] for i in items}):
        check_wnid_folder(folder)
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CurationError(f"cannot create {parent}: {exc.strerror}") from None
    for stale in parent.glob(f".{out_dir.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    temp = parent / f".{out_dir.name}.partial-{os.getpid()}"
    root = temp / name
    root.mkdir(parents=True)
    written: list[Item] = []
    failures: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    try:
        for item in tqdm(items, desc="release", unit="img", file=sys.stderr, disable=None):
            original = data_dir / item.path
            try:
                if hashlib.sha256(original.read_bytes()).hexdigest() != item.sha256:
                    failures[item.sha256] = f"{original} no longer matches its sha256"
                    continue
                data, converted_from = released_bytes(original, item.format)
            except OSError as exc:
                failures[item.sha256] = f"cannot read {original}: {exc.strerror or exc}"
                continue
            target = root / item.file
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(data)
            written.append(item)
            rows.append(_manifest_row(item, hashlib.sha256(data).hexdigest(), converted_from))
        if not written:
            raise CurationError("nothing released: every selected image failed to copy")
        write_metadata(root, written, rows, context)
        archive = temp / f"{name}.tar.gz"
        write_archive(root, archive)
        context["archive_sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
        (temp / f"{name}.tar.gz.sha256").write_text(f"{context['archive_sha256']}  {name}.tar.gz\n")
        _swap_into_place(temp, out_dir)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return written, failures


def _swap_into_place(temp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        old = out_dir.resolve().parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
        temp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        temp.rename(out_dir)


def _manifest_row(item: Item, file_sha256: str, converted_from: str) -> dict[str, Any]:
    return {
        "file": item.file,
        "wnid": item.wnid,
        "class_name": item.class_name,
        "sha256": file_sha256,
        "image_sha256": item.sha256,
        "width": item.width,
        "height": item.height,
        "converted_from": converted_from,
        "source": item.source,
        "image_url": item.image_url,
        "page_url": item.page_url,
        "title": item.title,
        "author": item.author,
        "license": item.license,
        "filter_model": item.filter_model,
        "filter_prediction": item.filter_prediction,
        "filter_prediction_name": item.filter_prediction_name,
        "filter_confidence": "" if item.filter_confidence is None else repr(float(item.filter_confidence)),
        "votes_accept": item.votes.get("accept", 0),
        "votes_total": sum(item.votes.values()),
        **_ood_manifest_fields(item),
    }


def _ood_manifest_fields(item: Item) -> dict[str, Any]:
    """An image filed under its predicted target: the label columns name the target, and the source
    synset it was crawled for and its MSP are added."""
    if not item.folder:
        return {}
    return {
        "wnid": item.folder,
        "class_name": item.folder_name,
        "source_wnid": item.wnid,
        "source_name": item.class_name,
        "msp": "" if item.filter_confidence is None else repr(float(item.filter_confidence)),
    }


def write_metadata(root: Path, items: list[Item], rows: list[dict[str, Any]], context: dict[str, Any]) -> None:
    """README.txt, manifest.csv, ATTRIBUTION.md, DATASHEET.md, README.md (the dataset card),
    croissant.json, then (once the top level holds nothing else) SHA256SUMS over every file."""
    present = {i.label for i in items}
    label_space = context["label_space"]
    readme = [
        f"{context['name']} {context['version']}: {len(items)} natural adversarial examples in {len(present)} of the",
        f"{len(label_space)} classes below, one folder per WordNet ID (torchvision ImageFolder layout; a class",
        "without images has no folder). Score models with their logits restricted to all the classes below",
        "(`curation eval` does so). Provenance and licences: manifest.csv, ATTRIBUTION.md and DATASHEET.md.",
        "The WordNet ID and name of each class is as follows.",
    ]
    if context.get("ood"):
        readme = _ood_readme_intro(context, len(items), len(present))
    readme += ["", *[f"{wnid} {name}" for wnid, name in label_space]]
    (root / "README.txt").write_text("\n".join(readme) + "\n", encoding="utf-8")
    columns = MANIFEST_COLUMNS + (OOD_MANIFEST_COLUMNS if context.get("ood") else [])
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["file"]))
    (root / "ATTRIBUTION.md").write_text(attribution(context["name"], items), encoding="utf-8")
    (root / "DATASHEET.md").write_text(datasheet(items, context), encoding="utf-8")
    (root / "README.md").write_text(dataset_card(rows, context), encoding="utf-8")
    write_croissant(root, rows, context)
    check_layout(root, {folder_of(row) for row in rows})
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    sums = [f"{hashlib.sha256((root / f).read_bytes()).hexdigest()}  {f}" for f in files if f != "SHA256SUMS"]
    (root / "SHA256SUMS").write_text("\n".join(sums) + "\n", encoding="utf-8")


def _ood_readme_intro(context: dict[str, Any], n_items: int, n_present: int) -> list[str]:
    """README.txt's opening for an out-of-distribution release (ImageNet-O)."""
    return [
        f"{context['name']} {context['version']}: {n_items} out-of-distribution photos (of ImageNet-21k synsets outside",
        f"ImageNet-1k) that the filter model assigned to one of the {len(context['label_space'])} ImageNet-1k classes",
        f"below with a softmax probability of at least {context['min_confidence']}; each sits in the folder of the",
        f"class it was confused with ({n_present} folders; a class without images has no folder). Score a detector",
        "with -MSP over these classes' logits against in-distribution photos of them (`curation eval --ood`).",
        "Source synsets and MSPs: manifest.csv; provenance: ATTRIBUTION.md and DATASHEET.md.",
        "The WordNet ID and name of each class is as follows.",
    ]


def write_archive(root: Path, archive: Path) -> None:
    """A byte-reproducible ``.tar.gz`` of ``root``: sorted entries, fixed mtime, owner and modes."""
    entries = sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix())
    with open(archive, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for path in [root, *entries]:
                info = tarfile.TarInfo(path.relative_to(root.parent).as_posix())
                info.mtime = ARCHIVE_MTIME
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if path.is_dir():
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                else:
                    info.mode, info.size = 0o644, path.stat().st_size
                    with open(path, "rb") as fh:
                        tar.addfile(info, fh)


# --------------------------------------------------------------------------- attribution and datasheet


def needs_attribution(licence: str) -> bool:
    """Whether a licence string is a Creative Commons licence with the BY (attribution) clause."""
    lowered = licence.lower()
    words = re.sub(r"[-_/]", " ", lowered)
    return ("cc" in lowered or "creativecommons" in lowered) and bool(ATTRIBUTION_LICENCE.search(words))


def attribution(name: str, items: list[Item]) -> str:
    """ATTRIBUTION.md: one credit line per image, attribution-licensed ones first."""
    lines = [
        f"# Attribution for {name}",
        "",
        "Images under Creative Commons licences with the BY clause (CC BY, CC BY-SA, ...) may be shared",
        "only with credit to their authors. Each line gives the file, its title, author, licence and source page.",
        "",
        "## Images that require attribution",
        "",
    ]
    required = [i for i in items if needs_attribution(i.license)]
    others = [i for i in items if not needs_attribution(i.license)]
    lines += [_credit(i) for i in sorted(required, key=lambda i: i.file)] or ["(none)"]
    lines += ["", "## Other images", ""]
    lines += [_credit(i) for i in sorted(others, key=lambda i: i.file)] or ["(none)"]
    return "\n".join(lines) + "\n"


def _credit(item: Item) -> str:
    title = f'"{item.title}"' if item.title else "untitled"
    author = item.author or "unknown author"
    licence = item.license or "licence unknown"
    page = item.page_url or item.image_url or "no source page recorded"
    return f"- `{item.file}`: {title} by {author}, {licence}, {item.source or 'unknown source'}: <{page}>"


def datasheet_context(
    session: Session, settings: Settings, selection: Selection, votes_needed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Facts for the datasheet that come from the catalog and settings (never from the clock)."""
    from curation.annotate.agreement import agreement_stats

    references = session.execute(
        select(cat.ReferenceSet.name, cat.ReferenceSet.count, cat.ReferenceSet.complete).order_by(cat.ReferenceSet.name)
    ).all()
    annotation_dates = (
        session.execute(select(cat.Annotation.created_at).order_by(cat.Annotation.created_at)).scalars().all()
    )

    def public(section: str) -> dict[str, Any]:
        return {k: v for k, v in sorted(settings.section(section).items()) if not SECRET_KEY.search(k)}

    return {
        **ood_context(session),
        "name": args.name,
        "version": args.release_version,
        "label_space": label_space(session),
        "votes_needed": votes_needed,
        "min_per_class": args.min_per_class,
        "max_per_class": args.max_per_class,
        "dropped": selection.dropped,
        "references": references,
        "agreement": agreement_stats(session),
        "annotation_dates": (annotation_dates[0], annotation_dates[-1]) if annotation_dates else None,
        "thresholds": {"filter": public("filter"), "dedup": public("dedup"), "annotate": public("annotate")},
    }


def label_space(session: Session) -> list[tuple[str, str]]:
    """(wnid, name) of the release's label space: every catalog class, or the kind's targets."""
    from curation.kinds import catalog_kind
    from curation.synsets import read_recipe

    kind = catalog_kind(session)
    query = select(cat.ImageClass.wnid, cat.ImageClass.name).order_by(cat.ImageClass.wnid)
    if kind.ood:
        query = query.where(cat.ImageClass.wnid.in_([row["wnid"] for row in read_recipe(kind.recipe)]))
    return [tuple(row) for row in session.execute(query).all()]


def ood_context(session: Session) -> dict[str, Any]:
    """Datasheet facts of an out-of-distribution kind: the MSP threshold in force and the pool rule."""
    from curation.kinds import catalog_kind

    kind = catalog_kind(session)
    if not kind.ood:
        return {"ood": False}
    from curation.kinds.pool import POOL_RULE

    threshold = session.get(cat.Meta, "filter:min_confidence")
    return {
        "ood": True,
        "kind_title": kind.title,
        "min_confidence": threshold.value if threshold is not None else "unknown",
        "pool_rule": POOL_RULE,
    }


def _ood_selection(context: dict[str, Any], items: list[Item]) -> list[str]:
    """DATASHEET lines on how an out-of-distribution release was selected (threshold, pool rule)."""
    sources = sorted({(i.wnid, i.class_name) for i in items})
    return [
        f"- {context['kind_title']}: photos of source synsets outside ImageNet-1k, each filed under the ImageNet-1k "
        "class the filter model assigns it to (argmax over the label space's logits).",
        f"- Filter threshold: kept when the largest softmax probability over the {len(context['label_space'])} "
        f"classes (MSP) is at least {context['min_confidence']} (chosen by us; the authors did not publish theirs).",
        f"- Source pool rule (ours; the authors did not publish theirs): {context['pool_rule']}.",
        f"- Source synsets in this release: {len(sources)} ("
        + ", ".join(f"{wnid} {name}" for wnid, name in sources[:20])
        + (", ..." if len(sources) > 20 else "")
        + "; per image in manifest.csv).",
    ]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]


def datasheet(items: list[Item], context: dict[str, Any]) -> str:
    """DATASHEET.md: what is in the release, where it came from and how it was chosen."""
    sources = Counter(i.source or "unknown" for i in items)
    licences = Counter(i.license or "unknown" for i in items)
    classes = sorted({(i.label, i.folder_name or i.class_name) for i in items})
    per_class = Counter((i.label, i.source or "unknown") for i in items)
    dates = sorted(i.crawled_at for i in items if i.crawled_at is not None)
    models = Counter(f"{i.filter_model} (rule {i.filter_rule or 'unknown'})" for i in items)
    keep_rules = Counter(i.keep_rule for i in items)
    agreement = context["agreement"]
    lines = [
        f"# Datasheet: {context['name']} {context['version']}",
        "",
        "## Composition",
        "",
        f"- {len(items)} images in {len(classes)} of the catalog's {len(context['label_space'])} classes "
        "(one folder per WordNet ID; README.txt lists all of them), a test set only: no train split.",
        f"- Per class: min {min(Counter(i.label for i in items).values())}, "
        f"max {max(Counter(i.label for i in items).values())}.",
        "- Each image is a natural photo that the filter model(s) misclassified and that human annotators accepted "
        "as a clear example of its class."
        if not context.get("ood")
        else "- Each image is a natural photo of a synset outside ImageNet-1k that the filter model(s) assigned to "
        "its folder's class with high confidence and that human annotators accepted as showing its source synset "
        "clearly and none of the 1,000 ImageNet classes.",
        *[f"- {line}" for line in auto_accept_warning(context)],
        "",
        "## Collection",
        "",
        f"- Sources: {', '.join(f'{s} ({n})' for s, n in sorted(sources.items()))}.",
        f"- Crawled between {dates[0]:%Y-%m-%d} and {dates[-1]:%Y-%m-%d} (UTC)." if dates else "- Crawl dates unknown.",
    ]
    if context["annotation_dates"]:
        first, last = context["annotation_dates"]
        lines.append(f"- Annotated between {first:%Y-%m-%d} and {last:%Y-%m-%d} (UTC).")
    lines += ["", "## Selection", ""]
    if context.get("ood"):
        lines += _ood_selection(context, items)
    else:
        lines.append("- Filter: an image is kept for its class when the filter model(s) get it wrong.")
    lines += [
        f"  Models (by the images they judged): {', '.join(f'{m}: {n}' for m, n in sorted(models.items()))}.",
        f"  Keep rule: {', '.join(f'{r}: {n}' for r, n in sorted(keep_rules.items()))}.",
        "- Dedup: only cluster representatives; near-duplicates and images leaked from a reference set are left out.",
        "  Reference sets: "
        + (", ".join(f"{n} ({c} items{'' if ok else ', incomplete'})" for n, c, ok in context["references"]) or "none")
        + ".",
        f"- Annotation: accepted by a majority of {context['votes_needed']} vote(s), with more accepts than other "
        "verdicts (skips do not count); images accepted for several classes are left out.",
        f"- Per-class limits: min {context['min_per_class']}, max {context['max_per_class'] or 'none'} "
        "(above the maximum a class keeps the images with the smallest sha256).",
        "- Left out at release: "
        + (", ".join(f"{n} {r}" for r, n in sorted(context["dropped"].items())) or "nothing")
        + ".",
        "",
        "### Thresholds and settings",
        "",
        "```json",
        json.dumps(context["thresholds"], indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Annotator agreement",
        "",
        f"- {len(agreement['annotators'])} annotator(s), {agreement['votes']} votes (skips not counted) on "
        f"{agreement['images']} (image, class) pairs; {agreement['images_multi']} pairs with two or more votes, "
        f"{agreement['conflicts']} of them conflicting.",
        f"- Pairwise agreement {_number(agreement['pairwise_agreement'])}; Fleiss' kappa over all verdicts "
        f"{_number(agreement['fleiss_kappa'])}, accept versus not {_number(agreement['fleiss_kappa_accept'])} "
        "(n/a: fewer than two votes per pair, or a single verdict).",
    ]
    lines += ["", "## Licences", "", *_table(["licence", "images"], [[k, v] for k, v in sorted(licences.items())])]
    source_names = sorted(sources)
    lines += [
        "",
        "## Images per class and source",
        "",
        *_table(
            ["wnid", "class", "images", *source_names],
            [
                [
                    wnid,
                    name,
                    sum(per_class[(wnid, s)] for s in source_names),
                    *[per_class[(wnid, s)] for s in source_names],
                ]
                for wnid, name in classes
            ],
        ),
    ]
    return "\n".join(lines) + "\n"
