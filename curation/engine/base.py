"""The task and executor protocols every back-end implements."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol


class Task:
    """A picklable unit of work. An executor calls :meth:`setup` once per worker (process, thread
    or Ray actor) before the first batch, then :meth:`run` per batch. ``run`` returns one record per
    item, may run twice for one batch (after a worker died) and never touches the catalog."""

    # Resources one worker of this task holds: "cpu" (one core) or "gpu" (one accelerator; a
    # back-end without one falls back to a CPU worker).
    resource = "cpu"
    # Threads one worker of a keyed pool may use (the pool sets it: its share of the total).
    threads = 1

    def setup(self) -> None:
        """Open what every batch reuses (an HTTP pool, a model)."""

    def run(self, batch: Sequence[Any]) -> list[Any]:
        """One record per item of ``batch``. As the first stage of :meth:`Executor.pipeline`, one
        value for the whole batch instead (e.g. its decoded images); as the second, ``batch`` is
        that value."""
        raise NotImplementedError


class KeyedPool(Protocol):
    """Long-lived workers of one task, each owning some keys for the pool's whole life: every item
    of a key goes to the same worker, so state kept per key (a host's connection limit, request
    rate, Retry-After pause, robots.txt) holds across all workers and all calls."""

    def map(self, items: Sequence[Any], *, key: Callable[[Any], str], batch_size: int) -> Iterator[Any]:
        """Yield the records of every item, in any order, as batches finish."""
        ...

    def finish(self) -> list[Any]:
        """After an interrupted :meth:`map`: the records of the batches still in flight, once they
        ended (nothing new is started)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> KeyedPool: ...

    def __exit__(self, *exc: object) -> None: ...


class Executor(Protocol):
    """Runs a :class:`Task` over items on some workers."""

    name: str

    def map(self, task: Task, items: Sequence[Any], *, batch_size: int, workers: int) -> Iterator[Any]:
        """Yield the records of every item, in any order, as batches finish. At most ``workers``
        workers (a cluster back-end may use each of its nodes' share); memory stays bounded by a
        few batches per worker in flight."""
        ...

    def keyed(self, task: Task, *, workers: int) -> KeyedPool:
        """A :class:`KeyedPool` of ``task`` using ``workers`` threads in all."""
        ...

    def pipeline(
        self, prepare: Task, task: Task, items: Sequence[Any], *, batch_size: int, workers: int
    ) -> Iterator[Any]:
        """Two stages per batch: ``prepare`` on CPU workers (read, decode) turns it into one value,
        which ``task`` turns into records in a few long-lived workers holding ``task.resource``
        (one per GPU; CPU workers where there is none) that set it up once (load the model). Yields
        the records in any order, as ``map`` does; the prepared values go from worker to worker,
        not through the driver where the back-end can."""
        ...

    def each_node(self, fn: Callable[..., Any], *args: Any, timeout: float) -> list[tuple[str, Any]]:
        """``fn(node, *args)`` once on every machine of a cluster (none for a local back-end): a
        check that each node can reach what the workers need. Returns (node, result) pairs, ``node``
        naming the machine for a one-line message."""
        ...

    def beside_driver(self, service: Any) -> Any:
        """``service`` where the driver is (its local disk), behind a picklable handle whose
        ``call(method, *args)`` runs ``service.method(*args)`` there and returns the result: how
        workers reach the driver's files (e.g. a write journal) before they write elsewhere."""
        ...

    def close(self) -> None:
        """Stop the workers (a cluster itself stays up)."""
        ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


class KeyRouter:
    """Which of ``shards`` workers owns each key, for good. New keys go greedily to the shard with
    the fewest items of the call (the busiest keys first; a hash put two busy hosts on one worker as
    often as not); past ``remembered`` keys, a new key's shard is its hash, so memory stays bounded
    on lists with millions of hosts (where hashing balances well)."""

    def __init__(self, shards: int, remembered: int = 100_000) -> None:
        self.shards = shards
        self.remembered = remembered
        self.owner: dict[str, int] = {}

    def queues(self, items: Sequence[Any], key: Callable[[Any], str]) -> list[list[Any]]:
        """``items`` in one queue per shard, each key's items in its owner's queue, the keys of a queue
        interleaved (so a batch spans all of a worker's keys: one host's batch could use only its
        per-host connections)."""
        by_key: dict[str, list[Any]] = {}
        for item in items:
            by_key.setdefault(key(item), []).append(item)
        groups: list[list[list[Any]]] = [[] for _ in range(self.shards)]
        load = [0] * self.shards
        for name, group in sorted(by_key.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            shard = self._shard(name, load)
            groups[shard].append(group)
            load[shard] += len(group)
        gap = object()
        return [
            [item for row in itertools.zip_longest(*gs, fillvalue=gap) for item in row if item is not gap]
            for gs in groups
        ]

    def _shard(self, name: str, load: list[int]) -> int:
        shard = self.owner.get(name)
        if shard is None:
            if len(self.owner) >= self.remembered:
                return zlib.crc32(name.encode()) % self.shards
            shard = self.owner[name] = min(range(self.shards), key=load.__getitem__)
        return shard
