"""The engine seam on this machine: the local executor, the sink, choosing a back-end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from curation.config import resolve_settings
from curation.engine import Sink, open_executor
from curation.engine.local import LocalExecutor
from curation.errors import CurationError
from tests.engine_tasks import ModelTask, PrepareTask, SquareTask


@pytest.mark.parametrize("threads", [False, True])
def test_local_map_sets_up_once_per_worker_and_returns_every_record(threads: bool) -> None:
    records = list(LocalExecutor(threads=threads).map(SquareTask(), list(range(100)), batch_size=7, workers=2))
    assert sorted((n, square) for n, square, _, _ in records) == [(n, n * n) for n in range(100)]
    assert {setups for *_, setups in records} == {1}  # each worker set up exactly once
    pids = {pid for _, _, pid, _ in records}
    assert pids == {os.getpid()} if threads else (os.getpid() not in pids and len(pids) <= 2)


def test_local_pipeline_prepares_in_workers_and_runs_the_model_here_set_up_once() -> None:
    records = list(LocalExecutor().pipeline(PrepareTask(), ModelTask(), list(range(50)), batch_size=7, workers=2))
    assert sorted(n for n, *_ in records) == list(range(50))
    prepared_by = {pid for _, _, pid, *_ in records}
    assert os.getpid() not in prepared_by and len(prepared_by) <= 2
    assert {(setups, pid) for *_, setups, pid in records} == {(1, os.getpid())}


def test_sink_commits_in_batches_and_keeps_one_record_per_key() -> None:
    written: list[list[int]] = []
    with Sink(written.append, key=lambda r: r % 10, rows=3, seconds=3600) as sink:
        taken = [sink.add(n) for n in [1, 2, 3, 11, 4, 5, 12]]
    assert taken == [True, True, True, False, True, True, False]
    assert written == [[1, 2, 3], [4, 5]] and sink.written == 5


def test_engine_choice_from_flags_and_file(tmp_path: Path) -> None:
    (tmp_path / "curation.toml").write_text('[engine]\nkind = "local"\n')
    settings = resolve_settings(environ={}, cwd=tmp_path)
    with open_executor(settings) as executor:
        assert executor.name == "local"
    settings.engine_flags = {"kind": "spark", "address": None}
    with pytest.raises(CurationError, match="kind must be one of local, ray, not 'spark'"):
        open_executor(settings)


def test_unreachable_ray_address_is_one_line_and_writes_nothing(tmp_path: Path, run_cli) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    db = tmp_path / "c.sqlite"
    result = run_cli("--db", str(db), "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", "dedup", timeout=120)
    assert result.returncode == 1 and result.stdout == "", result.stderr
    assert result.stderr == f"curation: error: cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused\n"
    assert not db.exists()
    bad = run_cli("--db", str(db), "--engine", "ray", "--ray-address", "nowhere", "dedup", timeout=120)
    assert bad.stderr == "curation: error: Ray address must be auto or HOST:PORT, not 'nowhere'\n"


def test_ray_not_installed_is_one_line(tmp_path: Path, run_cli) -> None:
    from conftest import REPO

    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    db = tmp_path / "c.sqlite"
    env = {"PYTHONPATH": f"{tmp_path / 'no-ray'}:{REPO}"}
    result = run_cli("--db", str(db), "--engine", "ray", "dedup", env=env, timeout=120)
    assert result.returncode == 1 and not db.exists()
    assert (
        result.stderr
        == "curation: error: engine ray: Ray is not installed here; pip install 'curation[ray]' on every node\n"
    )


def test_crawl_on_an_unreachable_cluster_is_one_line_and_writes_nothing(tmp_path: Path, run_cli) -> None:
    (tmp_path / "empty").mkdir()
    db = tmp_path / "c.sqlite"
    cli = ("--db", str(db), "--data-dir", str(tmp_path / "d"), "--engine", "ray")
    result = run_cli(*cli, "--ray-address", "127.0.0.1:9", "crawl", "--folder", str(tmp_path / "empty"), timeout=120)
    assert result.returncode == 1 and result.stdout == "", result.stderr
    assert result.stderr == "curation: error: cannot reach the Ray cluster at 127.0.0.1:9: Connection refused\n"
    assert not db.exists() and not (tmp_path / "d").exists()


def test_filter_on_an_unreachable_cluster_is_one_line_and_writes_nothing(tmp_path: Path, run_cli) -> None:
    db = tmp_path / "c.sqlite"
    cli = ("--db", str(db), "--data-dir", str(tmp_path / "d"), "--engine", "ray", "--ray-address", "127.0.0.1:9")
    for extra in ((), ("--follow",)):
        result = run_cli(*cli, "filter", *extra, timeout=120)
        assert result.returncode == 1 and result.stdout == "", result.stderr
        assert result.stderr == "curation: error: cannot reach the Ray cluster at 127.0.0.1:9: Connection refused\n"
        assert not db.exists() and not (tmp_path / "d").exists()


def test_key_router_keeps_each_key_on_one_shard_for_good_balanced_and_interleaved() -> None:
    from curation.engine.base import KeyRouter

    router = KeyRouter(shards=2)
    items = [(host, i) for host, count in (("a", 40), ("b", 30), ("c", 20), ("d", 10), ("e", 10)) for i in range(count)]
    queues = router.queues(items, key=lambda item: item[0])
    hosts = [{host for host, _ in queue} for queue in queues]
    assert hosts == [{"a", "d", "e"}, {"b", "c"}]  # greedy, busiest first: a | b, c | ... by load
    assert sorted(queues[0] + queues[1]) == sorted(items)
    assert [host for host, _ in queues[0][:3]] == ["a", "d", "e"]  # keys interleaved, not in runs
    # A later call: known keys stay with their owner whatever the load; a new key goes to the lighter shard.
    later = router.queues([("b", 0), ("b", 1), ("b", 2), ("f", 0)], key=lambda item: item[0])
    assert later == [[("f", 0)], [("b", 0), ("b", 1), ("b", 2)]]
    capped = KeyRouter(shards=3, remembered=1)
    first = capped.queues([("x", 0), ("y", 0)], key=lambda item: item[0])
    again = capped.queues([("y", 1)], key=lambda item: item[0])
    assert capped.owner == {"x": 0}  # past the cap a key is hashed, not remembered, and lands alike
    assert [k for k, q in enumerate(first) if ("y", 0) in q] == [k for k, q in enumerate(again) if q]


def test_local_keyed_pool_sets_up_once_with_every_thread() -> None:
    task = SquareTask()
    with LocalExecutor().keyed(task, workers=5) as pool:
        first = list(pool.map(list(range(10)), key=str, batch_size=3))
        second = list(pool.map([10, 11], key=str, batch_size=3))
    assert [n for n, *_ in first + second] == list(range(12)) and {s for *_, s in first + second} == {1}
    assert task.threads == 5
