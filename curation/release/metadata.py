"""The release's files beside the images: README.txt, manifest.csv, ATTRIBUTION.md, DATASHEET.md, the
dataset card, croissant.json and SHA256SUMS."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

from curation.croissant import write_croissant
from curation.release.datasheet import attribution, datasheet
from curation.release.selection import Item
from curation.release_card import check_layout, dataset_card, folder_of

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


def manifest_row(item: Item, file_sha256: str, converted_from: str) -> dict[str, Any]:
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
