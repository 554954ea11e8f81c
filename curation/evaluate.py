"""`curation eval DATASET_DIR --model NAME`: score a timm model like the ImageNet-A paper.

DATASET_DIR is an ImageFolder tree (``<wnid>/<image>``): our release or the original ImageNet-A
folder. Labels are the sorted wnids, the files those ``torchvision.datasets.ImageFolder`` would
list. Images go through the shared inference pipeline (:mod:`curation.inference`, the model's own
preprocessing); the logits are restricted to the model outputs of the dataset's wnids.

`curation eval OOD_DIR --ood --in-dist ID_DIR --model NAME`: out-of-distribution detection like
ImageNet-O. Every image of either folder (flat or in class folders; the labels do not matter) is
scored by -MSP over the 200 ImageNet-O target logits; the OOD photos are the positives.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curation import metrics
from curation.config import Settings
from curation.errors import CurationError
from curation.synsets import DEFAULT_RECIPE, read_recipe

if TYPE_CHECKING:
    from curation.inference import LoadedModel

WNID = re.compile(r"n\d{8}")
IMAGENET_O_RECIPE = DEFAULT_RECIPE.with_name("imagenet_o.csv")
README_LINE = re.compile(r"^(n\d{8}) +\S", re.MULTILINE)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score a model on an ImageNet-A style folder (restricted top-1, RMS calibration error, AURRA) "
        "or, with --ood, as an out-of-distribution detector (AUPR, AUROC, FPR95)",
    )
    parser.add_argument(
        "dataset_dir",
        type=Path,
        metavar="DATASET_DIR",
        help="folder of <wnid>/ image folders; with --ood: the out-of-distribution photos (flat or in folders)",
    )
    parser.add_argument(
        "--ood",
        action="store_true",
        help="out-of-distribution detection like ImageNet-O: score = -MSP over the 200 ImageNet-O targets, "
        "DATASET_DIR photos are the positives, --in-dist photos the negatives",
    )
    parser.add_argument(
        "--in-dist",
        type=Path,
        metavar="ID_DIR",
        help="with --ood: in-distribution photos (flat or in folders), e.g. the ImageNet-1k val photos of the 200 targets",
    )
    parser.add_argument("--model", required=True, help="timm model name, e.g. resnet50.tv_in1k")
    parser.add_argument("--checkpoint", type=Path, help="state dict file (default: timm pretrained weights)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: the inference pipeline's)")
    parser.add_argument("--workers", type=int, help="image decoding workers (default: the inference pipeline's)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument(
        "--label-space",
        choices=["auto", "folder", "imagenet-a"],
        default="auto",
        help="classes the logits are restricted to: auto (default) = the wnids listed in DATASET_DIR/README.txt "
        "when they cover every folder (our releases and the original ImageNet-A), else the folders' wnids; "
        "folder; or the 200 ImageNet-A classes",
    )
    parser.add_argument("--predictions", type=Path, metavar="CSV", help="also write one row per image")
    parser.set_defaults(func=run)


def list_dataset(dataset_dir: Path) -> tuple[list[str], list[tuple[Path, str]]]:
    """The folder's wnids (sorted) and its (image, wnid) pairs, exactly the files ImageFolder lists."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not dataset_dir.is_dir():
        raise CurationError(f"dataset folder not found: {dataset_dir}")
    try:
        wnids, class_to_idx = find_classes(str(dataset_dir))
        samples = make_dataset(str(dataset_dir), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as exc:
        raise CurationError(f"{dataset_dir} is not an ImageFolder tree: {str(exc).splitlines()[0]}") from None
    strays = [w for w in wnids if not WNID.fullmatch(w)]
    if strays:
        raise CurationError(f"{dataset_dir}: folder {strays[0]!r} is not a WordNet ID (expected <wnid>/ folders)")
    return wnids, [(Path(path), wnids[label]) for path, label in samples]


def readme_wnids(dataset_dir: Path) -> list[str]:
    """The wnids of the "wnid name" lines of DATASET_DIR/README.txt (empty when there is none)."""
    try:
        text = (dataset_dir / "README.txt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return sorted({m.group(1) for m in README_LINE.finditer(text)})


def label_space(dataset_dir: Path, folder_wnids: list[str], choice: str) -> tuple[list[str], str]:
    """The sorted wnids whose logits are kept (see ``--label-space``) and where they came from;
    every folder must be one of them."""
    if choice == "imagenet-a":
        from curation.synsets import imagenet_a_reference

        wnids, origin = sorted(imagenet_a_reference()[0]), "imagenet-a"
    elif choice == "auto" and set(folder_wnids) <= set(listed := readme_wnids(dataset_dir)):
        wnids, origin = listed, "README.txt"
    else:
        wnids, origin = folder_wnids, "folders"
    outside = sorted(set(folder_wnids) - set(wnids))
    if outside:
        raise CurationError(f"folder {outside[0]} is not in the {choice} label space; use --label-space folder")
    return wnids, origin


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.batch_size is not None and args.batch_size < 1:
        raise CurationError("--batch-size must be at least 1")
    if args.ood:
        return run_ood(args)
    if args.in_dist is not None:
        raise CurationError("--in-dist only goes with --ood")
    folder_wnids, samples = list_dataset(args.dataset_dir)
    label_wnids, label_origin = label_space(args.dataset_dir, folder_wnids, args.label_space)
    position = {wnid: i for i, wnid in enumerate(label_wnids)}
    paths = [path for path, _ in samples]
    labels = np.array([position[wnid] for _, wnid in samples], dtype=np.int64)

    from curation.inference import class_indices, load_model, predict_logits

    loaded = load_model(args.model, args.checkpoint, device=args.device)
    indices = class_indices(loaded, label_wnids)
    result = predict_logits(
        loaded, paths, batch_size=args.batch_size, workers=args.workers, progress="eval", argmax_over=indices
    )
    readable = np.array([i for i in range(len(paths)) if i not in result.errors], dtype=np.int64)
    if len(readable) == 0:
        raise CurationError(f"no image under {args.dataset_dir} could be read")
    logits, labels = result.logits[readable], labels[readable]
    scores = metrics.score(logits, labels, indices)
    if args.predictions is not None:
        write_predictions(args.predictions, [paths[i] for i in readable], labels, logits, indices, label_wnids, loaded)
    report = {
        "model": loaded.name,
        "weights_hash": loaded.weights_hash,
        "dataset": str(args.dataset_dir),
        "n_classes": len(label_wnids),
        "label_space": label_origin,
        "n_unreadable": len(result.errors),
        **scores.as_dict(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    for i, reason in sorted(result.errors.items()):
        print(f"  unreadable {paths[i]}: {reason}", file=sys.stderr)
    print(
        f"eval: {scores.n_images} images ({len(result.errors)} unreadable), "
        f"{len(label_wnids)}-way top-1 {100 * scores.top1_restricted:.2f} %",
        file=sys.stderr,
    )
    return 0


def write_predictions(
    out: Path,
    paths: list[Path],
    labels: np.ndarray,
    logits: np.ndarray,
    indices: list[int],
    label_wnids: list[str],
    loaded: LoadedModel,
) -> None:
    """One CSV row per scored image: its label, restricted prediction, confidence and full-space argmax."""
    outputs = metrics.per_image(logits, labels, indices)
    full_wnids = loaded.label_wnids
    try:
        with open(out, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["file", "label", "prediction", "confidence", "correct", "full_prediction"])
            for k, path in enumerate(paths):
                full = int(outputs.full_prediction[k])
                writer.writerow(
                    [
                        path,
                        label_wnids[labels[k]],
                        label_wnids[outputs.prediction[k]],
                        repr(float(outputs.confidence[k])),
                        int(outputs.correct[k]),
                        full_wnids[full],
                    ]
                )
    except OSError as exc:
        raise CurationError(f"cannot write {out}: {exc.strerror}") from None


def print_report(report: dict) -> None:
    def percent(value: float | None) -> str:
        return "n/a (fewer than 100 images)" if value is None else f"{100 * value:6.2f} %"

    k = report["n_classes"]
    lines = [
        ("model", f"{report['model']} (weights {report['weights_hash']})"),
        (
            "dataset",
            f"{report['dataset']}: {report['n_images']} images, {k} classes ({report['label_space']}), {report['n_unreadable']} unreadable",
        ),
        (f"top-1, {k}-way restricted (canonical)", percent(report["top1_restricted"])),
        ("top-1, all model classes", percent(report["top1_full"])),
        ("RMS calibration error (authors')", percent(report["rms_calib_error"])),
        ("RMS calibration error (all bins)", percent(report["rms_calib_error_all_bins"])),
        ("AURRA", percent(report["aurra"])),
        ("images", str(report["n_images"])),
    ]
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        print(f"{name:<{width}}  {value}")


# --------------------------------------------------------------------------- out-of-distribution detection


def imagenet_o_targets() -> list[str]:
    """The 200 ImageNet-O target wnids (sorted), from the shipped ``data/classes/imagenet_o.csv``."""
    if not IMAGENET_O_RECIPE.is_file():
        raise CurationError(f"the ImageNet-O class list {IMAGENET_O_RECIPE} is missing")
    return sorted(row["wnid"] for row in read_recipe(IMAGENET_O_RECIPE))


def list_images(folder: Path) -> list[Path]:
    """Every image under ``folder`` (flat, or in class folders at any depth; symlinked folders are
    followed, as ImageFolder does), with the extensions ImageFolder accepts, in sorted order."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if not folder.is_dir():
        raise CurationError(f"folder not found: {folder}")
    paths = [
        Path(root) / name
        for root, _, names in os.walk(folder, followlinks=True)
        for name in names
        if name.lower().endswith(IMG_EXTENSIONS)
    ]
    if not paths:
        raise CurationError(f"no images under {folder} (expected {', '.join(IMG_EXTENSIONS[:3])}, ... files)")
    return sorted(paths)


def run_ood(args: argparse.Namespace) -> int:
    if args.in_dist is None:
        raise CurationError(
            "--ood needs --in-dist ID_DIR: the in-distribution photos (ImageNet-1k val of the 200 targets)"
        )
    if args.label_space != "auto":
        raise CurationError("--ood always scores the 200 ImageNet-O targets; leave out --label-space")
    if args.dataset_dir.resolve() == args.in_dist.resolve():
        raise CurationError(f"the out-of-distribution and in-distribution folders are the same: {args.dataset_dir}")
    ood_paths, in_paths = list_images(args.dataset_dir), list_images(args.in_dist)
    targets = imagenet_o_targets()

    from curation.inference import class_indices, load_model, predict_logits

    loaded = load_model(args.model, args.checkpoint, device=args.device)
    indices = class_indices(loaded, targets)
    paths = ood_paths + in_paths
    result = predict_logits(
        loaded, paths, batch_size=args.batch_size, workers=args.workers, progress="eval", argmax_over=indices
    )
    readable = np.array([i not in result.errors for i in range(len(paths))])
    is_ood = np.arange(len(paths)) < len(ood_paths)
    for folder, members in ((args.dataset_dir, is_ood), (args.in_dist, ~is_ood)):
        if not (readable & members).any():
            raise CurationError(f"no image under {folder} could be read")
    anomaly = np.full(len(paths), np.nan)
    anomaly[readable] = metrics.anomaly_scores(result.logits[readable], indices)
    scores = metrics.ood_scores(anomaly[readable & is_ood], anomaly[readable & ~is_ood])
    if args.predictions is not None:
        write_ood_predictions(args.predictions, paths, is_ood, readable, result.logits, indices, targets)
    report = {
        "model": loaded.name,
        "weights_hash": loaded.weights_hash,
        "dataset": str(args.dataset_dir),
        "in_dist": str(args.in_dist),
        "n_classes": len(targets),
        "label_space": "imagenet-o",
        "n_unreadable": len(result.errors),
        **scores.as_dict(),
    }
    print(json.dumps(report) if args.json else ood_report_text(report))
    for i, reason in sorted(result.errors.items()):
        print(f"  unreadable {paths[i]}: {reason}", file=sys.stderr)
    print(
        f"eval --ood: {scores.n_ood} out-of-distribution vs {scores.n_in_dist} in-distribution images "
        f"({len(result.errors)} unreadable), AUPR {100 * scores.aupr:.2f} % (chance {100 * scores.chance_aupr:.2f} %)",
        file=sys.stderr,
    )
    return 0


def write_ood_predictions(
    out: Path,
    paths: list[Path],
    is_ood: np.ndarray,
    readable: np.ndarray,
    logits: np.ndarray,
    indices: list[int],
    targets: list[str],
) -> None:
    """One CSV row per scored image: its set, MSP over the targets, anomaly score and predicted target."""
    restricted = metrics.softmax(logits[readable][:, indices])
    rows = zip(np.flatnonzero(readable), restricted.max(axis=1), restricted.argmax(axis=1), strict=True)
    try:
        with open(out, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["file", "set", "msp", "anomaly_score", "prediction"])
            for i, msp, target in rows:
                writer.writerow(
                    [paths[i], "ood" if is_ood[i] else "in_dist", repr(float(msp)), repr(float(-msp)), targets[target]]
                )
    except OSError as exc:
        raise CurationError(f"cannot write {out}: {exc.strerror}") from None


def ood_report_text(report: dict) -> str:
    def percent(value: float) -> str:
        return f"{100 * value:6.2f} %"

    lines = [
        ("model", f"{report['model']} (weights {report['weights_hash']})"),
        ("out-of-distribution (positives)", f"{report['dataset']}: {report['n_ood']} images"),
        ("in-distribution (negatives)", f"{report['in_dist']}: {report['n_in_dist']} images"),
        ("score", f"-MSP over the {report['n_classes']} ImageNet-O targets; {report['n_unreadable']} unreadable"),
        ("AUPR (canonical)", percent(report["aupr"])),
        ("AUPR at chance", percent(report["chance_aupr"])),
        ("AUROC", percent(report["auroc"])),
        ("FPR at 95 % recall (authors': closest)", percent(report["fpr95"])),
        ("FPR at 95 % recall (first >= 95 %)", percent(report["fpr95_first"])),
    ]
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)
