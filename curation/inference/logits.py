"""Logits (and pooled features) of images, chunk by chunk from one input pipeline, with the exact
re-check of close margins; and the same model pass over crops decoded elsewhere (a cluster)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curation.inference.decode import (
    TENSOR_MODES,
    ImageFiles,
    JpegBytes,
    Preprocess,
    collate,
    collate_bytes,
    image_error,
    normalize_batch,
    pil_batches,
    tensor_batches,
)
from curation.inference.models import LoadedModel, LogitsResult, resolve_precision
from curation.store.reader import FetchedBatches, ImageRef, Item, Source, fetch_sources, source_file

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


@contextmanager
def strict_fp32(enabled: bool) -> Iterator[None]:
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
    tensor_decode = tensor_decode and preprocess.fast and preprocess.interpolation in TENSOR_MODES
    dataset = (JpegBytes if tensor_decode else ImageFiles)(paths, preprocess)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=FetchedBatches(dataset.paths, batch_size),
        num_workers=workers,
        collate_fn=collate_bytes if tensor_decode else collate,
        pin_memory=device.type == "cuda" and not tensor_decode,
        prefetch_factor=4 if workers else None,
        worker_init_fn=_ignore_interrupts if workers else None,
    )
    batches = tensor_batches(loader, paths, preprocess, device) if tensor_decode else pil_batches(loader)
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
    with torch.inference_mode(), autocast, strict_fp32(precision == "fp32"):
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
    files = ImageFiles(paths, preprocess)
    indices, crops, approximate, errors = collate(files.__getitems__(list(enumerate(fetch_sources(files.paths)))))
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

    with ThreadPoolExecutor(max(1, threads)) as pool, torch.inference_mode(), strict_fp32(True):
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
