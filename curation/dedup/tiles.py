"""Tile queries of the embedding matcher: a collage or a heavy crop holds another photo in a part of
the frame, where the whole image's embedding does not find it (among 908 shared photos the source
of a 2x2 collage ranked up to 152nd). Each queried crawl image therefore also searches with the
embeddings of its nine tiles (:data:`curation.dedup.keypoints.TILES`: quadrants, centre, halves),
cut from the decoded image *before* the model's own resize and crop and run through the same
inference pipeline and engine as whole images (:func:`curation.dedup.embeddings.ensure_features`).

Tile vectors are stored apart (:class:`~curation.features.FeatureStore` part ``tiles``: one row of
nine vectors per image SHA-256) and only ever query: the catalog store and the reference indexes
searched hold whole-image vectors only, so no tile is a candidate another image finds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from curation.dedup.keypoints import TILES
from curation.engine import Task

# Neighbours each tile proposes (at or above the cosine floor): a collage's quadrant *is* its photo,
# found first; the second keeps a photo whose own copy is in the catalog too.
TILE_TOP_K = 2
# Proposals the tiles add per query beyond the whole image's top-k (the best by cosine, new ones
# only): verification costs ~160 ms a proposal on this machine, so the tiles add at most ~1.3 s per
# image to the whole image's 20 (3.2 s), and a 2x2 collage's four photos fit.
TILE_EXTRA = 8
# Images per tile chunk on this machine (nine crops each: 288 model inputs, 43 MB of uint8).
TILE_CHUNK = 32


def tile_crops(preprocess: Any, source: Any) -> np.ndarray:
    """The model's input (uint8 [9, H, W, 3]) of each tile of one image (a file, or its bytes as
    a readable source): decoded once, JPEGs at twice the scale the whole image is drafted to (a half
    tile keeps the model's resolution), each tile cut before the model's resize and crop."""
    from PIL import Image

    from curation.inference import DRAFT_FACTOR
    from curation.store.reader import source_file

    with Image.open(source_file(source)) as img:
        if preprocess.draft and img.format == "JPEG":
            want = 2 * preprocess.scale_size * DRAFT_FACTOR
            img.draft("RGB", (want, want))
        rgb = img.convert("RGB")
    width, height = rgb.size
    boxes = [
        (round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)) for _, x0, y0, x1, y1 in TILES
    ]
    return np.stack([preprocess.of_image(rgb.crop(box)) for box in boxes])


def decode_tiles(preprocess: Any, items: Sequence[Any], sources: Sequence[Any], start: int) -> Any:
    """A :class:`~curation.inference.DecodedChunk` of the tiles of ``items`` (their ``sources``:
    bytes, a path or the exception of a missing object), tile ``t`` of image ``i`` at position
    ``9 * (start + i) + t``: an image that does not decode is an error of each of its tiles."""
    from curation.inference import DecodedChunk, image_error

    n = len(TILES)
    indices, crops, errors = [], [], {}
    for i, source in enumerate(sources):
        try:
            if isinstance(source, Exception):
                raise source
            crops.append(tile_crops(preprocess, source))
            indices += range(n * i, n * i + n)
        except Exception as exc:  # noqa: BLE001 - any undecodable file is recorded, never fatal
            errors.update({n * i + t: image_error(exc) for t in range(n)})
    height, width = preprocess.crop_size
    stacked = np.concatenate(crops) if crops else np.zeros((0, height, width, 3), np.uint8)
    paths = [item for item in items for _ in range(n)]
    return DecodedChunk(n * start, paths, indices, stacked, [], errors)


class TileDecodeTask(Task):
    """Tiles of a batch of (position, image ref or path) on a cluster's CPU worker, which reads the
    store itself (as the filter's decode tasks do)."""

    def __init__(self, data_config: dict) -> None:
        self.data_config = data_config

    def setup(self) -> None:
        from curation.inference import Preprocess

        self.preprocess = Preprocess(self.data_config)

    def run(self, batch: list[tuple[int, Any]]) -> Any:
        from curation.store.reader import as_item, fetch_sources

        items = [as_item(item) for _, item in batch]
        return decode_tiles(self.preprocess, items, list(fetch_sources(items)), batch[0][0])


def tile_parts(loaded: Any, items: list[Any], executor: Any, score: Any, pipeline: dict, bar: Any) -> Iterator[Any]:
    """Chunks of tile features of ``items`` (image refs or paths) as
    :class:`~curation.inference.LogitsChunk` per image: ``features`` [n, 9 x dim], ``errors`` by
    image position. Locally the stored images are fetched and cut in this process (obstore is not
    fork-safe) and scored by inference's model pass; a cluster runs :class:`TileDecodeTask` and the
    filter's scoring actors (``score``)."""
    if executor is None or getattr(executor, "name", "local") == "local":
        parts = _local_parts(loaded, items, pipeline)
    else:
        positions = list(enumerate(items))
        decode = TileDecodeTask(loaded.data_config)
        parts = executor.pipeline(decode, score, positions, batch_size=TILE_CHUNK, workers=1)
    from curation.inference import LogitsChunk

    for part in parts:
        n = len(TILES)
        images = len(part.logits) // n
        bar.update(images)
        errors = {pos // n: reason for pos, reason in part.errors.items()}
        features = part.features.reshape(images, n * part.features.shape[1])
        yield LogitsChunk(part.start // n, np.zeros((images, 0), np.float32), errors, 0, features)


def _local_parts(loaded: Any, items: list[Any], pipeline: dict) -> Iterator[Any]:
    from curation.inference import Preprocess, score_decoded
    from curation.store.reader import as_item, fetch_sources

    preprocess = Preprocess(loaded.data_config)
    items = [as_item(item) for item in items]
    sources = fetch_sources(items)
    for start in range(0, len(items), TILE_CHUNK):
        chunk = items[start : start + TILE_CHUNK]
        decoded = decode_tiles(preprocess, chunk, [next(sources) for _ in chunk], start)
        yield score_decoded(loaded, decoded, features=True, workers=0, **pipeline)


def tile_vectors(store: Any, shas: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(found mask, float32 [len(shas) x 9, dim]) of the stored tiles of ``shas``, image by image."""
    found, rows = store.get(shas)
    return found, rows.reshape(len(shas) * len(TILES), -1)


def with_tiles(whole: list[tuple[str, float]], tiles: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """One query's proposals: the whole image's (``whole``: top-k at or above the floor), each with
    the best cosine any tile gave it, then at most :data:`TILE_EXTRA` others the tiles found, best
    cosine first."""
    best = dict(whole)
    extra: dict[str, float] = {}
    for other, cos in tiles:
        if other in best:
            best[other] = max(best[other], cos)
        else:
            extra[other] = max(extra.get(other, -1.0), cos)
    ranked = sorted(extra.items(), key=lambda kv: -kv[1])[:TILE_EXTRA]
    return [(other, best[other]) for other, _ in whole] + ranked
