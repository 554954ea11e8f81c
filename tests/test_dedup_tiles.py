"""Tile queries of the embedding matcher (issue 25): a 2x2 collage holds a reference photo that its
whole-image embedding does not propose (below the cosine floor, outside the top-k); a tile's
embedding proposes it and the verifier proves it, so the collage is leaked by an embed+orb link."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image
from sqlalchemy import select

from curation import catalog as cat
from curation import reference_sets
from curation.dedup import DEFAULT_DHASH_MARGIN, DEFAULT_MAX_DISTANCE, run_stage
from curation.dedup.config import EmbeddingSpec
from curation.dedup.embeddings import open_embedder
from curation.dedup.keypoints import TILES
from curation.dedup.ref_index import key_ids, normalise, reference_store
from curation.features import FeatureStore
from tests.test_dedup import add_image

VAL = Path(__file__).resolve().parents[2] / "shared" / "images" / "imagenet_val"
PHOTOS = sorted(VAL.glob("ILSVRC2012_val_000*.JPEG"))  # 227x227 photos
REFERENCE = PHOTOS[:12]
SOURCE = PHOTOS[2]  # the collage's reference photo: its whole-image cosine to the collage is 0.25
OTHERS = PHOTOS[20:23]  # the collage's other three photos, in no reference set


def _collage() -> bytes:
    """SOURCE top left, the three others beside it, each tile the photo's own size."""
    out = Image.new("RGB", (454, 454))
    for k, path in enumerate([SOURCE, *OTHERS]):
        out.paste(Image.open(path).convert("RGB"), ((k % 2) * 227, (k // 2) * 227))
    data = io.BytesIO()
    out.save(data, "JPEG", quality=90)
    return data.getvalue()


def test_a_collage_is_leaked_through_a_tile_its_whole_image_does_not_propose(tmp_path, lite0_checkpoint):
    refs = tmp_path / "refs"
    refs.mkdir()
    for path in REFERENCE:
        (refs / path.name).write_bytes(path.read_bytes())
    data_dir = tmp_path / "data"
    catalog = cat.open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    reference_sets.add_folder(catalog, data_dir, "val12", refs, workers=1)
    with catalog.session() as session:
        collage = add_image(session, data_dir, _collage())
    spec = EmbeddingSpec("tf_efficientnet_lite0", str(lite0_checkpoint), top_k=2)
    summary = run_stage(
        catalog, data_dir, DEFAULT_MAX_DISTANCE, DEFAULT_DHASH_MARGIN, ["val12"], workers=1, embedding=spec
    )
    with catalog.session() as session:
        links = list(session.scalars(select(cat.DuplicateLink)))
        status = session.get(cat.DedupStatus, collage).status
    assert [(link.sha256, link.other, link.reference) for link in links] == [(collage, SOURCE.name, "val12")]
    assert links[0].hash_kind.startswith("embed+") and links[0].score >= 40
    assert status == cat.LEAKED and summary.leaked == 1

    # The whole image alone would not have proposed the source: below the floor and outside the top 2.
    weights_hash = open_embedder(catalog, spec).weights_hash  # recorded by the run: no model load
    found, whole = FeatureStore(data_dir, spec.model, weights_hash).get([collage])
    keys = [p.name.encode() for p in REFERENCE]
    ref_found, ref_vectors = reference_store(data_dir, "val12", spec.model, weights_hash).get(key_ids(keys))
    assert found.all() and ref_found.all()
    cosines = normalise(ref_vectors) @ normalise(whole)[0]
    source = REFERENCE.index(SOURCE)
    assert cosines[source] < spec.cos_floor and int((cosines > cosines[source]).sum()) >= spec.top_k
    # ... while its tile (the top-left quadrant) finds it first, nearly identical.
    tile_found, tiles = FeatureStore(data_dir, spec.model, weights_hash, "tiles").get([collage])
    tile_cosines = normalise(tiles.reshape(len(TILES), -1)) @ normalise(ref_vectors).T
    assert tile_found.all() and tile_cosines[0].argmax() == source and tile_cosines[0, source] > 0.9
