"""The task and executor protocols every back-end implements."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol


class Task:
    """A picklable unit of work. An executor calls :meth:`setup` once per worker (process, thread
    or Ray actor) before the first batch, then :meth:`run` per batch. ``run`` returns one record per
    item, may run twice for one batch (after a worker died) and never touches the catalog."""

    # Resources one worker of this task holds: "cpu" (one core) or "gpu" (one accelerator; a
    # back-end without one falls back to a CPU worker).
    resource = "cpu"
    # Threads one keyed worker may use (Executor.map_by_key sets it: its share of the total).
    shard_workers = 1

    def setup(self) -> None:
        """Open what every batch reuses (an HTTP pool, a model)."""

    def run(self, batch: Sequence[Any]) -> list[Any]:
        raise NotImplementedError


class Executor(Protocol):
    """Runs a :class:`Task` over items on some workers."""

    name: str

    def map(self, task: Task, items: Sequence[Any], *, batch_size: int, workers: int) -> Iterator[Any]:
        """Yield the records of every item, in any order, as batches finish. At most ``workers``
        workers (a cluster back-end may use each of its nodes' share); memory stays bounded by a
        few batches per worker in flight."""
        ...

    def map_by_key(
        self, task: Task, items: Sequence[Any], *, key: Callable[[Any], str], batch_size: int, workers: int
    ) -> Iterator[Any]:
        """Like :meth:`map`, but every item of one ``key`` goes to the same long-lived worker, so
        state kept per key (a host's connection limit, request rate, Retry-After pause and
        robots.txt) holds across all workers. ``workers`` is the total: each of the back-end's
        keyed workers gets a share."""
        ...

    def close(self) -> None:
        """Stop the workers (a cluster itself stays up)."""
        ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


def shard_by_key(items: Sequence[Any], key: Callable[[Any], str], shards: int) -> list[list[Any]]:
    """``items`` in ``shards`` queues, all items of a key in one, balanced: the keys with the most
    items first, each to the queue holding fewest (a hash of the key would put two busy hosts on
    one worker as often as not)."""
    by_key: dict[str, list[Any]] = {}
    for item in items:
        by_key.setdefault(key(item), []).append(item)
    groups: list[list[list[Any]]] = [[] for _ in range(shards)]
    for _, group in sorted(by_key.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        min(groups, key=lambda gs: sum(map(len, gs))).append(group)
    # Keys interleaved in each queue, so a batch spans all of a worker's hosts (one host's batch
    # could use only its per-host connections).
    return [[item for row in itertools.zip_longest(*gs) for item in row if item is not None] for gs in groups]
