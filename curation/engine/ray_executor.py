"""The Ray executor: batches as Ray tasks over a cluster's CPUs (and GPUs for GPU tasks); a
two-stage :meth:`RayExecutor.pipeline` as CPU tasks feeding a pool of long-lived actors.

Joins a running cluster (``ray start --head`` / ``ray start --address``); it never starts one, so a
run cannot silently fall back to one machine. Ray retries a task whose node died (``max_retries``);
records of a batch that ran twice reach the driver twice and its :class:`~curation.engine.Sink`
keeps one. A pipeline's actor that died is restarted (``max_restarts``) and its unfinished calls
re-run there (``max_task_retries``); the driver receives each batch's records once.
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

# A pipeline's actors when the cluster has no GPU: a share of its CPUs, the rest decode. Measured on
# this project's CPU with EfficientNet-Lite0, one thread: 17 ms to score an image in bf16 against
# 3.3 ms to decode and crop it (JPEG draft), so about 5 of every 6 cores go to inference.
CPU_ACTOR_SHARE = 5 / 6

_READY: dict[str, Task] = {}  # the set-up task of each map, per worker process


def _run_batch(token: str, task: Task, batch: Sequence[Any]) -> list[Any]:
    ready = _READY.get(token)
    if ready is None:
        _READY.clear()  # one map at a time per worker: drop an earlier map's model or pool
        task.setup()
        _READY[token] = ready = task
    return ready.run(batch)


class _TaskActor:
    """A pipeline's long-lived worker: sets its task up once (loads the model), then runs batches.
    Set up at the first batch, so a failing set-up is an error of that call, reported as a task's."""

    def __init__(self, task: Task) -> None:
        self.task, self.ready = task, False

    def run(self, prepared: Any) -> list[Any]:
        if not self.ready:
            self.task.setup()
            self.ready = True
        return self.task.run(prepared)


