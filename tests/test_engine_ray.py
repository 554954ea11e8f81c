"""The engine on a real 2-node Ray cluster on loopback (one node with a fake GPU): the same catalog
as the local engine. Each test re-runs itself inside a loopback-only network namespace."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SAMPLES, VAL

from curation.engine import EngineOptions
from curation.errors import CurationError
from tests.engine_tasks import BrokenSetupTask, GpuTask, ModelTask, PrepareTask, UnloadableModelTask, WhereTask

pytestmark = pytest.mark.ray


def ray_executor(cluster):
    from curation.engine.ray_executor import RayExecutor

    return RayExecutor.connect(EngineOptions(kind="ray", address=cluster.address))


@pytest.mark.ray(timeout=300)
def test_map_uses_both_nodes_sets_up_once_per_worker_and_places_gpu_tasks(ray_cluster) -> None:
    import ray

    with ray_executor(ray_cluster) as executor:
        records = list(executor.map(WhereTask(), list(range(120)), batch_size=4, workers=1))
        assert sorted(n for n, *_ in records) == list(range(120))
        assert len({node for _, node, _, _ in records}) == 2
        assert {setups for *_, setups in records} == {1}
        gpu_node = next(n["NodeID"] for n in ray.nodes() if n["Resources"].get("GPU"))
        placed = list(executor.map(GpuTask(), list(range(6)), batch_size=2, workers=1))
        assert {node for _, node, _ in placed} == {gpu_node} and all(ids == [0] for *_, ids in placed)


@pytest.mark.ray(timeout=300)
def test_keyed_pool_keeps_each_key_on_one_actor_across_calls_and_spreads_actors(ray_cluster) -> None:
    with ray_executor(ray_cluster) as executor:
        with executor.keyed(WhereTask(), workers=8) as pool:
            assert pool.shards == 4  # one actor per cluster CPU
            first = list(pool.map([(k, i) for k in "abcdefgh" for i in range(5)], key=lambda x: x[0], batch_size=4))
            second = list(pool.map([(k, 9) for k in "hgfedcba"], key=lambda x: x[0], batch_size=4))
        owner = {item[0]: pid for item, _, pid, _ in first}
        assert len(first) == 40 and all(owner[item[0]] == pid for item, _, pid, _ in first + second)
        assert len(set(owner.values())) == 4 and len({node for _, node, _, _ in first}) == 2
        assert {setups for *_, setups in first + second} == {1}
        with pytest.raises(CurationError, match="^a Ray worker could not start: .*no such mount"):
            with executor.keyed(BrokenSetupTask(), workers=2) as pool:
                list(pool.map([1, 2, 3], key=str, batch_size=2))


@pytest.mark.ray(timeout=300)
def test_pipeline_prepares_in_cpu_tasks_scores_in_a_gpu_actor_that_survives_its_death_then_cpu_actors(
    ray_cluster, tmp_path: Path
) -> None:
    import ray

    marker = tmp_path / "died"
    with ray_executor(ray_cluster) as executor:
        nodes = {n["NodeID"] for n in ray.nodes()}
        gpu_node = next(n["NodeID"] for n in ray.nodes() if n["Resources"].get("GPU"))
        records = list(
            executor.pipeline(PrepareTask(), ModelTask(str(marker), die_on=13), range(60), batch_size=4, workers=1)
        )
        assert sorted(n for n, *_ in records) == list(range(60))  # every item once, the dead call's too
        assert {node for _, node, *_ in records} == nodes  # prepared on both nodes
        assert {(node, tuple(gpus)) for *_, node, gpus, _, _ in records} == {(gpu_node, ("0",))}
        scored_by = {pid for *_, pid in records} - {int(marker.read_text())}  # the actor died on item 13
        assert len(scored_by) == 1  # and its restart scored the rest (calls may run out of order)
        assert {setups for *_, setups, _ in records} == {1}
        ray_cluster.cluster.remove_node(ray_cluster.nodes[1])  # the GPU node leaves: CPU actors
        records = list(executor.pipeline(PrepareTask(), ModelTask(), range(20), batch_size=4, workers=1))
        head = ray_cluster.nodes[0].node_id
        assert sorted(n for n, *_ in records) == list(range(20))
        assert {(node, tuple(gpus)) for *_, node, gpus, _, _ in records} == {(head, ())}
        with pytest.raises(CurationError, match=r"^a Ray worker failed: ValueError: no weights here$"):
            list(executor.pipeline(PrepareTask(), UnloadableModelTask(), range(8), batch_size=4, workers=1))
    actors = [t for t in ray_cluster.tasks_seen() if t["name"] == "_TaskActor.__init__"]
    assert sorted(t["resources"].get("GPU", 0) for t in actors) == [0, 0, 1]  # one GPU actor (restarted), CPU ones


def _photo_catalog(root: Path, url: str | None = None) -> tuple[str, Path]:
    """A catalog (at ``url``, default a SQLite file in ``root``) of 30 shared photos, 3 re-encoded and
    1 mirrored copies, and 1 unreadable file."""
    import hashlib
    import io

    from PIL import Image, ImageOps
    from test_dedup import add_image

    from curation import catalog as cat

    url, data_dir = url or f"sqlite:///{root / 'c.sqlite'}", root / "data"
    photos = sorted(SAMPLES.glob("*.JPEG"))[:30]
    catalog = cat.open_catalog(url)
    with catalog.session() as session:
        for path in photos:
            add_image(session, data_dir, path.read_bytes(), wnid=path.stem)
        for k, path in enumerate(photos[:4]):
            with Image.open(path) as img:
                copy = ImageOps.mirror(img) if k == 3 else img.copy()
                out = io.BytesIO()
                copy.convert("RGB").save(out, "JPEG", quality=60)
            add_image(session, data_dir, out.getvalue(), wnid=photos[-1 - k].stem)  # label conflicts too
        junk = b"not an image"
        sha = hashlib.sha256(junk).hexdigest()
        (data_dir / f"{sha}.jpg").write_bytes(junk)
        session.add(cat.Image(sha256=sha, path=f"{sha}.jpg", width=9, height=9, format="JPEG", bytes=12, mode="RGB"))
    catalog.engine.dispose()
    return url, data_dir


DEDUP_TABLES = {
    "hashes": "SELECT sha256, phash, dhash, phash_mirror, dhash_mirror, orientation_hashes FROM perceptual_hashes "
    "ORDER BY sha256",
    "statuses": "SELECT sha256, status, cluster_id, label_conflict, reason FROM dedup_status ORDER BY sha256",
    "links": "SELECT sha256, other, reference, hash_kind, distance FROM duplicate_links ORDER BY sha256, other",
}


def _dedup_tables(root: Path, url: str | None = None) -> dict[str, list[tuple]]:
    """The dedup tables (of the catalog at ``url``, default the SQLite file in ``root``) without
    timestamps; paths in failure reasons relative to ``root``."""
    from sqlalchemy import create_engine, text

    def unroot(value: object) -> object:
        return value.replace(str(root), "ROOT") if isinstance(value, str) else value

    engine = create_engine(url or f"sqlite:///{root / 'c.sqlite'}")
    try:
        with engine.connect() as con:
            return {
                name: [tuple(map(unroot, row)) for row in con.execute(text(query))]
                for name, query in DEDUP_TABLES.items()
            }
    finally:
        engine.dispose()


@pytest.mark.ray(timeout=400)
def test_dedup_on_ray_writes_the_same_catalog_as_local(ray_cluster, tmp_path: Path, run_cli) -> None:
    _photo_catalog(tmp_path / "local")
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    config = tmp_path / "ray.toml"  # the engine chosen in the config file this time
    config.write_text(f'[engine]\nkind = "ray"\naddress = "{ray_cluster.address}"\n')
    runs = {}
    for name, engine in (("local", ()), ("ray", ("--config", str(config)))):
        root = tmp_path / name
        cli = ("--db", str(root / "c.sqlite"), "--data-dir", str(root / "data"), *engine)
        runs[name] = run_cli(*cli, "dedup", "--orientations", "8", timeout=300)
        assert runs[name].returncode == 0, runs[name].stderr
    assert ray_cluster.drivers_seen() == 1  # the Ray run did run on the cluster
    assert runs["ray"].stdout == runs["local"].stdout
    assert (
        "35 images, 34 hashed now, 1 unreadable" in runs["ray"].stdout
        and "4 near-duplicate clusters" in runs["ray"].stdout
    )
    local, ray = _dedup_tables(tmp_path / "local"), _dedup_tables(tmp_path / "ray")
    assert len(local["hashes"]) == 34 and len(local["links"]) == 4
    assert sum(status == "failed" for _, status, *_ in local["statuses"]) == 1
    assert ray == local


@pytest.mark.ray(timeout=400)
def test_reference_hashing_and_dedup_on_ray_with_a_postgresql_catalog_equal_local(
    ray_cluster, ray_postgres, tmp_path: Path, run_cli
) -> None:
    import numpy as np
    from test_dedup import _reference_folder

    from tests.pg_server import PG_TEMPLATE

    references = tmp_path / "imagenet_like"  # 30 val photos, a catalog photo and an unreadable file
    _reference_folder(references, sorted(VAL.glob("*.JPEG"))[:30])
    shutil.copy(sorted(SAMPLES.glob("*.JPEG"))[7], references / "n01498041" / "leaked.JPEG")
    (references / "n01498041" / "broken.jpg").write_bytes(b"not an image")
    engines = {"local": (), "ray": ("--engine", "ray", "--ray-address", ray_cluster.address)}
    runs, urls = {}, {}
    for name, engine in engines.items():
        urls[name], data_dir = _photo_catalog(tmp_path / name, ray_postgres.create_database(PG_TEMPLATE))
        cli = ("--db", urls[name], "--data-dir", str(data_dir), *engine)
        added = run_cli(*cli, "dedup", "reference", "add", "val", str(references), timeout=300)
        assert added.returncode == 0, added.stderr
        runs[name] = run_cli(*cli, "dedup", "--against", "val", timeout=300)
        assert runs[name].returncode == 0, runs[name].stderr
        runs[name].stdout = added.stdout.replace(str(tmp_path / name), "ROOT") + runs[name].stdout
    assert ray_cluster.drivers_seen() == 2  # reference add and dedup ran on the cluster
    assert runs["ray"].stdout == runs["local"].stdout
    assert "val: 31 hashes (31 hashed now, 0 already done, 1 unreadable" in runs["ray"].stdout
    assert "1 leaked (against val)" in runs["ray"].stdout
    local, ray = (_dedup_tables(tmp_path / name, urls[name]) for name in engines)
    assert len(local["hashes"]) == 34 and sum(link[2] == "val" for link in local["links"]) == 1
    assert ray == local
    files = [tmp_path / name / "data" / "references" / "val" for name in engines]
    with np.load(files[0] / "hashes.npz") as here, np.load(files[1] / "hashes.npz") as there:
        assert all(np.array_equal(here[k], there[k]) for k in ("keys", "phash", "dhash")) and len(here["keys"]) == 31
    assert (files[0] / "failed.tsv").read_text() == (files[1] / "failed.tsv").read_text() != ""


@pytest.mark.ray(timeout=300)
def test_a_node_that_cannot_see_the_data_directory_stops_the_run_before_anything_is_written(
    ray_cluster, tmp_path: Path, run_cli
) -> None:
    import time

    import ray

    (tmp_path / "data").mkdir()
    ray_cluster.add_node_blind_to(tmp_path / "data")
    ray.init(address=ray_cluster.address)
    deadline = time.monotonic() + 60
    while sum(node["Alive"] for node in ray.nodes()) < 3:
        assert time.monotonic() < deadline, "the third node did not join"
        time.sleep(0.5)
    ray.shutdown()
    db = tmp_path / "c.sqlite"
    cli = ("--db", str(db), "--data-dir", str(tmp_path / "data"), "--engine", "ray")
    result = run_cli(*cli, "--ray-address", ray_cluster.address, "dedup", timeout=200)
    assert result.returncode == 1 and result.stdout == "", result.stderr
    line = result.stderr.strip()
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert line.startswith("curation: error: Ray node 127.0.0.1 (") and "cannot see the data directory" in line
    assert f"{tmp_path / 'data'}: every node needs it at the same path (a shared mount)" in line
    assert not db.exists() and list((tmp_path / "data").iterdir()) == []


# --------------------------------------------------------------------------- filter


def _filter_tables(root: Path, db: str = "catalog.sqlite") -> dict[str, list[tuple]]:
    con = sqlite3.connect(root / db)
    con.create_function("unroot", 1, lambda text: text and text.replace(str(root), "ROOT"))
    try:
        return {
            "predictions": con.execute(
                "SELECT sha256, wnid, model, weights_hash, rule, status, pred_index, pred_wnid, correct, "
                "round(confidence, 4), unroot(error) FROM predictions ORDER BY sha256, wnid"
            ).fetchall(),
            "verdicts": con.execute(
                "SELECT sha256, wnid, kept, models, keep_rule FROM filter_verdicts ORDER BY sha256, wnid"
            ).fetchall(),
        }
    finally:
        con.close()


@pytest.mark.ray(timeout=600)
def test_filter_on_ray_keeps_what_local_keeps(ray_cluster, tmp_path: Path, run_cli, lite0_checkpoint) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted(SAMPLES.glob("*.JPEG")):
        shutil.copy(path, folder / path.name)
    local = tmp_path / "local"
    db = ("--db", str(local / "catalog.sqlite"), "--data-dir", str(local / "data"))
    assert run_cli(*db, "crawl", "--folder", str(folder), timeout=300).returncode == 0
    stored = sorted(p for p in (local / "data" / "images").rglob("*") if p.is_file() and not p.name.startswith("."))
    stored[0].chmod(0o644)
    stored[0].write_bytes(stored[0].read_bytes()[:600])  # truncated on disk after the download
    shutil.copytree(local, tmp_path / "ray")
    shutil.copytree(local, tmp_path / "no-gpu")
    args = ("filter", "--model", "tf_efficientnet_lite0", "--checkpoint", str(lite0_checkpoint), "--commit-every", "50")
    runs = {}
    for name, engine in (("local", ()), ("ray", ("--engine", "ray", "--ray-address", ray_cluster.address))):
        root = tmp_path / name
        db = ("--db", str(root / "catalog.sqlite"), "--data-dir", str(root / "data"))
        runs[name] = run_cli(*db, *engine, *args, timeout=500)
        assert runs[name].returncode == 0, runs[name].stderr
    assert "scored 200 image(s)" in runs["local"].stdout and "1 image(s) failed" in runs["local"].stdout
    assert ray_cluster.drivers_seen() == 1  # the Ray run did run on the cluster
    # Decoding in CPU tasks spread over both nodes (4 chunks of 50 images), the model in one actor
    # holding the GPU, on the GPU node.
    gpu_node = ray_cluster.nodes[1].node_id
    tasks = ray_cluster.tasks_seen()
    decoded = [t for t in tasks if t["name"] == "_run_batch"]
    assert len(decoded) == 4 and {t["node"] for t in decoded} == {n.node_id for n in ray_cluster.nodes}
    assert all(t["resources"] == {"CPU": 1.0} for t in decoded)
    assert [t["resources"] for t in tasks if t["name"] == "_TaskActor.__init__"] == [{"GPU": 1.0}]
    scored = [t for t in tasks if t["name"] == "_TaskActor.run"]
    assert len(scored) == 4 and {t["node"] for t in scored} == {gpu_node}
    local_tables, ray_tables = _filter_tables(tmp_path / "local"), _filter_tables(tmp_path / "ray")
    assert len(local_tables["predictions"]) == 200 and len(local_tables["verdicts"]) == 199
    assert ray_tables == local_tables
    # The summary lines agree but for how many images were re-checked (chunks differ, decisions do not).
    same = [re.sub(r"\d+ re-checked", "N re-checked", runs[name].stdout) for name in ("local", "ray")]
    assert same[0] == same[1]
    # Once the GPU node has left, CPU actors score: the same decisions (on 60 pairs, to stay short).
    ray_cluster.cluster.remove_node(ray_cluster.nodes[1])
    root = tmp_path / "no-gpu"
    db = ("--db", str(root / "catalog.sqlite"), "--data-dir", str(root / "data"))
    result = run_cli(*db, "--engine", "ray", "--ray-address", ray_cluster.address, *args, "--limit", "60", timeout=300)
    assert result.returncode == 0 and "scored 60 image(s)" in result.stdout, result.stderr
    actors = [t["resources"] for t in ray_cluster.tasks_seen() if t["name"] == "_TaskActor.__init__"]
    assert sorted(actors, key=str) == [{"CPU": 1.0}, {"GPU": 1.0}]  # 2 CPUs left: one scores, one decodes
    cpu_tables = _filter_tables(root)
    assert len(cpu_tables["predictions"]) == 60 and len(cpu_tables["verdicts"]) >= 59
    assert all(set(cpu_tables[table]) <= set(local_tables[table]) for table in cpu_tables)


@pytest.mark.ray(timeout=600)
def test_filter_follow_on_ray_scores_what_a_crawl_adds_each_once(
    ray_cluster, tmp_path: Path, run_cli, lite0_checkpoint
) -> None:
    """`filter --follow --engine ray`: the cluster's actors score the 6 pairs stored before it started
    and the 6 a later crawl adds, each once; Ctrl-C ends it with its summary."""
    photos = sorted(SAMPLES.glob("*.JPEG"))
    first, later = tmp_path / "first", tmp_path / "later"
    for folder, part in ((first, photos[:6]), (later, photos[6:12])):
        folder.mkdir()
        for path in part:
            shutil.copy(path, folder / path.name)
    db = ("--db", str(tmp_path / "catalog.sqlite"), "--data-dir", str(tmp_path / "data"))
    assert run_cli(*db, "crawl", "--folder", str(first), timeout=300).returncode == 0
    follow = [sys.executable, "-m", "curation", *db, "--engine", "ray", "--ray-address", ray_cluster.address,
              "filter", "--model", "tf_efficientnet_lite0", "--checkpoint", str(lite0_checkpoint),
              "--follow"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATION_")}
    follower = subprocess.Popen(
        follow, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ready = next((line for line in follower.stderr if "following the catalog" in line), None)
    assert ready is not None, follower.communicate(timeout=60)
    assert run_cli(*db, "crawl", "--folder", str(later), timeout=300).returncode == 0
    deadline = time.monotonic() + 240  # a crawl this short ends before the follower sees it: stop it by Ctrl-C
    while len(_filter_tables(tmp_path)["predictions"]) < 12 and time.monotonic() < deadline:
        time.sleep(0.2)
    follower.send_signal(signal.SIGINT)
    out, err = follower.communicate(timeout=300)
    assert follower.returncode == 0 and "scored 12 image(s)" in out and "until Ctrl-C" in out, err
    assert ray_cluster.drivers_seen() == 1
    assert any(t["name"] == "_TaskActor.run" for t in ray_cluster.tasks_seen())
    predicted = _filter_tables(tmp_path)["predictions"]
    assert len(predicted) == 12 and len({(row[0], row[1]) for row in predicted}) == 12


# --------------------------------------------------------------------------- crawl

CRAWL_WNIDS = ("n01498041", "n01531178", "n01534433")
PER_HOST = 2


def _crawl_setup(root: Path, servers: list, per_host_urls: int) -> tuple[Path, Path]:
    """A URL list over several hosts (one replay server each): real JPEGs, every tenth a 404, one
    URL per host found for a second class; a config with ``per_host`` = 2 and 8 connections in all."""
    import csv

    from replay_server import JPEG, Reply, photo_for

    rows = []
    for h, server in enumerate(servers):
        server.prefix("/img/", lambda path, _q: Reply(body=photo_for(path), headers=JPEG))
        for i in range(per_host_urls):
            path = f"/img/{h}-{i}.jpg" if i % 10 != 9 else f"/missing/{h}-{i}.jpg"
            rows.append((f"{server.base}{path}", CRAWL_WNIDS[i % 3]))
        rows.append((f"{server.base}/img/{h}-0.jpg", CRAWL_WNIDS[1]))  # a second class for one URL
    root.mkdir(parents=True, exist_ok=True)
    listing = root / "list.tsv"
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["url", "wnid"])
        writer.writerows(rows)
    config = root / "curation.toml"
    config.write_text(
        f"[crawl]\nallow_private_hosts = true\nconcurrency = 8\nper_host = {PER_HOST}\nretries = 0\n"
        'contact = "t@e.org"\n'
    )
    return config, listing


def _crawl_args(root: Path, config: Path) -> list[str]:
    return ["--config", str(config), "--db", str(root / "c.sqlite"), "--data-dir", str(root / "data")]


def _crawl_tables(root: Path, servers: list, store_url: str | None = None) -> dict[str, list[tuple]]:
    """Candidates, images and stored files (``images/<key>``: in ``data/images``, or under
    ``store_url``), each server's base URL replaced by its index (two runs use two sets of servers),
    timestamps left out."""
    con = sqlite3.connect(root / "c.sqlite")

    def unport(value):
        for h, server in enumerate(servers):
            value = value.replace(server.base, f"host{h}") if isinstance(value, str) else value
        return value

    try:
        candidates = con.execute(
            "SELECT wnid, url, source, status, reason, image_sha256, final_url, attempts FROM candidates"
        ).fetchall()
        return {
            "candidates": sorted(tuple(unport(v) for v in row) for row in candidates),
            "images": con.execute(
                "SELECT sha256, path, width, height, format, bytes, mode, multi_class FROM images ORDER BY sha256"
            ).fetchall(),
            "files": sorted(f"images/{key}" for key in _image_keys(store_url or str(root / "data" / "images"))),
        }
    finally:
        con.close()


def _image_keys(url: str) -> list[str]:
    from curation.store import open_store

    return [key for key, _ in open_store(url).list() if not key.startswith(".")]


def _photo_folder(root: Path) -> Path:
    """Three shared photos as a crawl folder (read by the driver: the workers may not see it)."""
    folder = root / "photos" / CRAWL_WNIDS[2]
    folder.mkdir(parents=True)
    for path in sorted(SAMPLES.glob("*.JPEG"))[:3]:
        shutil.copy(path, folder / path.name)
    return folder.parent


@pytest.mark.ray(timeout=400)
def test_crawl_on_ray_into_s3_writes_what_local_writes_and_a_node_with_a_wrong_key_stops_it(
    s3_env, ray_cluster, tmp_path: Path, run_cli, lite0_checkpoint
) -> None:
    """The cluster's nodes take the S3 server's variables from their own environment (s3_env is set
    before they start); dedup and filter on the cluster, reading s3://, then agree with local runs
    reading file://; the node added last has a wrong secret key."""
    import uuid

    from replay_server import ReplayServer

    photos = _photo_folder(tmp_path)
    prefix = f"s3://images/ray-{uuid.uuid4().hex[:8]}"
    results = {}
    on_ray = ["--engine", "ray", "--ray-address", ray_cluster.address]
    for name, engine in (("local", []), ("ray", on_ray)):
        with ReplayServer(latency=0.05) as a, ReplayServer(latency=0.05) as b, ReplayServer(latency=0.05) as c:
            servers = [a, b, c]
            root = tmp_path / name
            config, listing = _crawl_setup(root, servers, per_host_urls=30)
            env = {"CURATION_STORAGE_IMAGES": f"{prefix}/images"} if name == "ray" else {}
            crawl = ("crawl", "--urls", str(listing), "--folder", str(photos))
            result = run_cli(*_crawl_args(root, config), *engine, *crawl, env=env, timeout=200)
            assert result.returncode == 0, result.stderr
            assert all(0 < s.max_in_flight <= PER_HOST for s in servers), [s.max_in_flight for s in servers]
            assert all(len(s.hits(f"/img/{h}-0.jpg")) == 1 for h, s in enumerate(servers))  # once for 2 classes
            results[name] = _crawl_tables(root, servers, env.get("CURATION_STORAGE_IMAGES"))
            assert not list((root / "data" / ".staging").glob("*.b*.journal"))  # every batch journal dropped
    assert ray_cluster.drivers_seen() == 1  # the Ray run did run on the cluster
    local, ray = results["local"], results["ray"]
    assert len(local["candidates"]) == 96 and len(local["images"]) == 84 and len(local["files"]) == 84
    assert sum(row[3] == "failed" for row in local["candidates"]) == 9
    assert ray == local

    # Dedup then filter read each crawl's images: on the cluster from s3://, here from file://.
    model = ("--model", "tf_efficientnet_lite0", "--checkpoint", str(lite0_checkpoint))
    runs = {}
    for name, engine, env in (("local", [], {}), ("ray", on_ray, {"CURATION_STORAGE_IMAGES": f"{prefix}/images"})):
        db = ("--db", str(tmp_path / name / "c.sqlite"), "--data-dir", str(tmp_path / name / "data"), *engine)
        stages = (["dedup"], ["filter", *model, "--limit", "24"])  # 24 pairs: the model's start dominates
        runs[name] = [run_cli(*db, *stage, env=env, timeout=300) for stage in stages]
        assert all(run.returncode == 0 for run in runs[name]), [run.stderr for run in runs[name]]
    assert ray_cluster.drivers_seen() == 4  # dedup and filter ran on the cluster (after the crawl and a query)
    assert [run.stdout for run in runs["ray"]] == [run.stdout for run in runs["local"]]
    assert "84 images, 84 hashed now, 0 unreadable" in runs["local"][0].stdout, runs["local"][0].stdout
    assert "(24 pair(s), 0 image(s) failed" in runs["local"][1].stdout, runs["local"][1].stdout
    deduped = {name: _dedup_tables(tmp_path / name) for name in runs}
    assert len(deduped["local"]["hashes"]) == 84 and deduped["local"]["links"] and deduped["ray"] == deduped["local"]
    filtered = {name: _filter_tables(tmp_path / name, "c.sqlite") for name in runs}
    assert len(filtered["local"]["predictions"]) == 24 and filtered["ray"] == filtered["local"]

    wrong = ray_cluster.add_node({"AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    root = tmp_path / "wrong"
    config, listing = _crawl_setup(root, [a], per_host_urls=3)
    env = {"CURATION_STORAGE_IMAGES": f"{prefix}-2/images"}
    result = run_cli(*_crawl_args(root, config), *on_ray, "crawl", "--urls", str(listing), env=env, timeout=200)
    assert result.returncode == 1 and result.stdout == "", result.stderr
    assert result.stderr == (
        f"curation: error: storage preflight failed on Ray node 127.0.0.1 ({wrong.node_id[:8]}): cannot read in "
        f"{prefix}-2/images: wrong secret key (SignatureDoesNotMatch): check AWS_SECRET_ACCESS_KEY\n"
    )
    assert sorted(p.name for p in root.iterdir()) == ["curation.toml", "list.tsv"]  # no catalog, no data
    assert _image_keys(f"{prefix}-2") == []  # nor any object beside the images


def _start_crawl(root: Path, servers: list, cluster) -> tuple:
    """A Ray crawl of 60 URLs per host (one replay server each) running in the background."""
    import subprocess
    import sys

    config, listing = _crawl_setup(root, servers, per_host_urls=60)
    args = [sys.executable, "-m", "curation", *_crawl_args(root, config), "--engine", "ray"]
    args += ["--ray-address", cluster.address, "crawl", "--urls", str(listing)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, [*args[:-3], "crawl", "--urls", str(listing)]


def _local_reference(root: Path, servers: list, run_cli) -> dict[str, list[tuple]]:
    config, listing = _crawl_setup(root, servers, per_host_urls=60)
    result = run_cli(*_crawl_args(root, config), "crawl", "--urls", str(listing), timeout=200)
    assert result.returncode == 0, result.stderr
    tables = _crawl_tables(root, servers)
    assert len(tables["candidates"]) == 183 and len(tables["images"]) == 162
    for server in servers:
        server.requests.clear()
    return tables


@pytest.mark.ray(timeout=300)
def test_crawl_survives_a_node_removed_mid_run_without_duplicate_rows(ray_cluster, tmp_path: Path, run_cli) -> None:
    import time

    import ray
    from ray._private.state import available_resources_per_node
    from replay_server import ReplayServer

    with ReplayServer(latency=0.1) as a, ReplayServer(latency=0.1) as b, ReplayServer(latency=0.1) as c:
        servers = [a, b, c]
        local = _local_reference(tmp_path / "local", servers, run_cli)
        removed = ray_cluster.nodes[1]
        ray.init(address=ray_cluster.address)
        proc, _ = _start_crawl(tmp_path / "ray", servers, ray_cluster)
        deadline = time.monotonic() + 120
        while sum(len(s.requests) for s in servers) < 30:
            assert proc.poll() is None and time.monotonic() < deadline, "the crawl ended too soon"
            time.sleep(0.05)
        assert available_resources_per_node()[removed.node_id].get("CPU", 0) < 2  # crawl actors run there
        ray.shutdown()
        ray_cluster.remove_node(removed)  # the worker node, mid-crawl
        _, err = proc.communicate(timeout=200)
        assert proc.returncode == 0 and "Traceback" not in err, err
        ray_tables = _crawl_tables(tmp_path / "ray", servers)
    assert ray_tables == local  # same rows, none twice


@pytest.mark.ray(timeout=300)
def test_crawl_on_ray_killed_with_sigkill_leaves_only_journaled_files_and_resumes(
    ray_cluster, tmp_path: Path, run_cli
) -> None:
    import signal
    import time

    from replay_server import ReplayServer

    root = tmp_path / "ray"
    staging, store = root / "data" / ".staging", root / "data" / "images"

    def on_disk() -> set[str]:
        return {p.relative_to(root / "data").as_posix() for p in store.rglob("*.jpg")}

    def recorded() -> set[str]:
        con = sqlite3.connect(root / "c.sqlite")
        try:
            return {path for (path,) in con.execute("SELECT path FROM images")}
        except sqlite3.OperationalError:  # not created yet
            return set()
        finally:
            con.close()

    with ReplayServer(latency=0.1) as a, ReplayServer(latency=0.1) as b, ReplayServer(latency=0.1) as c:
        servers = [a, b, c]
        local = _local_reference(tmp_path / "local", servers, run_cli)
        proc, args = _start_crawl(root, servers, ray_cluster)
        deadline = time.monotonic() + 120
        while not (store.is_dir() and len(on_disk() - recorded()) >= 5 and list(staging.glob("*.b*.journal"))):
            assert proc.poll() is None and time.monotonic() < deadline, "the crawl ended too soon"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        while any(ray_cluster.busy_cpus(node) for node in ray_cluster.nodes):  # the run's actors go with it
            assert time.monotonic() < deadline + 60, "the killed run's actors lived on"
            time.sleep(0.5)
        unrecorded = on_disk() - recorded()
        journaled = {f"images/{key}" for j in staging.glob("store-*.b*.journal") for key in j.read_text().split()}
        assert unrecorded and unrecorded <= journaled  # every file not in the catalog is journaled
        rerun = run_cli(*args[3:], timeout=200)
        assert rerun.returncode == 0, rerun.stderr
        assert f"and {len(unrecorded)} unrecorded images of an earlier run" in rerun.stderr
        tables = _crawl_tables(root, servers)
    assert on_disk() == recorded() and not list(staging.glob("*.b*.journal"))
    assert tables == local


@pytest.mark.ray(timeout=300)
def test_crawl_on_ray_interrupted_with_ctrl_c_records_what_was_in_flight_and_resumes(
    ray_cluster, tmp_path: Path, run_cli
) -> None:
    import signal
    import subprocess
    import sys
    import time

    from replay_server import ReplayServer

    root = tmp_path / "ray"
    with ReplayServer(latency=0.05) as a, ReplayServer(latency=0.05) as b, ReplayServer(latency=0.05) as c:
        servers = [a, b, c]
        config, listing = _crawl_setup(root, servers, per_host_urls=200)
        args = [*_crawl_args(root, config), "--engine", "ray", "--ray-address", ray_cluster.address]
        args += ["crawl", "--urls", str(listing)]
        proc = subprocess.Popen([sys.executable, "-m", "curation", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 120
        while sum(len(s.requests) for s in servers) < 30:
            assert proc.poll() is None and time.monotonic() < deadline, "the crawl ended too soon"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "Traceback" not in err, err
        assert out.startswith("crawl interrupted") and len(out.splitlines()) == 1, out  # no Ray chatter
        tables = _crawl_tables(root, servers)
        done = [row for row in tables["candidates"] if row[3] != "pending"]
        assert 30 <= len(done) < len(tables["candidates"]) == 603
        assert set(tables["files"]) == {path for _, path, *_ in tables["images"]}  # in-flight batches recorded
        rerun = run_cli(*args, timeout=200)
        assert rerun.returncode == 0 and "removed" not in rerun.stderr, rerun.stderr
        tables = _crawl_tables(root, servers)
    assert all(row[3] != "pending" for row in tables["candidates"]) and len(tables["images"]) == 540
    assert len(tables["files"]) == 540
