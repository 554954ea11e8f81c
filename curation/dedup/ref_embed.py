"""Embedding reference sets (resumably, O(new) forwards), opening their index, and carrying both
through ``reference export`` / ``import``."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.dedup.embeddings import Embedder, ensure_features
from curation.dedup.ref_index import ReferenceIndex, build, embed_dir, is_current, key_ids, reference_store

if TYPE_CHECKING:
    from curation.catalog import Catalog
    from curation.engine import Executor


EMBED_SUFFIX = ".embed"  # an export's embeddings: a folder beside the .npz hash file


def image_base(root: str) -> Path:
    """The folder a set's keys are relative to: its folder, or a list file's folder."""
    path = Path(root)
    return path.parent if path.is_file() else path


def embed_reference(
    catalog: Catalog, data_dir: Path, name: str, embedder: Embedder, executor: Executor | None
) -> tuple[int, int, int]:
    """Embed every item of reference set ``name`` not embedded yet with ``embedder`` (one committed
    segment per chunk: a killed run keeps what it wrote), then build its index and record it on the
    set. Returns (items, embedded now, unreadable). A set without images on disk (imported) is skipped."""
    from curation import reference_sets
    from curation.catalog import ReferenceSet

    hashes = reference_sets.load(catalog, data_dir, name)
    with catalog.session() as session:
        root = session.get(ReferenceSet, name).root
    if root is None:
        return len(hashes), 0, 0
    base = image_base(root)
    ids = key_ids(hashes.keys)
    items = [(key_id, str(base / key.decode())) for key_id, key in zip(ids, hashes.keys.tolist(), strict=True)]
    store = reference_store(data_dir, name, embedder.spec.model, embedder.weights_hash)
    store, computed, failed = ensure_features(
        catalog, data_dir, embedder, items, executor, store=store, desc=f"embedding {name}"
    )
    folder = embed_dir(data_dir, name, embedder.spec.model, embedder.weights_hash)  # the hash may be known now
    store = reference_store(data_dir, name, embedder.spec.model, embedder.weights_hash)
    embedded = int(store.has(ids).sum())
    if computed or not is_current(folder, hashes.keys, embedded):
        embedded = build(folder, hashes.keys, store)
    _record(catalog, name, embedder.label, embedded)
    return len(hashes), computed, len(failed)


def _record(catalog: Catalog, name: str, label: str | None, count: int) -> None:
    """Record the set's embeddings, keeping its ``updated_at`` (the column's onupdate would bump it):
    that dates its hashes, which the set's check signature stands for
    (:func:`curation.dedup.references.reference_signatures`), and a dedup run that embeds a set checks
    every image against it already (the model is in the run's rule)."""
    from sqlalchemy import update

    from curation.catalog import ReferenceSet

    keep = {"updated_at": ReferenceSet.updated_at}
    with catalog.session() as session:
        where = ReferenceSet.name == name
        session.execute(update(ReferenceSet).where(where).values(embed_model=label, embed_count=count, **keep))


def open_index(
    catalog: Catalog, data_dir: Path, name: str, hashes: Any, embedder: Embedder, executor: Executor | None
) -> ReferenceIndex | None:
    """The index of set ``name`` for ``embedder``. A set without it says so in one line and is embedded
    now (from its folder), or, imported without embeddings, is checked by its hashes alone (None)."""
    from curation.catalog import ReferenceSet

    with catalog.session() as session:
        row = session.get(ReferenceSet, name)
        label, root, count = row.embed_model, row.root, row.embed_count
    folder = embed_dir(data_dir, name, embedder.spec.model, embedder.weights_hash)
    index = ReferenceIndex.open(folder) if label == embedder.label else None
    if index is not None and len(index.vectors) == len(hashes):
        index.keys, index.base = hashes.keys, image_base(root) if root else None
        return index if root else _without_images(name, index)
    if root is None:
        print(f"dedup: reference set {name!r} has no embeddings of {embedder.label} and no images here "
              "(imported): checked by its hashes alone", file=sys.stderr)  # fmt: skip
        return None
    have = f"embeddings of {label} ({count})" if label else "no embeddings"
    print(f"dedup: reference set {name!r} has {have}, not of {embedder.label}: embedding it now", file=sys.stderr)
    embed_reference(catalog, data_dir, name, embedder, executor)
    return open_index(catalog, data_dir, name, hashes, embedder, executor)


def _without_images(name: str, index: ReferenceIndex) -> None:
    """An imported set's index proposes, but nothing here can verify a proposal: hashes alone."""
    print(f"dedup: reference set {name!r} was imported with embeddings but without its images: "
          "proposals cannot be verified here, checked by its hashes alone", file=sys.stderr)  # fmt: skip
    return None


def export_embeddings(catalog: Catalog, data_dir: Path, name: str, target: Path) -> str | None:
    """Copy set ``name``'s embeddings and index beside the exported hash file ``target``; returns the
    model label carried, or None (a set without embeddings)."""
    from curation.catalog import ReferenceSet

    with catalog.session() as session:
        label = session.get(ReferenceSet, name).embed_model
    if not label:
        return None
    model, _, weights = label.rpartition("@")
    source = embed_dir(data_dir, name, model, weights)
    out = Path(str(target) + EMBED_SUFFIX) / source.name
    if out.parent.exists():
        shutil.rmtree(out.parent)
    shutil.copytree(source, out)
    return label


def import_embeddings(catalog: Catalog, data_dir: Path, name: str, source: Path, items: int) -> str | None:
    """Take the embeddings exported beside the hash file ``source`` into set ``name``; returns the
    model label, or None when there are none (or they do not cover the set)."""
    import json

    folder = Path(str(source) + EMBED_SUFFIX)
    for meta in sorted(folder.glob("*/meta.json")):
        info = json.loads(meta.read_text())
        index_info = meta.parent / "index.json"
        if not index_info.exists() or json.loads(index_info.read_text()).get("items") != items:
            continue
        target = embed_dir(data_dir, name, info["model"], info["weights_hash"])
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(meta.parent, target)
        label = f"{info['model']}@{info['weights_hash']}"
        _record(catalog, name, label, json.loads(index_info.read_text())["embedded"])
        return label
    return None
