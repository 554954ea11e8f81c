"""Tasks for the engine tests, importable by worker processes and Ray workers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from curation.engine import Task


class SquareTask(Task):
    """Squares numbers; records the worker's pid and how often it was set up."""

    def __init__(self) -> None:
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1

    def run(self, batch: Sequence[int]) -> list[tuple[int, int, int, int]]:
        return [(n, n * n, os.getpid(), self.setups) for n in batch]


class GpuTask(SquareTask):
    resource = "gpu"

    def run(self, batch: Sequence[int]) -> list[Any]:
        import ray

        return [(n, ray.get_runtime_context().get_node_id(), ray.get_gpu_ids()) for n in batch]


class WhereTask(Task):
    """Where each item ran: (item, node id, pid, setups)."""

    def __init__(self) -> None:
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1

    def run(self, batch: Sequence[int]) -> list[tuple[int, str, int, int]]:
        import time

        import ray

        time.sleep(0.05)  # long enough that both nodes get batches
        node = ray.get_runtime_context().get_node_id()
        return [(n, node, os.getpid(), self.setups) for n in batch]


class BrokenSetupTask(Task):
    """A task whose worker cannot start."""

    def setup(self) -> None:
        raise OSError("no such mount")

    def run(self, batch: Sequence[int]) -> list[int]:
        return list(batch)


def _where() -> tuple[str, list[Any]]:
    """(Ray node id, GPU ids) of this worker; ("here", []) outside Ray."""
    import ray

    if not ray.is_initialized():
        return "here", []
    return ray.get_runtime_context().get_node_id(), [str(gpu) for gpu in ray.get_gpu_ids()]


class PrepareTask(Task):
    """A pipeline's first stage: a batch as one value, with where it was prepared."""

    def run(self, batch: Sequence[int]) -> dict[str, Any]:
        return {"items": list(batch), "node": _where()[0], "pid": os.getpid()}


class ModelTask(Task):
    """A pipeline's second stage on a GPU worker: per item (item, prepared on node, prepared by pid,
    scored on node, GPU ids, setups, scoring pid). With ``marker``, the worker scoring ``die_on``
    dies once (the marker file says it did), as on a lost node."""

    resource = "gpu"

    def __init__(self, marker: str | None = None, die_on: int = -1) -> None:
        self.marker, self.die_on, self.setups = marker, die_on, 0

    def setup(self) -> None:
        self.setups += 1

    def run(self, prepared: dict[str, Any]) -> list[tuple]:
        from pathlib import Path

        if self.marker and self.die_on in prepared["items"] and not Path(self.marker).exists():
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        node, gpus = _where()
        return [(n, prepared["node"], prepared["pid"], node, gpus, self.setups, os.getpid()) for n in prepared["items"]]


class UnloadableModelTask(ModelTask):
    """A model task whose set-up fails, as with a checkpoint a node does not have."""

    def setup(self) -> None:
        raise ValueError("no weights here")
