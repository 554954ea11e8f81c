"""The one input pipeline and model loader shared by the filter and eval stages.

Preprocessing always comes from the model's timm data config. For the usual centre-crop config
JPEG files are decoded with Pillow's draft mode (DCT scaling, only while the decoded shorter side
stays at least ``DRAFT_FACTOR`` times the resize target); then the very Resize + CenterCrop of
timm's transform follow, so an image that draft mode leaves alone is bit-identical to timm's.
Other configs run timm's own eval transform. Workers hand uint8 crops to the main process,
which normalises whole batches; one DataLoader serves a whole run (``iter_logits`` yields it in
chunks). On a GPU, JPEG batches are instead decoded and resized on the device (see "GPU path"
below). Every image that was drafted, decoded on the device or run in reduced precision (bf16/fp16
autocast) and whose top-2 logit margin is below ``recheck_threshold`` is re-run with Pillow without
draft scaling in strict fp32 (no TF32), so argmax decisions equal those of timm's transform + fp32.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image

from curation.errors import CurationError
from curation.store.reader import (
    FetchedBatches,
    ImageRef,
    Item,
    Source,
    as_item,
    fetch_sources,
    readable,
    source_file,
)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
# JPEG DCT scaling (1/2, 1/4, 1/8) is used only while the decoded shorter side stays >= this many
# times the resize target, so the antialiased resize still does the final, exact-geometry scaling.
DRAFT_FACTOR = 2
# Inexact rows (drafted or reduced precision) whose top-2 logit margin over the classes that matter is
# below ``recheck_threshold`` are re-run exactly: an argmax flips only where the margin error exceeds the
# margin. Measured by benchmarks/margin_errors.py on the 1,500 shared photos (JPEG draft + bf16 autocast
# against full decode + fp32), 1000-way and 200-way: the largest |top-2 margin error| was 0.41, 0.66 and
# 0.74 for EfficientNet-Lite0/1/2, at most 0.083 of the row's largest |logit|. The threshold
# max(1.5, 0.17 x largest |logit|) stays >= 2.27x every row's margin error (Lite1's worst row); no
# flip was left unchecked. It re-checks about 8 % of photos of the 200 classes in the 200-way rule.
MARGIN_RECHECK = 1.5
MARGIN_RECHECK_RELATIVE = 0.17
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    """A classifier ready for inference, with what is needed to preprocess and interpret it."""

    name: str
    model: torch.nn.Module
    data_config: dict
    weights_hash: str
    label_wnids: list[str]
    device: torch.device


@dataclass
class LogitsResult:
    """Logits of a list of images; rows of images that could not be read are NaN."""

    logits: np.ndarray
    errors: dict[int, str]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is refused."""
    if device not in DEVICES:
        raise CurationError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CurationError("--device cuda asked for, but no CUDA GPU is available (use --device cpu)")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.
    Measured on this project's 2-core AVX512-BF16 CPU: ResNet-50 alone 1.7x faster in bf16, and
    EfficientNet-Lite0 end to end (fp32 re-check of close margins included) 1.5x faster. Without
    native bf16, autocast emulates it and is slower than fp32."""
    if precision not in PRECISIONS:
        raise CurationError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        native_bf16 = device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return "bf16" if native_bf16 else "fp32"
    return precision


def state_dict_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """First 16 hex chars of a sha256 over every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CurationError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear line
        raise CurationError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CurationError(f"checkpoint {path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def label_space(model: torch.nn.Module) -> list[str]:
    """wnid of each output index, from timm's label metadata (empty when unknown)."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if subset is None:
        return []
    wnids = list(ImageNetInfo(subset).label_names())
    return wnids if len(wnids) == getattr(model, "num_classes", len(wnids)) else []


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) accepts a TCP connection within ``timeout``
    seconds; False at once in offline mode (``HF_HUB_OFFLINE=1``)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    parts = urlsplit(constants.ENDPOINT)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Offline, weights come from the local hub cache at once (or fail at once), instead of after
    a minute of retried requests."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def load_model(
    name: str, checkpoint: str | Path | None = None, device: str = "auto", pretrained: bool = True
) -> LoadedModel:
    """Create timm model ``name`` in eval mode on ``device``, with weights from ``checkpoint``
    (a timm state dict file) or, without one, timm's pretrained weights (needs the network)."""
    import timm
    from timm.data import resolve_data_config

    target = resolve_device(device)
    if not timm.is_model(name):
        raise CurationError(f"unknown model {name!r}: not a timm model name (e.g. resnet50.tv_in1k)")
    use_hub = pretrained and checkpoint is None
    offline = use_hub and not hub_reachable()
    try:
        with _hub_offline(offline):
            model = timm.create_model(name, pretrained=use_hub)
    except Exception as exc:  # noqa: BLE001 - offline hub failures come in many types
        why = "the model hub cannot be reached and they are not in its local cache" if offline else repr(exc)[:200]
        raise CurationError(
            f"cannot load pretrained weights of {name}: {why}; pass --checkpoint PATH (a timm state dict) "
            "or set [filter] checkpoint in curation.toml"
        ) from None
    if checkpoint is not None:
        state = _read_checkpoint(Path(checkpoint))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise CurationError(f"checkpoint {checkpoint} does not fit {name}: {first}") from None
    weights_hash = state_dict_hash(model.state_dict())
    model.eval().to(target, memory_format=torch.channels_last)
    return LoadedModel(
        name=name,
        model=model,
        data_config=resolve_data_config(model=model),
        weights_hash=weights_hash,
        label_wnids=label_space(model),
        device=target,
    )


def class_indices(loaded: LoadedModel, wnids: Sequence[str]) -> list[int]:
    """Output index of each wnid; refuses a class outside the model's label space."""
    if not loaded.label_wnids:
        raise CurationError(f"model {loaded.name} has no known label space: timm label metadata does not cover it")
    position = {wnid: i for i, wnid in enumerate(loaded.label_wnids)}
    indices = []
    for wnid in wnids:
        if wnid not in position:
            raise CurationError(f"model {loaded.name} cannot predict class {wnid}: not in its label space")
        indices.append(position[wnid])
    return indices


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


class _ImageFiles(torch.utils.data.Dataset):
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


def _collate(items: list[tuple[int, np.ndarray | None, bool, str | None]]) -> tuple:
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


def _pil_batches(loader: Any) -> Any:
    """(indices, uint8 [B,3,H,W] channels_last view, approximate indices, errors) per CPU-decoded batch."""
    for indices, batch, approximate, errors in loader:
        yield indices, batch.permute(0, 3, 1, 2), approximate, errors


# --------------------------------------------------------------------------- GPU path: batched tensor decode
# Workers only read bytes; the main process decodes a whole batch of JPEGs at once with
# torchvision.io.decode_jpeg on the model's device (nvJPEG on CUDA) and resizes with antialiased
# F.interpolate there. Non-JPEG files and JPEGs the batched decoder rejects go through Pillow.

_TENSOR_MODES = ("bilinear", "bicubic")
_JPEG_MAGIC = b"\xff\xd8\xff"


class _JpegBytes(_ImageFiles):
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


def _collate_bytes(items: list[tuple[int, np.ndarray | None, bool, str | None]]) -> tuple:
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


def _tensor_batches(loader: Any, paths: Sequence[Path], preprocess: Preprocess, device: torch.device) -> Any:
    """Like ``_pil_batches``, decoding each batch's JPEGs together on ``device``; every crop is approximate."""
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


@contextmanager
def _strict_fp32(enabled: bool) -> Iterator[None]:
    """fp32 that is fp32 on GPUs too: TF32 convolutions/matmuls off while it lasts."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if enabled:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def default_batch_size(device: torch.device) -> int:
    """Batch size when none is given: large on a GPU, moderate on a CPU."""
    return 256 if device.type == "cuda" else 32


def default_workers(device: torch.device) -> int:
    """DataLoader workers when none are given."""
    cores = os.cpu_count() or 1
    return min(cores, 16) if device.type == "cuda" else max(1, cores - 1)


def top2_margin(logits: np.ndarray, columns: Sequence[int] | None = None) -> np.ndarray:
    """Difference between the two largest logits of each row (over ``columns`` when given)."""
    sub = logits if columns is None else logits[:, list(columns)]
    if sub.shape[1] < 2:
        return np.full(len(sub), np.inf, dtype=np.float32)
    top = np.partition(sub, -2, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def recheck_threshold(scale: np.ndarray) -> np.ndarray:
    """Top-2 margin below which an inexact row is re-run exactly; ``scale``: each row's largest
    |logit| over all outputs (reduced-precision error grows with the size of the activations)."""
    return np.maximum(MARGIN_RECHECK, MARGIN_RECHECK_RELATIVE * scale)


def _num_classes(loaded: LoadedModel) -> int:
    return int(getattr(loaded.model, "num_classes", 0)) or len(loaded.label_wnids)


@dataclass
class LogitsChunk:
    """Logits of ``paths[start:start + len(logits)]``; ``errors`` keyed by position in ``paths``."""

    start: int
    logits: np.ndarray
    errors: dict[int, str]
    rechecked: int
    features: np.ndarray | None = None  # pooled pre-logits (float32) of the same forward, when asked for


@dataclass(frozen=True)
class _Scoring:
    """How a run scores its chunks (see :func:`iter_logits`), resolved for the model's device."""

    precision: str
    batch_size: int
    workers: int
    argmax_over: Sequence[int] | None = None
    margin_recheck: float | None = None
    near_decision: Any = None
    features: bool = False


def _scoring(loaded: LoadedModel, precision: str, batch_size: int | None, workers: int | None, *rest: Any) -> _Scoring:
    device = loaded.device
    batch_size = batch_size or default_batch_size(device)
    workers = default_workers(device) if workers is None else workers
    return _Scoring(resolve_precision(precision, device), batch_size, workers, *rest)


def _ignore_interrupts(_worker_id: int) -> None:
    """Decode workers leave Ctrl-C to the main process: a terminal's SIGINT reaches the whole process
    group, and a worker that died of it would fail the chunk that ``filter --follow`` commits on Ctrl-C."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def iter_logits(
    loaded: LoadedModel,
    paths: Sequence[Path],
    *,
    chunk_size: int = 4096,
    batch_size: int | None = None,
    workers: int | None = None,
    precision: str = "fp32",
    argmax_over: Sequence[int] | None = None,
    draft: bool = True,
    bar: Any = None,
    tensor_decode: bool | None = None,
    margin_recheck: float | None = None,
    near_decision: Any = None,
    features: bool = False,
) -> Iterator[LogitsChunk]:
    """Logits of ``paths`` in order, one chunk of about ``chunk_size`` images at a time, from one
    input pipeline (its workers live for the whole run); see :func:`predict_logits` for the options.
    Each chunk's close margins are re-checked before it is yielded. ``near_decision``: a function of a
    chunk's logits giving the rows whose decision an approximation could flip, in place of the top-2
    margin rule (e.g. an MSP near a threshold). ``features``: each chunk also carries the pooled
    pre-logits of the same forward (see :func:`forward_with_features`)."""
    device = loaded.device
    scoring = _scoring(loaded, precision, batch_size, workers, argmax_over, margin_recheck, near_decision, features)
    batch_size, workers = scoring.batch_size, scoring.workers
    chunk_size = max(1, -(-chunk_size // batch_size)) * batch_size  # whole batches
    if not paths:
        return
    preprocess = Preprocess(loaded.data_config, draft=draft)
    if tensor_decode is None:
        tensor_decode = device.type == "cuda"
    tensor_decode = tensor_decode and preprocess.fast and preprocess.interpolation in _TENSOR_MODES
    dataset = (_JpegBytes if tensor_decode else _ImageFiles)(paths, preprocess)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=FetchedBatches(dataset.paths, batch_size),
        num_workers=workers,
        collate_fn=_collate_bytes if tensor_decode else _collate,
        pin_memory=device.type == "cuda" and not tensor_decode,
        prefetch_factor=4 if workers else None,
        worker_init_fn=_ignore_interrupts if workers else None,
    )
    batches = _tensor_batches(loader, paths, preprocess, device) if tensor_decode else _pil_batches(loader)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once
    for start in range(0, len(paths), chunk_size):
        yield _chunk_logits(loaded, batches, paths, range(start, min(start + chunk_size, len(paths))), scoring, bar)


def _chunk_logits(
    loaded: LoadedModel, batches: Iterator[tuple], paths: Sequence[Path], span: range, scoring: _Scoring, bar: Any
) -> LogitsChunk:
    """Logits of ``paths[span]`` from the next batches of ``batches`` (indices, uint8 [B,3,H,W],
    approximate indices, errors; ``scoring.batch_size`` paths each), close margins re-checked."""
    device, start, precision = loaded.device, span.start, scoring.precision
    logits = np.full((len(span), _num_classes(loaded)), np.nan, dtype=np.float32)
    errors: dict[int, str] = {}
    approximate = np.zeros(len(span), dtype=bool)
    rows: list[int] = []
    outputs, pooled = [], []  # kept on the device until the chunk ends: no GPU sync per batch
    autocast = torch.autocast(
        device.type, dtype=_AUTOCAST_DTYPES.get(precision, torch.bfloat16), enabled=precision != "fp32"
    )
    with torch.inference_mode(), autocast, _strict_fp32(precision == "fp32"):
        for _ in range(start, span.stop, scoring.batch_size):
            indices, batch, batch_approximate, batch_errors = next(batches)
            errors.update(batch_errors)
            approximate[[i - start for i in batch_approximate]] = True
            if indices:
                x = normalize_batch(batch, loaded.data_config, device)
                if scoring.features:
                    out, vec = forward_with_features(loaded.model, x)
                    pooled.append(vec.float())
                else:
                    out = loaded.model(x)
                outputs.append(out.float())
                rows += [i - start for i in indices]
            if bar is not None:
                bar.update(len(indices) + len(batch_errors))
        if outputs:
            logits[rows] = torch.cat(outputs).cpu().numpy()
    features = None
    if scoring.features:  # rows re-checked below keep the features of this pass (cos >= 0.997 to fp32)
        features = np.full((len(span), pooled[0].shape[1] if pooled else 0), np.nan, dtype=np.float32)
        if pooled:
            features[rows] = torch.cat(pooled).cpu().numpy()
    inexact = approximate | (precision != "fp32")
    inexact[[i - start for i in errors]] = False
    close = np.empty(0, dtype=np.int64)
    if inexact.any() and scoring.near_decision is not None:
        close = np.flatnonzero(inexact & scoring.near_decision(logits))
    elif inexact.any():
        threshold: Any = scoring.margin_recheck
        if threshold is None:
            threshold = recheck_threshold(np.nan_to_num(np.abs(logits).max(axis=1)))
        close = np.flatnonzero(inexact & (top2_margin(logits, scoring.argmax_over) < threshold))
    if len(close):
        exact, exact_errors = _exact_logits(
            loaded, [paths[start + i] for i in close], scoring.batch_size, scoring.workers
        )
        logits[close] = exact
        errors.update({start + int(close[j]): err for j, err in exact_errors.items()})
    return LogitsChunk(start, logits, errors, len(close), features)


def forward_with_features(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, pooled pre-logits) of one forward: timm's forward_features -> forward_head(pre_logits)
    -> classifier gives logits equal to ``model(x)`` (max |diff| 0.0 measured on Lite0)."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    return model.get_classifier()(pooled), pooled


# --------------------------------------------------------------------------- decode here, score elsewhere
# A cluster decodes on CPU workers and scores in a model's actor (curation.engine's pipeline): the
# crops travel between them, then the same model pass and exact re-check as iter_logits run.


@dataclass
class DecodedChunk:
    """``paths`` decoded and cropped by :func:`decode_chunk`; ``start``: the position of ``paths[0]``
    in the caller's list, which the scores' positions follow."""

    start: int
    paths: list[ImageRef | str]  # stored images, or local files
    indices: list[int]  # positions (in ``paths``) of the crops
    crops: np.ndarray  # uint8 [len(indices), H, W, 3]
    approximate: list[int]  # positions of crops made with JPEG draft scaling
    errors: dict[int, str]  # positions that could not be read, with the reason


def decode_chunk(preprocess: Preprocess, paths: Sequence[Item], start: int = 0) -> DecodedChunk:
    """Read, decode and crop ``paths`` as :func:`iter_logits`' CPU workers do (one bad file is an
    error of its position)."""
    files = _ImageFiles(paths, preprocess)
    indices, crops, approximate, errors = _collate(files.__getitems__(list(enumerate(fetch_sources(files.paths)))))
    return DecodedChunk(start, files.paths, indices, crops.numpy(), approximate, errors)


def score_decoded(
    loaded: LoadedModel,
    chunk: DecodedChunk,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    precision: str = "fp32",
    argmax_over: Sequence[int] | None = None,
    margin_recheck: float | None = None,
    near_decision: Any = None,
    features: bool = False,
) -> LogitsChunk:
    """The logits of a decoded chunk: the model pass and exact re-check of :func:`iter_logits`
    (``workers``: the re-check's decode threads), positions from ``chunk.start``."""
    scoring = _scoring(loaded, precision, batch_size, workers, argmax_over, margin_recheck, near_decision, features)
    row = {index: k for k, index in enumerate(chunk.indices)}

    def batches() -> Iterator[tuple]:
        for first in range(0, len(chunk.paths), scoring.batch_size):
            span = range(first, min(first + scoring.batch_size, len(chunk.paths)))
            indices = [i for i in span if i in row]
            crops = torch.from_numpy(chunk.crops[[row[i] for i in indices]]) if indices else torch.empty(0, 0, 0, 0)
            approximate = [i for i in chunk.approximate if i in span]
            yield indices, crops.permute(0, 3, 1, 2), approximate, {i: e for i, e in chunk.errors.items() if i in span}

    paths = list(chunk.paths)
    part = _chunk_logits(loaded, batches(), paths, range(len(paths)), scoring, None)
    errors = {chunk.start + i: e for i, e in part.errors.items()}
    return LogitsChunk(chunk.start, part.logits, errors, part.rechecked, part.features)


def _exact_logits(
    loaded: LoadedModel, paths: Sequence[Item], batch_size: int, threads: int
) -> tuple[np.ndarray, dict[int, str]]:
    """Logits on the exact path (Pillow without draft scaling, strict fp32). Decoding runs in threads
    of this process (Pillow releases the GIL), overlapping the model, with no worker start-up; stored
    images are fetched many at a time ahead of them."""
    from concurrent.futures import ThreadPoolExecutor

    preprocess = Preprocess(loaded.data_config, draft=False)

    def read(source: Source) -> np.ndarray | str:
        try:
            if isinstance(source, Exception):
                raise source
            return preprocess(source_file(source))[0]
        except Exception as exc:  # noqa: BLE001 - recorded, never fatal
            return image_error(exc)

    logits = np.full((len(paths), _num_classes(loaded)), np.nan, dtype=np.float32)
    errors: dict[int, str] = {}
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        batch = torch.from_numpy(np.stack([crop for _, crop in pending])).permute(0, 3, 1, 2)
        out = loaded.model(normalize_batch(batch, loaded.data_config, loaded.device))
        logits[[i for i, _ in pending]] = out.float().cpu().numpy()
        pending.clear()

    with ThreadPoolExecutor(max(1, threads)) as pool, torch.inference_mode(), _strict_fp32(True):
        for i, crop in enumerate(pool.map(read, fetch_sources(paths))):
            if isinstance(crop, str):
                errors[i] = crop
                continue
            pending.append((i, crop))
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
    return logits, errors


def predict_logits(
    loaded: LoadedModel,
    paths: Sequence[Path],
    *,
    progress: str | None = None,
    **options: Any,
) -> LogitsResult:
    """Logits of every image in ``paths`` (float32, NaN rows for unreadable files).

    With bf16/fp16, rows whose top-2 margin over ``argmax_over`` (default: every output) is below
    :func:`recheck_threshold` are recomputed on the exact path in fp32, so the argmax over those
    columns equals that of timm's transform + fp32. ``bar``: an open tqdm to update instead of a new
    one. ``tensor_decode`` (default: on CUDA): batched torchvision JPEG decode + tensor resize on the
    device; its crops count as approximate, so close margins are re-checked the same way.
    ``margin_recheck`` replaces the default threshold, e.g. after measuring another model's errors
    (benchmarks/margin_errors.py). Other options: those of :func:`iter_logits`.
    """
    from tqdm import tqdm

    result = LogitsResult(np.empty((0, 0), dtype=np.float32), {})
    own_bar = options.get("bar") is None
    if own_bar:
        options["bar"] = tqdm(total=len(paths), desc=progress, unit="img", disable=progress is None, leave=False)
    chunks = list(iter_logits(loaded, paths, chunk_size=max(1, len(paths)), **options))
    if own_bar:
        options["bar"].close()
    empty = np.full((0, _num_classes(loaded)), np.nan, dtype=np.float32)
    result.logits = np.concatenate([c.logits for c in chunks]) if chunks else empty
    for chunk in chunks:
        result.errors.update(chunk.errors)
    return result
