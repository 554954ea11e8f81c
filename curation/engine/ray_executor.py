"""The Ray executor: batches as Ray tasks over a cluster's CPUs (and GPUs for GPU tasks).

Joins a running cluster (``ray start --head`` / ``ray start --address``); it never starts one, so a
run cannot silently fall back to one machine. Ray retries a task whose node died (``max_retries``);
records of a batch that ran twice reach the driver twice and its :class:`~curation.engine.Sink`
keeps one.
"""

from __future__ import annotations

import itertools
import logging
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from curation.engine.base import KeyRouter, Task
from curation.errors import CurationError

try:
    import ray
except ImportError:  # pragma: no cover - depends on the install
    ray = None

# Batches in flight per worker slot: one running, one queued, so no slot waits on the driver.
IN_FLIGHT_PER_SLOT = 2
# A node's retries after it died mid-batch (Ray's default; a batch is idempotent, see Sink).
MAX_RETRIES = 3
# Seconds to wait for a TCP answer from HOST:PORT before saying it is unreachable.
PROBE_SECONDS = 3.0
# Seconds every node gets to read the data-directory marker (a worker starts in 1-3 s; a hung
# network mount must not hang the run).
STORAGE_CHECK_SECONDS = 60
# A keyed actor mostly waits on the network: a quarter CPU lets a node host four, and the actors of
# a removed node restart on the nodes left.
KEYED_ACTOR_CPUS = 0.25

_READY: dict[str, Task] = {}  # the set-up task of each map, per worker process


def _run_batch(token: str, task: Task, batch: Sequence[Any]) -> list[Any]:
    ready = _READY.get(token)
    if ready is None:
        _READY.clear()  # one map at a time per worker: drop an earlier map's model or pool
        task.setup()
        _READY[token] = ready = task
    return ready.run(batch)


def _read_marker(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


class RayExecutor:
    name = "ray"

    def __init__(self) -> None:
        self.run_batch = ray.remote(max_retries=MAX_RETRIES)(_run_batch)

    @classmethod
    def connect(cls, opts: Any, data_dir: Path | None = None) -> RayExecutor:
        if ray is None:
            raise CurationError("engine ray: Ray is not installed here; pip install 'curation[ray]' on every node")
        address = opts.address
        init: dict[str, Any] = {}
        if address != "auto":
            host = _probe(address)
            if host.startswith("127.") or host in ("localhost", "::1"):
                init["_node_ip_address"] = "127.0.0.1"
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, **init)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CurationError(f"cannot join the Ray cluster at {address}: {first}") from None
        executor = cls()
        try:
            if data_dir is not None:
                executor.check_storage(Path(data_dir))
        except BaseException:
            executor.close()
            raise
        return executor

    def check_storage(self, data_dir: Path) -> None:
        """Every alive node must read a file the driver just wrote into ``data_dir``."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        data_dir = data_dir.absolute()
        token = uuid.uuid4().hex
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            marker = data_dir / f".engine-check-{token}"
            marker.write_text(token)
        except OSError as exc:
            raise CurationError(f"cannot use the data directory {data_dir}: {exc.strerror}") from None
        try:
            reader = ray.remote(num_cpus=0)(_read_marker)
            nodes = [node for node in ray.nodes() if node["Alive"]]
            refs = [
                reader.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                    str(marker)
                )
                for node in nodes
            ]
            seen = ray.get(refs, timeout=STORAGE_CHECK_SECONDS)
        finally:
            marker.unlink(missing_ok=True)
        for node, text in zip(nodes, seen, strict=True):
            if text != token:
                raise CurationError(
                    f"Ray node {node['NodeManagerAddress']} ({node['NodeID'][:8]}) cannot see the data directory "
                    f"{data_dir}: every node needs it at the same path (a shared mount)"
                )

    def slots(self, task: Task) -> int:
        resources = ray.cluster_resources()
        if task.resource == "gpu" and resources.get("GPU", 0) >= 1:
            return int(resources["GPU"])
        return max(1, int(resources.get("CPU", 1)))

    def map(self, task: Task, items: Sequence[Any], *, batch_size: int, workers: int) -> Iterator[Any]:
        """``workers`` is this machine's share; the cluster uses all its CPUs (or GPUs)."""
        if not items:
            return
        slots = self.slots(task)
        gpu = task.resource == "gpu" and ray.cluster_resources().get("GPU", 0) >= 1
        remote = self.run_batch.options(num_gpus=1, num_cpus=0) if gpu else self.run_batch.options(num_cpus=1)
        token, task_ref = uuid.uuid4().hex, ray.put(task)
        pending = iter(range(0, len(items), batch_size))
        in_flight: list[Any] = []
        while True:
            for start in pending:
                in_flight.append(remote.remote(token, task_ref, items[start : start + batch_size]))
                if len(in_flight) >= slots * IN_FLIGHT_PER_SLOT:
                    break
            if not in_flight:
                return
            done, in_flight = ray.wait(in_flight, num_returns=1)
            yield from _get(done[0])

    def keyed(self, task: Task, *, workers: int) -> RayKeyedPool:
        """One actor per cluster CPU (at most ``workers``), spread over the nodes."""
        return RayKeyedPool(task, workers, self.slots(task))

    def close(self) -> None:
        if ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _get(ref: Any) -> list[Any]:
    """A batch's records; a task that raised (not a lost node: Ray retries those) is one line."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if exc.cause is not None else exc
        raise CurationError(f"a Ray worker failed: {type(cause).__name__}: {cause}") from None


def _probe(address: str) -> str:
    """The host of ``HOST:PORT`` once something answers there; else one line."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise CurationError(f"Ray address must be auto or HOST:PORT, not {address!r}")
    host = host.strip("[]")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        raise CurationError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None
    return host


