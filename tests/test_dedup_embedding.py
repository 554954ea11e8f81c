"""The embedding matcher (issue 25): proposals by EfficientNet-Lite0 features, proved by the geometric
verifier; features reused from the filter; reference embedding that resumes after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from sqlalchemy import select

from curation import catalog as cat
from curation import reference_sets
from curation.dedup import DEFAULT_DHASH_MARGIN, DEFAULT_MAX_DISTANCE, run_stage
from curation.dedup.config import EmbeddingSpec
from curation.features import FeatureStore
from tests.test_dedup import add_image, jpeg

VAL = Path(__file__).resolve().parents[2] / "shared" / "images" / "imagenet_val"
REFERENCE = sorted(VAL.glob("ILSVRC2012_val_000*.JPEG"))[:10]  # ten 227x227 photos
MONARCHS = ("ILSVRC2012_val_00012557.JPEG", "ILSVRC2012_val_00014310.JPEG")  # distinct, cos 0.86 (notes)


def _edits(path: Path) -> dict[str, Image.Image]:
    """Copies the hashes miss (README: crop 10 % 1 %, pad 1 %, screenshot 0.5 %), upscaled like web copies."""
    img = Image.open(path).convert("RGB").resize((454, 454), Image.BICUBIC)
    w, h = img.size
    crop = img.crop((int(0.12 * w), int(0.12 * h), int(0.88 * w), int(0.88 * h)))
    pad = Image.new("RGB", (w, int(h * 1.5)), "black")
    pad.paste(img, (0, h // 4))
    shot = Image.new("RGB", (int(w * 1.1), int(h * 1.3)), (236, 236, 236))
    ImageDraw.Draw(shot).rectangle((0, 0, shot.width, int(h * 0.12)), fill=(40, 60, 90))
    shot.paste(img, (int(w * 0.05), int(h * 0.16)))
    return {"crop": crop, "pad": pad, "screenshot": shot}


def _spec(checkpoint: Path) -> EmbeddingSpec:
    return EmbeddingSpec("tf_efficientnet_lite0", str(checkpoint), top_k=4)  # few images: 4 proposals suffice


def _dedup(catalog: cat.Catalog, data_dir: Path, checkpoint: Path, against: list[str] | None = None):
    return run_stage(
        catalog, data_dir, DEFAULT_MAX_DISTANCE, DEFAULT_DHASH_MARGIN, against or [], workers=2,
        embedding=_spec(checkpoint),
    )  # fmt: skip


def _links(catalog: cat.Catalog) -> list[cat.DuplicateLink]:
    with catalog.session() as session:
        return list(session.scalars(select(cat.DuplicateLink)))


def test_cropped_padded_and_screenshot_copies_of_a_reference_photo_are_leaked_by_a_proved_link(
    catalog_url, tmp_path, lite0_checkpoint
):
    from curation.dedup.embeddings import open_embedder
    from curation.dedup.ref_embed import embed_reference

    catalog = cat.open_catalog(catalog_url)
    refs = tmp_path / "refs"
    refs.mkdir()
    for path in REFERENCE:
        (refs / path.name).write_bytes(path.read_bytes())
    reference_sets.add_folder(catalog, tmp_path, "val10", refs, workers=1)
    embedder = open_embedder(catalog, _spec(lite0_checkpoint))
    assert embed_reference(catalog, tmp_path, "val10", embedder, None)[:2] == (10, 10)
    with catalog.session() as session:
        copies = {name: add_image(session, tmp_path, jpeg(img)) for name, img in _edits(REFERENCE[3]).items()}
        other = add_image(session, tmp_path, (VAL / MONARCHS[0]).read_bytes())
    summary = _dedup(catalog, tmp_path, lite0_checkpoint, ["val10"])
    assert "matchers: hash + embedding tf_efficientnet_lite0@" in summary.line()
    by_sha = {link.sha256: link for link in _links(catalog) if link.reference == "val10"}
    for name, sha in copies.items():
        link = by_sha.get(sha)
        assert link is not None, f"{name} copy not linked"
        assert link.other == REFERENCE[3].name and link.hash_kind.startswith("embed+") and link.score >= 40, name
    with catalog.session() as session:
        assert {session.get(cat.DedupStatus, sha).status for sha in copies.values()} == {cat.LEAKED}
        assert session.get(cat.DedupStatus, other).status == cat.REPRESENTATIVE
    # The copies are proved copies of each other too: one cluster, leaked as a whole.
    assert summary.leaked == 3


def test_a_proposal_that_fails_verification_never_joins_two_clusters(tmp_path, lite0_checkpoint):
    catalog = cat.open_catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    with catalog.session() as session:
        a, b = (add_image(session, tmp_path, (VAL / name).read_bytes()) for name in MONARCHS)
    _dedup(catalog, tmp_path, lite0_checkpoint)
    with catalog.session() as session:
        rows = [session.get(cat.DedupStatus, sha) for sha in (a, b)]
        assert [row.status for row in rows] == [cat.REPRESENTATIVE] * 2 and rows[0].cluster_id is None
        possible = list(session.scalars(select(cat.PossibleCopy)))
    assert not _links(catalog)
    # Proposed (the two monarchs are each other's nearest neighbour) and refused or left for review.
    assert all({p.sha256, p.other} == {a, b} and p.kind.startswith("embed+orb") for p in possible)


def test_features_the_filter_wrote_are_reused_without_a_second_forward(tmp_path, lite0_checkpoint, monkeypatch):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATION_")}
    env.update({"CURATION_DB": f"sqlite:///{tmp_path / 'catalog.sqlite'}", "CURATION_DATA_DIR": str(tmp_path)})
    from tests.test_filter import _val_folder

    folder = _val_folder(tmp_path / "photos", 6)
    cli = [sys.executable, "-m", "curation"]
    crawl = subprocess.run([*cli, "crawl", "--folder", str(folder)], env=env, capture_output=True, text=True)
    assert crawl.returncode == 0, crawl.stderr
    model = ["--model", "tf_efficientnet_lite0", "--checkpoint", str(lite0_checkpoint), "--device", "cpu"]
    filtered = subprocess.run([*cli, "filter", *model], env=env, capture_output=True, text=True)
    assert filtered.returncode == 0, filtered.stderr
    catalog = cat.open_catalog(env["CURATION_DB"])
    with catalog.session() as session:
        shas = list(session.scalars(select(cat.Image.sha256)))
    from curation.filter.weights import known_weights_hash

    with catalog.session() as session:
        weights = known_weights_hash(session, "tf_efficientnet_lite0", str(lite0_checkpoint))
    assert FeatureStore(tmp_path, "tf_efficientnet_lite0", weights).has(shas).all()
    from curation import inference

    forwards = []
    monkeypatch.setattr(inference, "iter_logits", lambda *a, **k: forwards.append(a) or iter(()))
    summary = _dedup(catalog, tmp_path, lite0_checkpoint)
    assert forwards == [] and summary.embedded_now == 0 and summary.images == len(shas) == 6


def test_reference_add_embedding_resumes_after_kill_9(tmp_path, lite0_checkpoint):
    refs = tmp_path / "refs"
    refs.mkdir()
    for path in sorted(VAL.glob("*.JPEG"))[:24]:
        (refs / path.name).write_bytes(path.read_bytes())
    db = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    script = f"""
