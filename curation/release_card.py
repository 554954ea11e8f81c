"""The release's dataset card (``README.md`` with a Hugging Face YAML header) and the guard that
keeps its top level loadable.

Measured with ``datasets`` 5.2, torchvision 0.29 and timm 1.0: ``load_dataset(release_dir)`` reads
this card and yields a ``test`` split whose labels are the wnid folders (without the card the
split is named ``train``); a ``metadata.csv`` would replace the folder labels and a stray top-level
image drops every label; torchvision's ``ImageFolder`` fails on a top-level folder with no images
and timm turns a stray top-level image into a class ``''``, shifting every index. So the release
holds nothing at its top level but wnid folders of ``.jpg`` files and ``KNOWN_FILES``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from curation.errors import CurationError

KNOWN_FILES = (
    "README.txt",
    "README.md",
    "manifest.csv",
    "ATTRIBUTION.md",
    "DATASHEET.md",
    "croissant.json",
    "SHA256SUMS",
)
WNID_FOLDER = re.compile(r"n\d{8}\Z")
IMAGES_GLOB = "*/*.jpg"
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))
CITATION = """@inproceedings{hendrycks2021nae,
  title={Natural Adversarial Examples},
  author={Dan Hendrycks and Kevin Zhao and Steven Basart and Jacob Steinhardt and Dawn Song},
  booktitle={CVPR},
  year={2021}
}"""


def check_wnid_folder(wnid: str) -> None:
    """A class folder name must be a WordNet ID (``n`` and 8 digits): nothing else may reach the disk."""
    if not WNID_FOLDER.match(wnid):
        raise CurationError(f"refusing to release class {wnid[:40]!r}: a class folder must be a WordNet ID (n########)")


def check_layout(root: Path, wnids: set[str]) -> None:
    """Refuse a release whose top level holds anything but its wnid folders of ``.jpg`` files and
    ``KNOWN_FILES`` (each of which the loaders above would misread)."""
    for entry in sorted(root.iterdir()):
        if entry.is_file() and entry.name in KNOWN_FILES:
            continue
        if entry.is_dir() and entry.name in wnids and WNID_FOLDER.match(entry.name):
            stray = [p.name for p in entry.iterdir() if not (p.is_file() and p.suffix == ".jpg")]
            if not stray:
                continue
            raise CurationError(f"refusing to release {root.name}: {entry.name}/{stray[0]} is not a .jpg image")
        raise CurationError(
            f"refusing to release {root.name}: {entry.name!r} at its top level is neither a class folder "
            f"nor one of {', '.join(KNOWN_FILES)}"
        )


def size_category(n: int) -> str:
    """Hugging Face's ``size_categories`` bucket for ``n`` examples."""
    return next((label for limit, label in SIZE_CATEGORIES if n < limit), "n>1M")


def folder_of(row: dict[str, Any]) -> str:
    """The class folder (the label) of a manifest row: the first part of its ``file``."""
    return str(row["file"]).split("/", 1)[0]


def licence_counts(rows: list[dict[str, Any]]) -> Counter:
    return Counter(row["license"] or "unknown" for row in rows)


def licence_summary(rows: list[dict[str, Any]]) -> str:
    """``"CC BY 2.0: 3, CC0 1.0: 7"``: each image keeps its own licence."""
    counts = licence_counts(rows)
    return ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))


