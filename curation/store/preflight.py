"""Before a stage starts work: can this machine write, read and delete in the image store?

One small object goes next to the image prefix (``<parent>/_curation-preflight/<node>-<token>``,
never among the images), is read back and deleted. A listing of that folder comes first, so a
missing bucket is named as such (SeaweedFS, given Admin rights, creates a bucket on the first PUT).
The driver runs :func:`preflight`; on a cluster, :func:`preflight_nodes` then has every node read an
object the driver wrote (the same store: a local folder must be one shared mount) and run the same
check with its own credentials and endpoint.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from typing import Any

from curation.errors import CurationError
from curation.store.base import ImageStore, MissingObject, StoreError

PREFLIGHT_FOLDER = "_curation-preflight"
# Seconds a node gets beyond the store's retry time to answer (a worker starts in 1-3 s).
NODE_MARGIN_SECONDS = 60


def preflight(store: ImageStore, node: str = "driver") -> None:
    """Write, read back and delete one small object beside ``store``'s images; one line naming
    ``node``, the step and the reason if any step fails. Nothing is left behind on success."""
    check = store.beside(PREFLIGHT_FOLDER)
    token = uuid.uuid4().hex
    key = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', node)}-{token}"
    payload = f"curation preflight {token}\n".encode()
    step = "list"
    try:
        next(iter(check.list()), None)
        step = "write"
        check.put_if_absent(key, payload)
        step = "read"
        if check.get(key) != payload:
            raise StoreError(check.url, f"{key} read back other bytes than were written")
        step = "delete"
        check.delete(key)
    except StoreError as exc:
        if step in ("read", "delete"):
            with contextlib.suppress(StoreError):
                check.delete(key)
        raise CurationError(f"storage preflight failed on {node}: cannot {step} in {store.url}: {exc.reason}") from None


def preflight_nodes(store: ImageStore, cluster: Any, retry_seconds: float) -> None:
    """Every node of ``cluster`` (an :class:`~curation.engine.Executor`) reads an object the driver
    wrote and runs :func:`preflight` itself; the first failure is one line naming its node."""
    check = store.beside(PREFLIGHT_FOLDER)
    token = uuid.uuid4().hex
    key, payload = f"driver-{token}", f"curation preflight {token}\n".encode()
    try:
        check.put_if_absent(key, payload)
    except StoreError as exc:
        raise CurationError(
            f"storage preflight failed on the driver: cannot write in {store.url}: {exc.reason}"
        ) from None
    try:
        answers = cluster.each_node(
            check_node, store.url, retry_seconds, key, payload, timeout=retry_seconds + NODE_MARGIN_SECONDS
        )
    finally:
        with contextlib.suppress(StoreError):
            check.delete(key)
    for _node, problem in answers:
        if problem is not None:
            raise CurationError(problem)


def check_node(node: str, url: str, retry_seconds: float, key: str, payload: bytes) -> str | None:
    """On a node: None if it sees the driver's object ``key`` and passes :func:`preflight`, else the
    line saying why not."""
    from curation.store.location import open_store

    try:
        store = open_store(url, retry_seconds)
        try:
            seen = store.beside(PREFLIGHT_FOLDER).get(key)
        except MissingObject:
            seen = None
        except StoreError as exc:
            return f"storage preflight failed on {node}: cannot read in {url}: {exc.reason}"
        if seen != payload:
            return (
                f"storage preflight failed on {node}: it does not see the driver's objects in {url}; every node "
                "needs the same store (a local folder: one shared mount at the same path)"
            )
        preflight(store, node)
    except CurationError as exc:
        text = str(exc)
        return text if text.startswith("storage preflight failed") else f"storage preflight failed on {node}: {text}"
    return None
