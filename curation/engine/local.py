"""The local executor: worker processes (CPU-bound tasks) or threads (I/O-bound ones) on this machine."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from curation.engine.base import Task

_WORKER_TASK: Task | None = None  # the task of this worker process, set up once


def _init_worker(task: Task) -> None:
    global _WORKER_TASK
    task.setup()
    _WORKER_TASK = task


def _run_batch(batch: Sequence[Any]) -> list[Any]:
    assert _WORKER_TASK is not None
    return _WORKER_TASK.run(batch)


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class LocalExecutor:
    """``map`` over a process pool (``threads=False``) or a thread pool sharing one set-up task."""

    name = "local"

    def __init__(self, threads: bool = False) -> None:
        self.threads = threads

    @classmethod
    def connect(cls, _opts: Any = None, _data_dir: Path | None = None) -> LocalExecutor:
        return cls()

    def map(self, task: Task, items: Sequence[Any], *, batch_size: int, workers: int) -> Iterator[Any]:
        for records in self._run_batches(task, items, batch_size, workers):
            yield from records

    def pipeline(
        self, prepare: Task, task: Task, items: Sequence[Any], *, batch_size: int, workers: int
    ) -> Iterator[Any]:
        """``prepare`` in the worker pool, ``task`` set up once in this process (the one accelerator)."""
        if not items:
            return
        task.setup()
        for prepared in self._run_batches(prepare, items, batch_size, workers):
            yield from task.run(prepared)

    def _run_batches(self, task: Task, items: Sequence[Any], batch_size: int, workers: int) -> Iterator[Any]:
        """``task.run`` of every batch, in order for threads, as they finish for processes."""
        if not items:
            return
        workers = max(1, min(workers, -(-len(items) // batch_size)))
        if self.threads:
            task.setup()
            with ThreadPoolExecutor(workers, thread_name_prefix=f"{type(task).__name__}") as pool:
                yield from pool.map(task.run, batches(items, batch_size))
            return
        with multiprocessing.Pool(workers, _init_worker, (task,)) as pool:
            yield from pool.imap_unordered(_run_batch, batches(items, batch_size))

    def keyed(self, task: Task, *, workers: int) -> LocalKeyedPool:
        return LocalKeyedPool(task, workers)

    def each_node(self, fn: Callable[..., Any], *args: Any, timeout: float = 0) -> list[tuple[str, Any]]:
        """No node but this machine, which the caller checks itself."""
        return []

    def beside_driver(self, service: Any) -> LocalServiceHandle:
        return LocalServiceHandle(service)

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalKeyedPool:
    """One worker, here, owns every key: the task is set up once with all ``workers`` threads."""

    def __init__(self, task: Task, workers: int) -> None:
        task.threads = max(1, workers)
        task.setup()
        self.task = task

    def map(self, items: Sequence[Any], *, key: Callable[[Any], str], batch_size: int) -> Iterator[Any]:
        for batch in batches(items, batch_size):
            yield from self.task.run(batch)

    def finish(self) -> list[Any]:
        return []  # a batch runs within map: none is left in flight

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalKeyedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalServiceHandle:
    """Calls an object of this process, as :class:`~curation.engine.ray_executor.RayServiceHandle`
    calls one beside a cluster's driver."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.service, method)(*args)
