"""Execution engines: one scheduling loop per stage, swappable executors.

A stage describes its work as a picklable :class:`~curation.engine.base.Task` (set up once per
worker: open an HTTP pool, load a model; then called per batch of items), hands it to an
:class:`~curation.engine.base.Executor` and feeds what comes back to a driver-side
:class:`~curation.engine.sink.Sink`, the catalog's only writer. Workers never open the catalog.

Back-ends are registered in :data:`EXECUTORS` (``kind -> "module:Class"``): a new one is one module
plus one line here. ``[engine] kind = "local" | "ray"`` and ``address`` choose, as do the global flags
``--engine`` and ``--ray-address``. A back-end's module is imported only when chosen (Ray's import
alone takes seconds).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation import options
from curation.engine.base import Executor, Task
from curation.engine.sink import Sink

__all__ = ["EXECUTORS", "EngineOptions", "Executor", "Sink", "Task", "open_cluster", "open_executor"]

EXECUTORS = {
    "local": "curation.engine.local:LocalExecutor",
    "ray": "curation.engine.ray_executor:RayExecutor",
}


@options.table("engine")
@dataclass(frozen=True)
class EngineOptions:
    """The ``[engine]`` table; ``--engine`` and ``--ray-address`` win."""

    kind: str = "local"
    address: str = "auto"  # Ray: "auto" (the cluster `ray start` made on this machine) or HOST:PORT

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ValueError(f"[engine] kind must be one of {', '.join(EXECUTORS)}, not {self.kind!r}")


def open_executor(settings: Any, data_dir: Path | None = None) -> Executor:
    """The executor the settings choose, connected and checked (a cluster's nodes must all see
    ``data_dir``); a problem is one :class:`CurationError` line before any work starts."""
    opts = options.resolve(EngineOptions, settings, getattr(settings, "engine_flags", None))
    module_name, _, class_name = EXECUTORS[opts.kind].partition(":")
    executor_class = getattr(importlib.import_module(module_name), class_name)
    return executor_class.connect(opts, data_dir)


def open_cluster(settings: Any, data_dir: Path | None = None) -> Executor | None:
    """The executor of a cluster engine; None for the local engine, with which a stage keeps its own
    tuned loop (crawl's two thread pools, the filter's DataLoader) in this process."""
    opts = options.resolve(EngineOptions, settings, getattr(settings, "engine_flags", None))
    return None if opts.kind == "local" else open_executor(settings, data_dir)
