"""``croissant.json``: the release described in MLCommons Croissant 1.1 JSON-LD.

A FileObject for ``manifest.csv`` (with its sha256) and a FileSet of the images; a RecordSet
``manifest`` over the CSV and the RecordSet ``images``: the image, its ``label`` (the folder name),
its ``file`` (joined to the manifest's ``file`` column) and every other manifest column through that
join (the columns are read from the written manifest's header). Nothing comes from the clock:
``datePublished`` is the day of the catalog's last vote, so the same catalog writes the same bytes.
``mlcroissant validate --jsonld croissant.json`` passes with no warning (tested).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from curation.release_card import CITATION, IMAGES_GLOB, licence_summary, summary

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"
# The @context of Croissant 1.1, as mlcroissant 1.1 writes it (a different one draws a warning).
CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "arrayShape": "cr:arrayShape",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "containedIn": "cr:containedIn",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "description": {"@container": "@language"},
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isArray": "cr:isArray",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "name": {"@container": "@language"},
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
COLUMN_TYPES = {
    "width": "sc:Integer",
    "height": "sc:Integer",
    "votes_accept": "sc:Integer",
    "votes_total": "sc:Integer",
    "filter_confidence": "sc:Float",
}
# Relative path of an image ("n01498041/<sha256>.jpg") and its class folder, from the path mlcroissant reads.
FILE_REGEX = r"^(?:.*/)?([^/]+/[^/]+)$"
LABEL_REGEX = r"^(?:.*/)?([^/]+)/[^/]+$"


def _field(record_set: str, name: str, data_type: str, source: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "@type": "cr:Field",
        "@id": f"{record_set}/{name}",
        "name": name,
        "dataType": data_type,
        "source": source,
        **extra,
    }


def _from_images(extract: str, regex: str | None = None) -> dict[str, Any]:
    source: dict[str, Any] = {"fileSet": {"@id": "image-files"}, "extract": {"fileProperty": extract}}
    if regex:
        source["transform"] = {"regex": regex}
    return source


def record_sets(columns: list[str]) -> list[dict[str, Any]]:
    """``manifest`` (the CSV as it is) and ``images`` (image, label, file, then the manifest joined on file)."""
    manifest = [
        _field(
            "manifest",
            c,
            COLUMN_TYPES.get(c, "sc:Text"),
            {"fileObject": {"@id": "manifest.csv"}, "extract": {"column": c}},
        )
        for c in columns
    ]
    images = [
        _field("images", "image", "sc:ImageObject", _from_images("content")),
        _field("images", "label", "sc:Text", _from_images("fullpath", LABEL_REGEX)),
        _field(
            "images",
            "file",
            "sc:Text",
            _from_images("fullpath", FILE_REGEX),
            references={"field": {"@id": "manifest/file"}},
        ),
        *[
            _field("images", c, COLUMN_TYPES.get(c, "sc:Text"), {"field": {"@id": f"manifest/{c}"}})
            for c in columns
            if c != "file"
        ],
    ]
    return [
        {
            "@type": "cr:RecordSet",
            "@id": "manifest",
            "name": "manifest",
            "description": "manifest.csv: one row per image with its provenance, licence, filter prediction and votes.",
            "key": {"@id": "manifest/file"},
            "field": manifest,
        },
        {
            "@type": "cr:RecordSet",
            "@id": "images",
            "name": "images",
            "description": "Each image with its label (the WordNet ID of its folder) and its manifest row.",
            "field": images,
        },
    ]


def croissant(root: Path, rows: list[dict[str, Any]], context: dict[str, Any]) -> dict[str, Any]:
    """The JSON-LD document for the release folder ``root`` (manifest.csv already written)."""
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        columns = next(csv.reader(fh))
    doc: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": context["name"],
        "description": summary(rows, context),
        "version": context["version"],
        "license": f"Each image keeps its own licence (manifest.csv, ATTRIBUTION.md): {licence_summary(rows)}",
        "citeAs": CITATION,
        "keywords": ["natural adversarial examples", "robustness", "ImageNet", "image classification"],
    }
    if context.get("annotation_dates"):  # a release needs accepted votes, so there always are some
        doc["datePublished"] = f"{context['annotation_dates'][1]:%Y-%m-%d}"
    doc["distribution"] = [
        {
            "@type": "cr:FileObject",
            "@id": "manifest.csv",
            "name": "manifest.csv",
            "contentUrl": "manifest.csv",
            "encodingFormat": "text/csv",
            "sha256": hashlib.sha256((root / "manifest.csv").read_bytes()).hexdigest(),
        },
        {
            "@type": "cr:FileSet",
            "@id": "image-files",
            "name": "image-files",
            "description": "The images, <wnid>/<sha256>.jpg.",
            "encodingFormat": "image/jpeg",
            "includes": IMAGES_GLOB,
        },
    ]
    doc["recordSet"] = record_sets(columns)
    return doc


def write_croissant(root: Path, rows: list[dict[str, Any]], context: dict[str, Any]) -> None:
    """Write ``root/croissant.json``."""
    text = json.dumps(croissant(root, rows, context), indent=2, ensure_ascii=False)
    (root / "croissant.json").write_text(text + "\n", encoding="utf-8")
