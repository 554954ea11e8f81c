"""Filter benchmark on the real shared photos, all in one process, one after the other:

(a) the authors' reference loop (hendrycks/natural-adv-examples eval.py: torchvision ImageFolder +
    PIL Resize(256)/CenterCrop(224) + fp32 DataLoader, batch 128, 4 workers, torchvision ResNet-50),
(b) `curation filter` end to end (catalog read, model load, decode, inference, catalog writes),
(c) the same model alone on pre-made tensors (the compute ceiling of (b)),

then prints images/s and the ratios b/a and b/c. The weights are random (no hub access here); the
architecture and the work are those of ResNet-50. ``--ablate`` also times the model alone in the
authors' layout (NCHW, no_grad) and in bf16, and the decode of one worker with and without draft.

    .venv/bin/python benchmarks/filter.py                 # 96 images
    .venv/bin/python benchmarks/filter.py --images 200 --ablate
"""

from __future__ import annotations

import argparse
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

SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "images" / "imagenet_samples"


def reference_loop(folder: Path, batch_size: int = 128, workers: int = 4) -> float:
    """Images/s of the authors' eval.py loop (fp32, NCHW, ImageFolder + PIL) with torchvision ResNet-50."""
    import torchvision
    from torchvision import transforms

    net = torchvision.models.resnet50(weights=None).eval()
    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    data = torchvision.datasets.ImageFolder(root=str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers)
    start = time.perf_counter()
    with torch.no_grad():
        for x, _ in loader:
            net(x).argmax(1)
    return len(data) / (time.perf_counter() - start)


def curation_filter(work: Path, checkpoint: Path, extra: list[str]) -> float:
    """Images/s of `curation filter` end to end, in this process."""
    args = ["--db", f"sqlite:///{work / 'catalog.sqlite'}", "--data-dir", str(work / "data")]
    n = len(list((work / "data" / "images").rglob("*.jpg")))
    start = time.perf_counter()
    code = curation_main([*args, "filter", "--checkpoint", str(checkpoint), "--device", "cpu", *extra])
    elapsed = time.perf_counter() - start
    assert code == 0
    return n / elapsed


def premade_tensors(paths: list[Path]) -> torch.Tensor:
    """The photos decoded, cropped and normalised once, as `curation filter` feeds them (channels_last)."""
    import numpy as np
    import timm
    from timm.data import resolve_data_config

    config = resolve_data_config(model=timm.create_model("resnet50.tv_in1k", pretrained=False))
    preprocess = inference.Preprocess(config)
    crops = torch.from_numpy(np.stack([preprocess(path)[0] for path in paths])).permute(0, 3, 1, 2)
    return inference.normalize_batch(crops, config, torch.device("cpu"))


def model_alone(x: torch.Tensor, batch_size: int, channels_last: bool = True, precision: str = "fp32") -> float:
    """Images/s of ResNet-50 on ready tensors, as `curation filter` runs it (channels_last, inference_mode).
    Real photos, not random noise: random inputs drive activations into slow denormal floats."""
    import timm

    model = timm.create_model("resnet50.tv_in1k", pretrained=False).eval()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    x = x.contiguous(memory_format=layout)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        model(x[:batch_size])  # warm-up (oneDNN primitive creation for this shape)
        start = time.perf_counter()
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size]).argmax(1)
    return len(x) / (time.perf_counter() - start)


def decode_rate(paths: list[Path], draft: bool) -> float:
    """Images/s of one process decoding + resizing + cropping (no model)."""
    import timm
    from timm.data import resolve_data_config

    config = resolve_data_config(model=timm.create_model("resnet50.tv_in1k", pretrained=False))
    preprocess = inference.Preprocess(config, draft=draft)
    start = time.perf_counter()
    for path in paths:
        preprocess(path)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="how many shared sample photos (max 200)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--ablate", action="store_true", help="also time layouts, bf16 and decode alone")
    parser.add_argument("--filter-args", default="", help="extra `curation filter` flags, e.g. '--workers 2'")
    opts = parser.parse_args()
    paths = sorted(SAMPLES.glob("*.JPEG"))[: opts.images]
    print(f"{len(paths)} real photos, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "reference"
        for path in paths:  # ImageFolder layout: <wnid>/<file>
            (folder / path.stem).mkdir(parents=True)
            (folder / path.stem / path.name).symlink_to(path)
        work = root / "curation"
        work.mkdir()
        assert curation_main(["--db", f"sqlite:///{work / 'catalog.sqlite'}", "--data-dir", str(work / "data"),
                              "crawl", "--folder", str(folder)]) == 0  # fmt: skip
        import timm

        checkpoint = root / "resnet50.pth"
        torch.save(timm.create_model("resnet50.tv_in1k", pretrained=False).state_dict(), checkpoint)

        batch = inference.default_batch_size(torch.device("cpu"))
        tensors = premade_tensors(paths)
        a = b = c = 0.0
        for _ in range(opts.repeats):  # interleaved, best of each: the CPU is shared
            a = max(a, reference_loop(folder))
            print(f"(a) authors' reference loop      {a:7.2f} images/s", flush=True)
            with sqlite3.connect(work / "catalog.sqlite") as con:  # score everything again
                con.execute("DELETE FROM filter_verdicts")
                con.execute("DELETE FROM predictions")
            b = max(b, curation_filter(work, checkpoint, opts.filter_args.split()))
            print(f"(b) curation filter, end to end  {b:7.2f} images/s", flush=True)
            c = max(c, model_alone(tensors, batch))
            print(f"(c) model alone, ready tensors   {c:7.2f} images/s (batch {batch}, channels_last, fp32)")
        print(
            f"best of {opts.repeats}: a {a:.2f}, b {b:.2f}, c {c:.2f} images/s; b/a = {b / a:.2f}   b/c = {b / c:.2f}"
        )
        if opts.ablate:
            print(f"model alone, NCHW fp32 no layout change   {model_alone(tensors, batch, False):7.2f} images/s")
            print(f"model alone, channels_last bf16 autocast  {model_alone(tensors, batch, True, 'bf16'):7.2f}")
            print(f"decode+resize, 1 process, full decode      {decode_rate(paths, False):7.2f} images/s")
            print(f"decode+resize, 1 process, JPEG draft       {decode_rate(paths, True):7.2f} images/s")


if __name__ == "__main__":
    main()
