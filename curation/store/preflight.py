"""Before a stage starts work: can this machine write, read and delete in the image store?

One small object goes next to the image prefix (``<parent>/_curation-preflight/<node>-<token>``,
never among the images), is read back and deleted. A listing of that folder comes first, so a
missing bucket is named as such (SeaweedFS, given Admin rights, creates a bucket on the first PUT).
The driver runs it now; on Ray each node will run it with its own credentials.
"""

from __future__ import annotations

import contextlib
import re
import uuid

from curation.errors import CurationError
from curation.store.base import ImageStore, StoreError

PREFLIGHT_FOLDER = "_curation-preflight"


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
