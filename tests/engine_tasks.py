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
