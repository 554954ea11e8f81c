"""The embedding matcher (issue 25): proposals by EfficientNet-Lite0 features, proved by the geometric
verifier; features reused from the filter; reference embedding that resumes after kill -9.

Cheap by sharing: one data folder holds the reference photos' and the crawl copies' features for both
catalogs (SQLite and PostgreSQL), so the second embeds nothing; the filter runs in this process; the
kill -9 case forks its child from this process (no second torch start-up) and resumes here."""

from __future__ import annotations

import os
import signal
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
REFERENCE = sorted(VAL.glob("ILSVRC2012_val_000*.JPEG"))[:8]  # eight 227x227 photos
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


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, bytes]]:
    """(data folder shared by both catalogs, reference photo folder, the copies' JPEG bytes)."""
    root = tmp_path_factory.mktemp("embedding")
    refs = root / "refs"
    refs.mkdir()
    for path in REFERENCE:
        (refs / path.name).write_bytes(path.read_bytes())
    return root / "data", refs, {name: jpeg(img) for name, img in _edits(REFERENCE[3]).items()}


def test_copies_of_a_reference_photo_are_leaked_by_proved_links_and_a_refused_pair_stays_apart(
    catalog_url, shared, lite0_checkpoint
):
    """Crop/pad/screenshot copies -> leaked by embed+orb links with scores; two distinct monarchs
    (each other's nearest neighbour, cos 0.86) are proposed, refused, and never joined."""
    from curation.dedup.embeddings import open_embedder
    from curation.dedup.ref_embed import embed_reference

    data_dir, refs, edits = shared
    data_dir.mkdir(exist_ok=True)
    catalog = cat.open_catalog(catalog_url)
    reference_sets.add_folder(catalog, data_dir, "val8", refs, workers=1)
    embedder = open_embedder(catalog, _spec(lite0_checkpoint))
    items, computed, unreadable = embed_reference(catalog, data_dir, "val8", embedder, None)
    assert items == 8 and unreadable == 0 and computed in (0, 8)  # 0: the other catalog's run embedded them
    with catalog.session() as session:
        assert session.get(cat.ReferenceSet, "val8").embed_count == 8
        copies = {name: add_image(session, data_dir, data) for name, data in edits.items()}
        a, b = (add_image(session, data_dir, (VAL / name).read_bytes()) for name in MONARCHS)
    summary = _dedup(catalog, data_dir, lite0_checkpoint, ["val8"])
    assert "matchers: hash + embedding tf_efficientnet_lite0@" in summary.line()
    links = _links(catalog)
    by_sha = {link.sha256: link for link in links if link.reference == "val8"}
    for name, sha in copies.items():
        link = by_sha.get(sha)
        assert link is not None, f"{name} copy not linked"
        assert link.other == REFERENCE[3].name and link.hash_kind.startswith("embed+") and link.score >= 40, name
    with catalog.session() as session:
        assert {session.get(cat.DedupStatus, sha).status for sha in copies.values()} == {cat.LEAKED}
        rows = [session.get(cat.DedupStatus, sha) for sha in (a, b)]
        possible = list(session.scalars(select(cat.PossibleCopy)))
    # The copies are proved copies of each other too: one cluster, leaked as a whole.
    assert summary.leaked == 3
    # The monarchs: proposed, then refused or left for review; never a link, never a cluster.
    assert [row.status for row in rows] == [cat.REPRESENTATIVE] * 2
    assert rows[0].cluster_id is None and rows[1].cluster_id is None
    assert not [link for link in links if {link.sha256, link.other} & {a, b}]
    assert all(p.kind.startswith("embed+orb") for p in possible if {p.sha256, p.other} & {a, b})
    assert summary.images == 5