def _keyed_records(ref: Any) -> list[Any]:
    try:
        return _get(ref)
    except ray.exceptions.RayActorError as exc:  # its set-up raised: restarting cannot help
        last = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise CurationError(f"a Ray worker could not start: {last}") from None


class _KeyedWorker:
    """A long-lived actor: its task is set up once and keeps the state of every key it owns."""

    def __init__(self, task: Task) -> None:
        task.setup()
        self.task = task

    def run(self, batch: Sequence[Any]) -> list[Any]:
        return self.task.run(batch)


class RayKeyedPool:
    """``shards`` actors, each owning the keys :class:`KeyRouter` gives it and ``workers / shards``
    threads. An actor whose node died restarts on a node left and its unfinished batches run again
    there (a batch's records may then reach the driver twice: the caller keeps one per item)."""

    def __init__(self, task: Task, workers: int, slots: int) -> None:
        self.shards = max(1, min(slots, workers))
        task.threads = -(-max(1, workers) // self.shards)
        actor_class = ray.remote(_KeyedWorker).options(
            num_cpus=KEYED_ACTOR_CPUS,
            max_restarts=-1,
            max_task_retries=-1,
            max_concurrency=IN_FLIGHT_PER_SLOT,
            scheduling_strategy="SPREAD",
        )
        # The task by value, not ray.put: an actor restarted on another node must not depend on an
        # object that lived on the dead one (ray#53727).
        self.actors = [actor_class.remote(task) for _ in range(self.shards)]
        self.router = KeyRouter(self.shards)
        self.in_flight: dict[Any, int] = {}  # batch -> its shard

    def map(self, items: Sequence[Any], *, key: Callable[[Any], str], batch_size: int) -> Iterator[Any]:
        queues = self.router.queues(items, key)
        starts = [iter(range(0, len(queue), batch_size)) for queue in queues]

        def submit(shard: int, count: int) -> None:
            for start in itertools.islice(starts[shard], count):
                batch = queues[shard][start : start + batch_size]
                self.in_flight[self.actors[shard].run.remote(batch)] = shard

        for shard in range(self.shards):
            submit(shard, IN_FLIGHT_PER_SLOT)
        while self.in_flight:
            done, _ = ray.wait(list(self.in_flight), num_returns=1)
            submit(self.in_flight.pop(done[0]), 1)
            yield from _keyed_records(done[0])

    def finish(self) -> list[Any]:
        records: list[Any] = []
        while self.in_flight:
            ref = next(iter(self.in_flight))
            records += _keyed_records(ref)
            del self.in_flight[ref]
        return records

    def close(self) -> None:
        for ref in self.in_flight:  # cancelled, not retried on a restarted actor (and not logged so)
            ray.cancel(ref)
        self.in_flight = {}
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def __enter__(self) -> RayKeyedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
