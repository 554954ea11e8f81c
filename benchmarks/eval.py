"""`curation eval`'s image pipeline against the authors' eval.py loop (the baseline), same model,
same images, same process: torchvision ImageFolder + the model's timm eval transform + a
DataLoader of batch 128, then the restricted argmax. Prints images/s, the ratio, and both
accuracies (they must agree).

    .venv/bin/python benchmarks/eval.py [--root IMAGENET_A_DIR] [--repeat 3] [--device auto]

Without --root the 200 shared ImageNet photos are laid out as `<wnid>/<file>` symlinks (repeated
--repeat times); without --checkpoint the offline EfficientNet-Lite0 weights are used.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from curation import metrics  # noqa: E402
from curation.evaluate import list_dataset  # noqa: E402
from curation.inference import class_indices, load_model, predict_logits  # noqa: E402
from curation.wheel_weights import write_checkpoint  # noqa: E402

SAMPLES = REPO.parent / "shared" / "images" / "imagenet_samples"


def sample_folder(folder: Path, repeat: int) -> Path:
    root = folder / "imagenet-a"
    for photo in sorted(SAMPLES.glob("*.JPEG")):
        (root / photo.stem).mkdir(parents=True)
        for k in range(repeat):
            (root / photo.stem / f"{k}_{photo.name}").symlink_to(photo)
    return root


def authors_loop(loaded, root: Path, indices: list[int], workers: int) -> tuple[np.ndarray, float]:
    """eval.py's loop with the model's own timm transform: predictions and seconds."""
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(root), transform=create_transform(**loaded.data_config))
    loader = torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=False, num_workers=workers)
    start = time.perf_counter()
    predictions = []
    with torch.no_grad():
        for data, _ in loader:
            output = loaded.model(data.to(loaded.device))[:, indices]
            predictions.append(output.argmax(1).cpu().numpy())
    return np.concatenate(predictions), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or sample_folder(Path(tmp), args.repeat)
        checkpoint = args.checkpoint
        if checkpoint is None and args.model == "tf_efficientnet_lite0":
            checkpoint = write_checkpoint(Path(tmp) / "lite0.pth")[1]
        wnids, samples = list_dataset(root)
        labels = np.array([wnids.index(w) for _, w in samples])
        loaded = load_model(args.model, checkpoint, device=args.device)
        indices = class_indices(loaded, wnids)
        predict_logits(loaded, [p for p, _ in samples[:32]])  # warm-up
        baseline, baseline_s = authors_loop(loaded, root, indices, args.workers)
        start = time.perf_counter()
        result = predict_logits(loaded, [p for p, _ in samples], workers=args.workers)
        ours_s = time.perf_counter() - start
    ours = metrics.per_image(result.logits, labels, indices)
    n = len(samples)
    print(f"device {loaded.device}, model {loaded.name}, {n} images, {len(wnids)} classes")
    print(f"authors' loop (ImageFolder + timm transform + DataLoader 128): {n / baseline_s:7.1f} img/s")
    print(f"curation eval pipeline (curation.inference.predict_logits):   {n / ours_s:7.1f} img/s")
    print(f"speed-up: {baseline_s / ours_s:.2f}x")
    print(
        f"restricted top-1: authors' loop {np.mean(baseline == labels):.4f}, ours {ours.correct.mean():.4f}; "
        f"same prediction on {np.mean(baseline == ours.prediction):.2%} of images"
    )


if __name__ == "__main__":
    main()
