"""The embedding matcher on a real 2-node Ray cluster on loopback with a PostgreSQL catalog (issue 25):
`curation dedup --engine ray` embeds (the reference set, the crawl, its tiles) in the cluster's scoring
actors and verifies every proposal in the cluster's tasks, and writes exactly the links (kind, score),
leak flags and possible copies of the local run on the same images: the crop / pad / screenshot
copies of test_dedup_embedding's reference photo and its refused pair of distinct monarchs. The test
re-runs itself inside a loopback-only network namespace (conftest, tests/ray_harness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation import catalog as cat
from curation import reference_sets
from tests.test_dedup import add_image, jpeg
from tests.test_dedup_embedding import MONARCHS, REFERENCE, VAL, _edits

pytestmark = pytest.mark.ray

# A jellyfish on black, low in texture (notes/semantic_dedup.md): its 12 %-a-side crop keeps 27 inliers,
# below the proof (40) and in the review band: a possible copy on both engines.
JELLYFISH = VAL / "ILSVRC2012_val_00035728.JPEG"

TABLES = {
    "links": "SELECT sha256, other, reference, hash_kind, distance, round(CAST(score AS numeric), 4) "
    "FROM duplicate_links",
    "statuses": "SELECT sha256, status, cluster_id, label_conflict, reason FROM dedup_status",
    "possible": "SELECT sha256, other, reference, kind, round(CAST(score AS numeric), 4), "
    "round(CAST(cosine AS numeric), 3) FROM possible_copies",
}


def _catalog(url: str, data_dir: Path, refs: Path, copies: list[bytes]) -> tuple[list[str], list[str]]:
    """The copies, the monarchs and the jellyfish pair as crawled images, and ``refs`` as reference set
    val8 (hashed here; the dedup run embeds it, saying so in one line). Returns the copies' and the
    monarchs' sha256s."""
    from curation.engine.local import LocalExecutor

    catalog = cat.open_catalog(url)
    threads = LocalExecutor(threads=True)  # no fork of this process, which holds the cluster's gRPC threads
    reference_sets.add_folder(catalog, data_dir, "val8", refs, workers=1, executor=threads)
    with catalog.session() as session:
        shas = [add_image(session, data_dir, data) for data in copies]
        monarchs = [add_image(session, data_dir, (VAL / name).read_bytes()) for name in MONARCHS]
        add_image(session, data_dir, JELLYFISH.read_bytes())
        add_image(session, data_dir, jpeg(_edits(JELLYFISH)["crop"]))
    catalog.engine.dispose()
    return shas, monarchs


def _tables(url: str) -> dict[str, list[tuple]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as con:
            return {name: sorted(tuple(row) for row in con.execute(text(sql))) for name, sql in TABLES.items()}
    finally:
        engine.dispose()


@pytest.mark.ray(timeout=300)
def test_dedup_embedding_on_ray_writes_the_local_links_and_verifies_on_the_cluster(
    ray_cluster, ray_postgres, tmp_path: Path, run_cli, lite0_checkpoint
) -> None:
    from curation.dedup.hash_pages import HASH_CHUNK
    from tests.pg_server import PG_TEMPLATE

    refs = tmp_path / "refs"
    refs.mkdir()
    for path in REFERENCE:
        (refs / path.name).write_bytes(path.read_bytes())
    copies = [jpeg(img) for img in _edits(REFERENCE[3]).values()]
    env = {"CURATION_DEDUP_MODEL": "tf_efficientnet_lite0", "CURATION_DEDUP_CHECKPOINT": str(lite0_checkpoint)}
    env["CURATION_DEDUP_TOP_K"] = "4"  # few images: 4 proposals suffice (as test_dedup_embedding)
    engines = {"local": (), "ray": ("--engine", "ray", "--ray-address", ray_cluster.address)}
    runs, tables = {}, {}
    for name, engine in engines.items():
        url, data_dir = ray_postgres.create_database(PG_TEMPLATE), tmp_path / name
        shas, monarchs = _catalog(url, data_dir, refs, copies)
        cli = ("--db", url, "--data-dir", str(data_dir), *engine, "dedup", "--against", "val8", "--workers", "2")
        runs[name] = run_cli(*cli, "--matchers", "hash,embedding", env=env, timeout=200)
        assert runs[name].returncode == 0, runs[name].stderr
        tables[name] = _tables(url)
    assert ray_cluster.drivers_seen() == 1  # the Ray run did run on the cluster
    assert runs["ray"].stdout == runs["local"].stdout
    assert "3 leaked (against val8)" in runs["local"].stdout and "matchers: hash + embedding" in runs["local"].stdout
    local = tables["local"]
    leaks = [link for link in local["links"] if link[2] == "val8"]
    assert sorted(link[0] for link in leaks) == sorted(shas)
    assert all(link[1] == REFERENCE[3].name and link[3] == "embed+orb" and link[5] >= 40 for link in leaks)
    assert {status for sha, status, *_ in local["statuses"] if sha in shas} == {cat.LEAKED}
    assert [row[1:3] for row in local["statuses"] if row[0] in monarchs] == [(cat.REPRESENTATIVE, None)] * 2
    assert not [link for link in local["links"] if {link[0], link[1]} & set(monarchs)]  # refused, never joined
    assert [row[3] for row in local["possible"]] == ["embed+orb:band"]  # the jellyfish pair
    assert tables["ray"] == local
    # The cluster embedded (scoring actors: the set, the crawl, its tiles) and verified: every task that
    # is not a pipeline's decode (each feeds one actor call) nor a hashing batch is a verification batch.
    tasks = ray_cluster.tasks_seen()
    scored = sum(t["name"] == "_TaskActor.run" for t in tasks)
    batches = [t for t in tasks if t["name"] == "_run_batch"]
    verified = len(batches) - scored - -(-(len(copies) + 4) // HASH_CHUNK)
    assert scored >= 3 and verified >= 2, (scored, len(batches))  # the crawl's and the set's proposals
    assert {t["node"] for t in batches} <= {node.node_id for node in ray_cluster.nodes}