def test_features_the_filter_wrote_are_reused_without_a_second_forward(
    catalog_url, tmp_path, lite0_checkpoint, monkeypatch
):
    from curation import inference
    from curation.cli import main
    from curation.filter.weights import known_weights_hash
    from tests.test_filter import _val_folder

    for key in [k for k in os.environ if k.startswith("CURATION_")]:
        monkeypatch.delenv(key)
    db = catalog_url
    common = ["--db", db, "--data-dir", str(tmp_path)]
    assert main([*common, "crawl", "--folder", str(_val_folder(tmp_path / "photos", 4))]) == 0
    model = ["--model", "tf_efficientnet_lite0", "--checkpoint", str(lite0_checkpoint), "--device", "cpu"]
    assert main([*common, "filter", *model]) == 0
    catalog = cat.open_catalog(db)
    with catalog.session() as session:
        shas = list(session.scalars(select(cat.Image.sha256)))
        weights = known_weights_hash(session, "tf_efficientnet_lite0", str(lite0_checkpoint))
    assert FeatureStore(tmp_path, "tf_efficientnet_lite0", weights).has(shas).all()
    forwards = []  # whole-image forwards (the tiles' are dedup's own work: curation/dedup/tiles.py)
    monkeypatch.setattr(inference, "iter_logits", lambda *a, **k: forwards.append(a) or iter(()))
    summary = _dedup(catalog, tmp_path, lite0_checkpoint)
    assert forwards == [] and summary.embedded_now == 0 and summary.images == len(shas) == 4
    assert len(FeatureStore(tmp_path, "tf_efficientnet_lite0", weights, "tiles")) == 4  # one row each


def _embed_then_die_slowly(db: str, data_dir: Path, embedder) -> None:
    """The forked child: ``reference add``'s embedding, two images a committed segment, 0.5 s after
    each (so the parent's kill -9 lands mid-run); never returns into pytest."""
    try:
        import torch

        from curation.dedup import embeddings
        from curation.dedup.ref_embed import embed_reference

        torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork
        embeddings.EMBED_CHUNK = 2
        append = FeatureStore.append
        FeatureStore.append = lambda self, *a: (append(self, *a), time.sleep(0.5))[0]
        embed_reference(cat.open_catalog(db), data_dir, "r", embedder, None)
    finally:
        os._exit(0)


def test_reference_add_embedding_resumes_after_kill_9(catalog_url, tmp_path, lite0_checkpoint):
    """A forked child (torch already imported: no second start-up) embeds two images a segment and is
    killed with SIGKILL after two segments; a new run here computes only the rest."""
    from curation.dedup.embeddings import open_embedder
    from curation.dedup.ref_embed import embed_reference

    refs = tmp_path / "refs"
    refs.mkdir()
    for path in sorted(VAL.glob("*.JPEG"))[:12]:
        (refs / path.name).write_bytes(path.read_bytes())
    db = catalog_url
    catalog = cat.open_catalog(db)
    reference_sets.add_folder(catalog, tmp_path, "r", refs, workers=1)
    embedder = open_embedder(catalog, _spec(lite0_checkpoint), load=True)
    catalog.engine.dispose()  # no connection crosses the fork
    pid = os.fork()
    if pid == 0:
        _embed_then_die_slowly(db, tmp_path, embedder)
    folder = tmp_path / "references" / "r" / "features"
    deadline = time.monotonic() + 120
    while len(list(folder.glob("*/seg-*.keys.npy"))) < 2 and time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            pytest.fail("the embedding child ended before it was killed")
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    assert os.WTERMSIG(os.waitpid(pid, 0)[1]) == signal.SIGKILL
    done = 2 * len(list(folder.glob("*/seg-*.keys.npy")))
    assert 4 <= done < 12
    assert embed_reference(catalog, tmp_path, "r", embedder, None) == (12, 12 - done, 0)  # only the rest
    built = next(folder.glob("*/vectors.npy"))
    vectors = np.load(built)
    assert vectors.shape == (12, 1280) and np.all(np.abs(np.linalg.norm(vectors.astype(np.float32), axis=1) - 1) < 1e-2)
    stamp = built.stat().st_mtime_ns
    assert embed_reference(catalog, tmp_path, "r", embedder, None) == (12, 0, 0)  # a rerun with nothing new
    assert built.stat().st_mtime_ns == stamp  # ... keeps the index it has


