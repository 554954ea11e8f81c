"""Decoding and cropping images as a timm data config says, on CPU workers (Pillow, JPEG draft
scaling) or in batches on the model's device (the GPU path); see :mod:`curation.inference`."""

from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image

from curation.store.reader import Item, Source, as_item, readable, source_file

# JPEG DCT scaling (1/2, 1/4, 1/8) is used only while the decoded shorter side stays >= this many
# times the resize target, so the antialiased resize still does the final, exact-geometry scaling.
DRAFT_FACTOR = 2


# --------------------------------------------------------------------------- CPU decode + resize


class Preprocess:
    """Picklable ``path -> uint8 HWC crop`` following a timm data config (normalisation comes later)."""

    def __init__(self, data_config: dict, draft: bool = True) -> None:
        from timm.data.transforms import str_to_pil_interp

        self.data_config = dict(data_config)
        _, height, width = data_config["input_size"]
        self.crop_size = (height, width)
        self.scale_size = math.floor(height / data_config.get("crop_pct", 0.875))
        self.fast = (
            height == width
            and data_config.get("crop_mode", "center") == "center"
            and math.floor(width / data_config.get("crop_pct", 0.875)) == self.scale_size
        )
        self.interpolation = data_config.get("interpolation", "bilinear")
        self.resample = str_to_pil_interp(self.interpolation)
        self.draft = draft
        self._generic: Any = None

    def geometry(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(resized size, crop top-left) exactly as torchvision Resize(shorter side) + CenterCrop."""
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.scale_size, int(self.scale_size * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        crop_h, crop_w = self.crop_size
        return (new_w, new_h), (int(round((new_w - crop_w) / 2.0)), int(round((new_h - crop_h) / 2.0)))

    def __call__(self, path: Item | BinaryIO) -> tuple[np.ndarray, bool]:
        """The crop, and whether it is approximate (JPEG draft scaling was applied)."""
        with Image.open(readable(path)) as img:
            if not self.fast:
                return self._generic_transform(img), False
            full_w, full_h = img.size
            if self.draft and img.format == "JPEG":
                want = self.scale_size * DRAFT_FACTOR
                img.draft("RGB", (want, want))
            rgb = img.convert("RGB")
        return self._resize_crop(rgb, full_w, full_h), rgb.size != (full_w, full_h)

    def of_image(self, img: Image.Image) -> np.ndarray:
        """The crop of an image already decoded (e.g. a tile cut from one), as it is: no draft scaling."""
        if not self.fast:
            return self._generic_transform(img)
        rgb = img.convert("RGB")
        return self._resize_crop(rgb, *rgb.size)

    def _resize_crop(self, rgb: Image.Image, full_w: int, full_h: int) -> np.ndarray:
        (new_w, new_h), (left, top) = self.geometry(full_w, full_h)
        crop_h, crop_w = self.crop_size
        # Without draft scaling these are the very operations of torchvision Resize + CenterCrop.
        resized = rgb.resize((new_w, new_h), self.resample)
        return np.asarray(resized.crop((left, top, left + crop_w, top + crop_h)))

    def _generic_transform(self, img: Image.Image) -> np.ndarray:
        if self._generic is None:
            from timm.data import create_transform

            config = {k: v for k, v in self.data_config.items() if k not in ("mean", "std")}
            self._generic = create_transform(**config, is_training=False, use_prefetcher=True)
        chw = np.asarray(self._generic(img.convert("RGB")))
        return np.ascontiguousarray(chw.transpose(1, 2, 0))


class ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Item], preprocess: Preprocess) -> None:
        self.paths = [as_item(p) for p in paths]
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitems__(self, batch: list[tuple[int, Source]]) -> list[tuple[int, np.ndarray | None, bool, str | None]]:
        """A batch of (position, source) from :class:`FetchedBatches`: the stored images' bytes were
        fetched in the main process (a local file is read here)."""
        return [self._decoded(i, source) for i, source in batch]

    def _decoded(self, index: int, source: Source) -> tuple[int, np.ndarray | None, bool, str | None]:
        try:
            if isinstance(source, Exception):
                raise source
            return index, *self.preprocess(source_file(source)), None
        except Exception as exc:  # noqa: BLE001 - any undecodable file is recorded, never fatal
            return index, None, False, image_error(exc)


OBJECT_REPR = re.compile(r" ?<[\w.]+ object at 0x[0-9a-f]+>")


def image_error(exc: BaseException) -> str:
    """One-line reason for an image that cannot be decoded, the same wherever it was read: PIL names
    the in-memory file it was handed (``<_io.BytesIO object at 0x...>``), an address that differs per
    process and told a local run's record from a Ray run's."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = OBJECT_REPR.sub("", text)
    return f"unreadable image: {type(exc).__name__}: {text}"[:300]


def collate(items: list[tuple[int, np.ndarray | None, bool, str | None]]) -> tuple:
    good = [(i, arr) for i, arr, _, _ in items if arr is not None]
    approximate = [i for i, arr, approx, _ in items if arr is not None and approx]
    errors = {i: err for i, arr, _, err in items if arr is None}
    batch = torch.from_numpy(np.stack([arr for _, arr in good])) if good else torch.empty(0, dtype=torch.uint8)
    return [i for i, _ in good], batch, approximate, errors


def normalize_batch(batch: torch.Tensor, data_config: dict, device: torch.device) -> torch.Tensor:
    """uint8 [B,3,H,W] (any strides) -> float channels_last, as ToTensor + Normalize compute it."""
    x = batch.to(device, non_blocking=True).float().div_(255)
    mean, std = _mean_std(tuple(data_config["mean"]), tuple(data_config["std"]), device)
    return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


@functools.lru_cache(maxsize=8)
def _mean_std(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Made once per device: a host-to-GPU copy per batch would stall the GPU queue."""
    return torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1)


def pil_batches(loader: Any) -> Any:
    """(indices, uint8 [B,3,H,W] channels_last view, approximate indices, errors) per CPU-decoded batch."""
    for indices, batch, approximate, errors in loader:
        yield indices, batch.permute(0, 3, 1, 2), approximate, errors


# --------------------------------------------------------------------------- GPU path: batched tensor decode
# Workers only read bytes; the main process decodes a whole batch of JPEGs at once with
# torchvision.io.decode_jpeg on the model's device (nvJPEG on CUDA) and resizes with antialiased
# F.interpolate there. Non-JPEG files and JPEGs the batched decoder rejects go through Pillow.

TENSOR_MODES = ("bilinear", "bicubic")
_JPEG_MAGIC = b"\xff\xd8\xff"


class JpegBytes(ImageFiles):
    def _decoded(self, index: int, source: Source) -> tuple[int, np.ndarray | None, bool, str | None]:
        """(index, raw JPEG bytes or a Pillow-made HWC crop, is_raw_jpeg, error)."""
        try:
            if isinstance(source, Exception):
                raise source
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            if data[:3] == _JPEG_MAGIC:
                return index, np.frombuffer(data, dtype=np.uint8), True, None
            return index, self.preprocess(io.BytesIO(data))[0], False, None
        except Exception as exc:  # noqa: BLE001 - any unreadable file is recorded, never fatal
            return index, None, False, image_error(exc)


def collate_bytes(items: list[tuple[int, np.ndarray | None, bool, str | None]]) -> tuple:
    """A batch as (JPEG indices, their bytes in one uint8 tensor, byte lengths, Pillow-crop indices,
    the crops [n,H,W,3], errors): two tensors per batch cross the worker boundary through shared
    memory, instead of one pickled array per image."""
    raw = [(i, arr) for i, arr, is_jpeg, _ in items if is_jpeg]
    crops = [(i, arr) for i, arr, is_jpeg, err in items if err is None and not is_jpeg]
    errors = {i: err for i, _, _, err in items if err is not None}
    buffer = torch.from_numpy(np.concatenate([arr for _, arr in raw])) if raw else torch.empty(0, dtype=torch.uint8)
    stacked = torch.from_numpy(np.stack([arr for _, arr in crops])) if crops else torch.empty(0, dtype=torch.uint8)
    return [i for i, _ in raw], buffer, [len(arr) for _, arr in raw], [i for i, _ in crops], stacked, errors


def resize_crop_tensor(image: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """uint8 [3,H,W] -> uint8 [3,h,w]: shorter-side resize (antialiased) + centre crop, on its device."""
    import torch.nn.functional as F

    _, height, width = image.shape
    (new_w, new_h), (left, top) = preprocess.geometry(width, height)
    crop_h, crop_w = preprocess.crop_size
    resized = F.interpolate(
        image[None].float(), size=(new_h, new_w), mode=preprocess.interpolation, antialias=True, align_corners=False
    )
    crop = resized[0, :, top : top + crop_h, left : left + crop_w]
    return crop.round_().clamp_(0, 255).to(torch.uint8)


def _decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Batched decode to RGB on ``device``; on a batch failure, image by image (None = rejected)."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)  # still torchvision's API
    try:
        return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        decoded: list[torch.Tensor | None] = []
        for data in datas:
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
        return decoded


def tensor_batches(loader: Any, paths: Sequence[Path], preprocess: Preprocess, device: torch.device) -> Any:
    """Like ``pil_batches``, decoding each batch's JPEGs together on ``device``; every crop is approximate."""
    for jpeg_indices, buffer, lengths, crop_indices, stacked, errors in loader:
        crops = {i: stacked[k].permute(2, 0, 1).to(device) for k, i in enumerate(crop_indices)}
        decoded = _decode_jpegs(list(torch.split(buffer, lengths)), device) if lengths else []
        for i, image in zip(jpeg_indices, decoded, strict=True):
            if image is not None:
                crops[i] = resize_crop_tensor(image, preprocess)
                continue
            try:  # e.g. CMYK or progressive oddities the batched decoder refuses
                crops[i] = torch.from_numpy(preprocess(paths[i])[0]).permute(2, 0, 1).to(device)
            except Exception as exc:  # noqa: BLE001
                errors[i] = image_error(exc)
        indices = sorted(crops)
        batch = torch.stack([crops[i] for i in indices]) if indices else torch.empty(0, dtype=torch.uint8)
        yield indices, batch, indices, errors