import sys, time
from pathlib import Path
from curation import catalog as cat, reference_sets
from curation.dedup import embeddings
from curation.dedup.config import EmbeddingSpec
from curation.dedup.ref_embed import embed_reference
embeddings.EMBED_CHUNK = 4
catalog = cat.open_catalog({db!r})
reference_sets.add_folder(catalog, Path({str(tmp_path)!r}), "r", Path({str(refs)!r}), workers=1)
embedder = embeddings.open_embedder(catalog, EmbeddingSpec("tf_efficientnet_lite0", {str(lite0_checkpoint)!r}))
if sys.argv[1] == "slow":
    from curation.features import FeatureStore
    append = FeatureStore.append
    FeatureStore.append = lambda self, *a: (append(self, *a), time.sleep(0.5))[0]
print(embed_reference(catalog, Path({str(tmp_path)!r}), "r", embedder, None), flush=True)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATION_")}
    first = subprocess.Popen([sys.executable, "-c", script, "slow"], env=env, stdout=subprocess.PIPE, text=True)
    folder = tmp_path / "references" / "r" / "features"
    deadline = time.monotonic() + 60
    while len(list(folder.glob("*/seg-*.keys.npy"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done = 4 * len(list(folder.glob("*/seg-*.keys.npy")))
    assert 8 <= done < 24
    second = subprocess.run([sys.executable, "-c", script, "fast"], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == f"(24, {24 - done}, 0)"  # only what the killed run had not stored
    vectors = np.load(next(folder.glob("*/vectors.npy")))
    assert vectors.shape == (24, 1280) and np.all(np.abs(np.linalg.norm(vectors.astype(np.float32), axis=1) - 1) < 1e-2)


@pytest.mark.parametrize("n", [3])
def test_feature_store_appends_only_new_keys_and_survives_a_half_written_segment(tmp_path, n):
    store = FeatureStore(tmp_path, "m", "abc")
    shas = [f"{i:064x}" for i in range(n)]
    assert store.append(shas, np.eye(n, 4, dtype=np.float32)) == n
    assert store.append(shas[:1] + [f"{9:064x}"], np.ones((2, 4), np.float32)) == 1
    (store.folder / "seg-000003.vec.npy").write_bytes(b"half")  # a writer killed before its keys file
    found, vectors = FeatureStore(tmp_path, "m", "abc").get([shas[1], f"{7:064x}"])
    assert found.tolist() == [True, False] and vectors[0].tolist() == [0, 1, 0, 0]