def test_feature_store_appends_only_new_keys_and_survives_a_half_written_segment(tmp_path):
    store = FeatureStore(tmp_path, "m", "abc")
    shas = [f"{i:064x}" for i in range(3)]
    assert store.append(shas, np.eye(3, 4, dtype=np.float32)) == 3
    assert store.append(shas[:1] + [f"{9:064x}"], np.ones((2, 4), np.float32)) == 1
    (store.folder / "seg-000003.vec.npy").write_bytes(b"half")  # a writer killed before its keys file
    found, vectors = FeatureStore(tmp_path, "m", "abc").get([shas[1], f"{7:064x}"])
    assert found.tolist() == [True, False] and vectors[0].tolist() == [0, 1, 0, 0]


def test_feature_store_compacts_block_by_block_and_keeps_every_vector(tmp_path, monkeypatch):
    from curation import features

    monkeypatch.setattr(features, "COMPACT_AT", 3)
    monkeypatch.setattr(features, "COMPACT_BLOCK", 2)
    store = FeatureStore(tmp_path, "m", "abc")
    shas = [f"{i:064x}" for i in range(7)]
    for part in (shas[:3], shas[3:5], shas[5:]):
        store.append(part, np.array([[int(s, 16), 1.0] for s in part], np.float32))
    assert len(list(store.folder.glob("seg-*.keys.npy"))) == 1 and not list(store.folder.glob("*.tmp"))
    found, vectors = FeatureStore(tmp_path, "m", "abc").get(shas[::-1])
    assert found.all() and vectors[:, 0].tolist() == list(range(6, -1, -1))


def _rows(catalog: cat.Catalog) -> dict[str, list[tuple]]:
    """Links, statuses and possible copies, without ids and timestamps."""
    tables = {
        "links": (cat.DuplicateLink, ("sha256", "other", "reference", "hash_kind", "distance", "score")),
        "statuses": (cat.DedupStatus, ("sha256", "status", "cluster_id", "label_conflict", "reason")),
        "possible": (cat.PossibleCopy, ("sha256", "other", "reference", "kind", "score")),
    }
    with catalog.session() as session:
        return {
            name: sorted(tuple(getattr(row, c) for c in columns) for row in session.scalars(select(model)))
            for name, (model, columns) in tables.items()
        }


