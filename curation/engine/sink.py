"""The driver-side sink: records from the workers, committed in batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

# 500 rows or 1 s per transaction: SQLite commits ~2,000 small transactions/s on this disk, so the
# commit costs < 1 % of a batch's time while a killed run loses at most a second of work.
COMMIT_ROWS = 500
COMMIT_SECONDS = 1.0


class Sink:
    """Collects records and hands them to ``write`` (one transaction) every ``rows`` records or
    ``seconds``. A task may run twice after a retry: with ``key``, a record whose key was already
    taken is dropped, so each key is written once."""

    def __init__(
        self,
        write: Callable[[list[Any]], None],
        *,
        key: Callable[[Any], Hashable] | None = None,
        rows: int = COMMIT_ROWS,
        seconds: float = COMMIT_SECONDS,
    ) -> None:
        self.write = write
        self.key = key
        self.rows = rows
        self.seconds = seconds
        self.pending: list[Any] = []
        self.taken: set[Hashable] = set()
        self.last_commit = time.monotonic()
        self.written = 0

    def add(self, record: Any) -> bool:
        """Queue ``record``; False when its key was taken already (the record is dropped)."""
        if self.key is not None:
            key = self.key(record)
            if key in self.taken:
                return False
            self.taken.add(key)
        self.pending.append(record)
        if len(self.pending) >= self.rows or time.monotonic() - self.last_commit >= self.seconds:
            self.flush()
        return True

    def flush(self) -> None:
        self.last_commit = time.monotonic()
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        self.write(batch)
        self.written += len(batch)

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