def _yaml(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def card_header(rows: list[dict[str, Any]], context: dict[str, Any]) -> list[str]:
    """The YAML header: licence, task, size, the ``test`` split over the wnid folders and the labels."""
    wnids = sorted({folder_of(row) for row in rows})
    title = f"{context['name']} {context['version']}"
    return [
        "---",
        f"pretty_name: {_yaml(title)}",
        "license: other",
        "license_name: per-image",
        f"license_details: {_yaml('Each image keeps its own licence (manifest.csv, ATTRIBUTION.md): ' + licence_summary(rows))}",
        "task_categories:",
        "- image-classification",
        "task_ids:",
        "- multi-class-image-classification",
        "size_categories:",
        f"- {size_category(len(rows))}",
        "tags:",
        "- natural-adversarial-examples",
        "- robustness",
        "- imagenet",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: test",
        f"    path: {_yaml(IMAGES_GLOB)}",
        "dataset_info:",
        "  features:",
        "  - name: image",
        "    dtype: image",
        "  - name: label",
        "    dtype:",
        "      class_label:",
        "        names:",
        *[f"          '{k}': {wnid}" for k, wnid in enumerate(wnids)],
        "  splits:",
        "  - name: test",
        f"    num_examples: {len(rows)}",
        "---",
    ]


def auto_accept_warning(context: dict[str, Any]) -> list[str]:
    """A warning line when some votes come from `curation annotate auto-accept` (empty otherwise)."""
    from curation.annotate.auto_accept import AUTO_ACCEPT_ANNOTATOR

    n = context["agreement"]["annotators"].get(AUTO_ACCEPT_ANNOTATOR, 0)
    if not n:
        return []
    return [
        f"**Not a human review:** {n} votes by `{AUTO_ACCEPT_ANNOTATOR}` come from `curation annotate auto-accept`, "
        "which accepts every image unseen (the offline demo). Do not use this release as a dataset."
    ]


def summary(rows: list[dict[str, Any]], context: dict[str, Any]) -> str:
    """One paragraph: what the release holds."""
    n_classes = len({folder_of(row) for row in rows})
    if context.get("ood"):
        what = (
            f"{len(rows)} out-of-distribution photos filed under {n_classes} ImageNet-1k classes: real photos of "
            "other synsets that the filter model confidently took for the class of their folder, accepted in "
            "annotation, in the layout of ImageNet-O"
        )
    else:
        what = (
            f"{len(rows)} natural adversarial examples in {n_classes} classes: real photos that the filter model "
            "misclassified and that annotation accepted, in the layout of ImageNet-A"
        )
    return f"{what} (Hendrycks et al., CVPR 2021): one folder of JPEGs per WordNet ID. A test set only."


def dataset_card(rows: list[dict[str, Any]], context: dict[str, Any]) -> str:
    """README.md: the Hugging Face dataset card, with how to load the release in every tool."""
    per_class = Counter(folder_of(row) for row in rows)
    names = {folder_of(row): row["class_name"] for row in rows}
    name = context["name"]
    lines = [
        *card_header(rows, context),
        "",
        f"# {name} {context['version']}",
        "",
        summary(rows, context),
    ]
    if warning := auto_accept_warning(context):
        lines += ["", *warning]
    lines += [
        "",
        "## Load it",
        "",
        "Labels are the folder names (WordNet IDs) in sorted order, the same indices in every loader:",
        "",
        "```python",
        f'torchvision.datasets.ImageFolder("{name}")',
        f'timm.data.create_dataset("", root="{name}")',
        f'datasets.load_dataset("{name}", split="test")  # reads this card: the test split, labels from folders',
        f'mlcroissant.Dataset("{name}/croissant.json").records("images")  # image, label and every manifest column',
        "```",
        "",
        "Score a model with its logits restricted to the label space in README.txt (`curation eval` does so).",
        "",
        "## Classes",
        "",
        "| label | wnid | class | images |",
        "|---:|---|---|---:|",
        *[f"| {k} | {wnid} | {_cell(names[wnid])} | {n} |" for k, (wnid, n) in enumerate(sorted(per_class.items()))],
        "",
        "## Licences",
        "",
        "Each image keeps its own licence; ATTRIBUTION.md credits every author whose licence requires it.",
        "",
        "| licence | images |",
        "|---|---:|",
        *[f"| {_cell(lic)} | {n} |" for lic, n in sorted(licence_counts(rows).items())],
        "",
        "## Files",
        "",
        "README.txt (the label space), manifest.csv (provenance of every image), ATTRIBUTION.md, DATASHEET.md "
        "(how the images were chosen), croissant.json (MLCommons Croissant metadata), SHA256SUMS.",
        "",
        "## Citation",
        "",
        "The method is that of:",
        "",
        "```bibtex",
        CITATION,
        "```",
    ]
    return "\n".join(lines) + "\n"