def test_bad_input_gets_one_line_each_and_the_run_goes_on(tmp_path, shared, lite0_checkpoint, capsys, monkeypatch):
    """`curation dedup` in this process (no second torch start-up), five steps, each one line:
    a reference set added without embeddings (embedded now) beside one imported without images (its
    hashes alone); other weights than the stored features' (computed anew, the old ones kept, the same
    links); a reference photo that no longer decodes for ORB, first for a new copy, then in a run that
    checks every image again (its proved links stand); the weights gone (exit 1, nothing decided).
    Exit 0 but for the last, and nothing lost."""
    import shutil

    import torch

    from curation.cli import main

    for key in [k for k in os.environ if k.startswith("CURATION_")]:
        monkeypatch.delenv(key)
    _, shared_refs, edits = shared
    refs, data, db = tmp_path / "refs", tmp_path / "data", f"sqlite:///{tmp_path / 'c.sqlite'}"
    shutil.copytree(shared_refs, refs)
    catalog = cat.open_catalog(db)
    reference_sets.add_folder(catalog, data, "val8", refs, workers=1)  # hashed, not embedded
    reference_sets.export_file(catalog, data, "val8", tmp_path / "val8.npz")
    reference_sets.import_file(catalog, data, "bare", tmp_path / "val8.npz")  # hashes only, no images here
    with catalog.session() as session:
        copies = [add_image(session, data, data_bytes) for data_bytes in edits.values()]
    state = torch.load(lite0_checkpoint, map_location="cpu")
    state["classifier.bias"] = state["classifier.bias"] + 1.0  # other weights, the same pre-logit features
    torch.save(state, tmp_path / "other.pth")

    def dedup(checkpoint: Path, leaked: int) -> list[str]:
        config = tmp_path / "curation.toml"
        config.write_text(f'[dedup]\nmodel = "tf_efficientnet_lite0"\ncheckpoint = "{checkpoint}"\ntop_k = 4\n')
        args = ["--config", str(config), "--db", db, "--data-dir", str(data)]
        assert main([*args, "dedup", "--against", "val8", "--against", "bare"]) == 0
        out, err = capsys.readouterr()
        assert f"{leaked} leaked (against val8, bare)" in out, out + err
        lines = [line for line in err.splitlines() if line.startswith("dedup:")]
        bare = f"dedup: reference set 'bare' has no embeddings of tf_efficientnet_lite0@{label(checkpoint)} and no "
        assert [line for line in lines if "'bare'" in line] == [
            f"{bare}images here (imported): checked by its hashes alone"
        ]
        return [line for line in lines if "'bare'" not in line]

    def label(checkpoint: Path) -> str:
        from curation.filter.weights import known_weights_hash

        with catalog.session() as session:
            return known_weights_hash(session, "tf_efficientnet_lite0", str(checkpoint)) or "?"

    assert dedup(lite0_checkpoint, 3) == [
        f"dedup: reference set 'val8' has no embeddings, not of tf_efficientnet_lite0@{label(lite0_checkpoint)}: "
        "embedding it now"
    ]
    first = _rows(catalog)
    assert {kind for _, _, ref, kind, *_ in first["links"] if ref == "val8"} == {"embed+orb"}
    lines = dedup(tmp_path / "other.pth", 3)
    old, new = (f"tf_efficientnet_lite0@{label(path)}" for path in (lite0_checkpoint, tmp_path / "other.pth"))
    assert old != new and lines == [
        f"dedup: reference set 'val8' has embeddings of {old} (8), not of {new}: embedding it now",
        f"dedup: stored features are of {old}, not the requested {new}: computing 3 embeddings (the stored ones stay)",
    ]
    assert _rows(catalog) == first  # the same links, statuses and possible copies under the new weights
    assert FeatureStore(data, "tf_efficientnet_lite0", label(lite0_checkpoint)).has(copies).all()  # kept
    # A reference photo damaged after it was embedded; a new copy of it is proposed it (and the crawl's).
    (refs / REFERENCE[3].name).write_bytes(REFERENCE[3].read_bytes()[:500])
    img = Image.open(REFERENCE[3]).convert("RGB").resize((454, 454), Image.BICUBIC)
    with catalog.session() as session:
        late = add_image(session, data, jpeg(img.crop((0, 60, 400, 454))))
    (line,) = dedup(tmp_path / "other.pth", 4)  # the new copy joins the leaked cluster by its crawl proofs
    assert line.startswith(f"dedup: 1 proposal(s) not verified: {REFERENCE[3].name} of reference set 'val8' did ")
    assert "did not decode for ORB (OSError: " in line and line.endswith("left for review as possible copies")
    rows = _rows(catalog)
    assert set(first["links"]) < set(rows["links"])  # every proved link kept
    assert (late, REFERENCE[3].name, "val8", "embed+orb:no-decode", 0.0) in rows["possible"]
    # Back to the first weights: a new rule, so every image is checked again, the damaged photo's proved
    # links included. They stand (one line); nothing is un-leaked.
    embedded, line = dedup(lite0_checkpoint, 4)
    assert embedded == f"dedup: reference set 'val8' has embeddings of {new} (8), not of {old}: embedding it now"
    assert line.startswith("dedup: 4 proposal(s) not verified: ") and line.endswith(
        "; 3 kept their stored proved links"
    )
    again = _rows(catalog)
    assert again["statuses"] == rows["statuses"]  # (a crawl link's proof may be a better one now)
    assert [link for link in again["links"] if link[2]] == [link for link in rows["links"] if link[2]]
    assert not [row for row in again["possible"] if row[1] == REFERENCE[3].name and row[0] != late]
    # Its weights gone, the embedding matcher cannot run: re-clustering by the hashes alone would drop
    # every link it proved, so the run stops with one line and decides nothing (exit 1, a config error).
    config = tmp_path / "curation.toml"
    config.write_text(f'[dedup]\nmodel = "tf_efficientnet_lite0"\ncheckpoint = "{tmp_path / "gone.pth"}"\n')
    assert main(["--config", str(config), "--db", db, "--data-dir", str(data), "dedup", "--against", "val8"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("curation: error: the stored clusters hold links the embedding matcher")
    assert len(err.splitlines()) == 1 and f"checkpoint not found: {tmp_path / 'gone.pth'}" in err
    assert _rows(catalog) == again
