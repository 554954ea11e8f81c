"""The task and executor protocols every back-end implements."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol


class Task:
    """A picklable unit of work. An executor calls :meth:`setup` once per worker (process, thread
    or Ray actor) before the first batch, then :meth:`run` per batch. ``run`` returns one record per
    item, may run twice for one batch (after a worker died) and never touches the catalog."""

    # Resources one worker of this task holds: "cpu" (one core) or "gpu" (one accelerator; a
    # back-end without one falls back to a CPU worker).
    resource = "cpu"

    def setup(self) -> None:
        """Open what every batch reuses (an HTTP pool, a model)."""

    def run(self, batch: Sequence[Any]) -> list[Any]:
        """One record per item of ``batch``. As the first stage of :meth:`Executor.pipeline`, one
        value for the whole batch instead (e.g. its decoded images); as the second, ``batch`` is
        that value."""
        raise NotImplementedError


class Executor(Protocol):
    """Runs a :class:`Task` over items on some workers."""

    name: str

    def map(self, task: Task, items: Sequence[Any], *, batch_size: int, workers: int) -> Iterator[Any]:
        """Yield the records of every item, in any order, as batches finish. At most ``workers``
        workers (a cluster back-end may use each of its nodes' share); memory stays bounded by a
        few batches per worker in flight."""
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

    def close(self) -> None:
        """Stop the workers (a cluster itself stays up)."""
        ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...