def _read_marker(_node: str, path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


class _Service:
    """An object living beside the driver (:meth:`RayExecutor.beside_driver`)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.service, method)(*args)


class RayServiceHandle:
    """A worker's picklable handle on an object beside the driver: each call waits for its answer."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def call(self, method: str, *args: Any) -> Any:
        return ray.get(self.actor.call.remote(method, *args))


class RayExecutor:
    name = "ray"

    def __init__(self) -> None:
        self.run_batch = ray.remote(max_retries=MAX_RETRIES)(_run_batch)
        self.task_actor = ray.remote(max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)(_TaskActor)
        self.services: list[Any] = []

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
        data_dir = data_dir.absolute()
        token = uuid.uuid4().hex
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            marker = data_dir / f".engine-check-{token}"
            marker.write_text(token)
        except OSError as exc:
            raise CurationError(f"cannot use the data directory {data_dir}: {exc.strerror}") from None
        try:
            seen = self.each_node(_read_marker, str(marker))
        finally:
            marker.unlink(missing_ok=True)
        for node, text in seen:
            if text != token:
                raise CurationError(
                    f"{node} cannot see the data directory "
                    f"{data_dir}: every node needs it at the same path (a shared mount)"
                )

    def each_node(
        self, fn: Callable[..., Any], *args: Any, timeout: float = STORAGE_CHECK_SECONDS
    ) -> list[tuple[str, Any]]:
        """``fn(node, *args)`` once on every alive node, holding no CPU; (node, result) pairs, where
        ``node`` names it for a one-line message: ``Ray node 127.0.0.1 (1a2b3c4d)``."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = ray.remote(num_cpus=0)(fn)
        nodes = [node for node in ray.nodes() if node["Alive"]]
        names = [f"Ray node {node['NodeManagerAddress']} ({node['NodeID'][:8]})" for node in nodes]
        refs = [
            remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                name, *args
            )
            for node, name in zip(nodes, names, strict=True)
        ]
        try:
            return list(zip(names, ray.get(refs, timeout=timeout), strict=True))
        except ray.exceptions.GetTimeoutError:
            late = [name for name, ref in zip(names, refs, strict=True) if not ray.wait([ref], timeout=0)[0]]
            raise CurationError(f"{late[0]} did not answer a check within {timeout:.0f} s") from None

    def beside_driver(self, service: Any) -> RayServiceHandle:
        """``service`` in an actor on the driver's own node (so it may use the driver's local disk),
        for workers to call through the returned picklable handle; it lives until :meth:`close`."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        actor = ray.remote(_Service).options(num_cpus=0, scheduling_strategy=here).remote(service)
        self.services.append(actor)
        return RayServiceHandle(actor)

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

    def pipeline(
        self, prepare: Task, task: Task, items: Sequence[Any], *, batch_size: int, workers: int
    ) -> Iterator[Any]:
        """``prepare`` as CPU tasks spread over the nodes; their results go, as object refs (worker
        to actor, never through the driver), to ``task`` in one actor per GPU (``num_gpus=1``) or,
        with no GPU or a CPU task, in CPU actors (:data:`CPU_ACTOR_SHARE` of the CPUs). In flight:
        two batches per actor and one per CPU left to ``prepare``. ``workers`` is this machine's
        share, unused: the pipeline sizes itself to the cluster."""
        if not items:
            return
        actors, prepare_slots = self._start_actors(task)
        remote = self.run_batch.options(num_cpus=1, scheduling_strategy="SPREAD")
        token, prepare_ref = uuid.uuid4().hex, ray.put(prepare)
        window = IN_FLIGHT_PER_SLOT * len(actors) + prepare_slots
        queued = [0] * len(actors)  # calls in flight per actor: the next batch goes to the least busy
        in_flight: dict[Any, int] = {}
        pending = iter(range(0, len(items), batch_size))
        try:
            while True:
                for start in pending:
                    prepared = remote.remote(token, prepare_ref, items[start : start + batch_size])
                    k = queued.index(min(queued))
                    in_flight[actors[k].run.remote(prepared)] = k
                    queued[k] += 1
                    if len(in_flight) >= window:
                        break
                if not in_flight:
                    return
                done, _ = ray.wait(list(in_flight), num_returns=1)
                queued[in_flight.pop(done[0])] -= 1
                yield from _get(done[0])
        finally:
            for actor in actors:
                ray.kill(actor)

    def _start_actors(self, task: Task) -> tuple[list[Any], int]:
        """The pipeline's actors for ``task``, and how many CPUs stay for its first stage."""
        resources = ray.cluster_resources()
        cpus, gpus = max(1, int(resources.get("CPU", 1))), int(resources.get("GPU", 0))
        if task.resource == "gpu" and gpus >= 1:
            # No CPU held: a node with more GPUs than CPUs still starts every actor.
            n, options = gpus, {"num_gpus": 1, "num_cpus": 0}
        else:  # at least one CPU left to the first stage, else nothing would feed the actors
            n = max(1, min(int(cpus * CPU_ACTOR_SHARE), cpus - 1))
            options = {"num_cpus": 1 if cpus > 1 else 0}
        actors = [self.task_actor.options(**options).remote(task) for _ in range(n)]
        return actors, cpus - n * options["num_cpus"]

    def close(self) -> None:
        for actor in self.services:
            ray.kill(actor)
        self.services = []
        if ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _get(ref: Any) -> list[Any]:
    """A batch's records; a task that raised (not a lost node: Ray retries those) or an actor that
    died more often than it may restart is one line."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if exc.cause is not None else exc
        raise CurationError(f"a Ray worker failed: {type(cause).__name__}: {cause}") from None
    except ray.exceptions.RayActorError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CurationError(f"a Ray actor died and could not be restarted: {reason}") from None


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
    """A keyed batch's records. Its actor restarts whenever its node dies, so an actor error means
    its set-up raised (restarting cannot help): one line naming the cause."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayActorError as exc:
        last = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        raise CurationError(f"a Ray worker could not start: {last}") from None
    except ray.exceptions.RayTaskError:
        return _get(ref)  # the same error, as one line


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
