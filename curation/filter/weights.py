"""Which weights a run will load, known without torch: the SHA-256 of the file the loader reads (the
checkpoint, or the hub cache's file) maps to the state-dict hash that a real load measured once.

A full run records both in ``catalog_meta`` after loading a model; a later run reads the file's bytes
again (0.09 s for ResNet-50's 100 MB here) and, when the pair is known, has the model's weights hash
without importing torch or timm (4.3 s and ~1 GB on this machine). Unknown files answer None: the
run then loads the model as before.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SOURCE_KEY = "filter-src:"  # + sha256(model name): where the hub weights of a model come from
WEIGHTS_KEY = "filter-weights:"  # + sha256(model name, file digest): the weights hash they load as


def _key(prefix: str, *parts: str) -> str:
    return prefix + hashlib.sha256("|".join(parts).encode()).hexdigest()[:40]


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read once per process while the file keeps its size and mtime (a run
    with work asks twice: for "nothing to do", then to record the weights it loaded)."""
    st = Path(path).stat()
    return _digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.cache
def _digest(path: str, _size: int, _mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub."""
    home = os.getenv("TORCH_HOME") or os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub"


def cached_hub_file(source: dict[str, Any]) -> Path | None:
    """The local file timm's pretrained loader would read for ``source`` (the model's ``url``,
    ``hf_hub_id`` and ``hf_hub_filename``), in its order: a torch-hub cached file of the URL first,
    then the Hugging Face cache (safetensors before pickles); None when neither is cached."""
    url = source.get("url")
    if url:
        path = _torch_hub_dir() / "checkpoints" / os.path.basename(urlsplit(url).path)
        if path.is_file():
            return path
    hub_id = source.get("hf_hub_id")
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = hub_id.partition("@")
    names = [source["hf_hub_filename"]] if source.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
    for name in names:
        found = try_to_load_from_cache(repo, name, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    return None


def _weights_file(session: Any, name: str, checkpoint: str | None) -> Path | None:
    from curation.catalog import Meta

    if checkpoint is not None:
        return Path(checkpoint) if Path(checkpoint).is_file() else None
    meta = session.get(Meta, _key(SOURCE_KEY, name))
    return cached_hub_file(json.loads(meta.value)) if meta is not None else None


def known_weights_hash(session: Any, name: str, checkpoint: str | None) -> str | None:
    """The weights hash model ``name`` would load with, if a run recorded its file's bytes; else None."""
    from curation.catalog import Meta

    path = _weights_file(session, name, checkpoint)
    if path is None:
        return None
    meta = session.get(Meta, _key(WEIGHTS_KEY, name, file_digest(path)))
    return json.loads(meta.value)["weights_hash"] if meta is not None else None


def remember_weights(session: Any, loaded: Any, checkpoint: str | None) -> None:
    """Record which file a loaded model's weights came from and the hash they loaded as."""
    from curation.catalog import Meta

    if checkpoint is None:
        cfg = dict(getattr(loaded.model, "pretrained_cfg", None) or {})
        source = {k: cfg.get(k) for k in ("url", "hf_hub_id", "hf_hub_filename")}
        session.merge(Meta(key=_key(SOURCE_KEY, loaded.name), value=json.dumps({"model": loaded.name, **source})))
        path = cached_hub_file(source)
    else:
        path = Path(checkpoint)
    if path is None or not path.is_file():
        return
    digest = file_digest(path)
    value = {"model": loaded.name, "file_sha256": digest, "weights_hash": loaded.weights_hash}
    session.merge(Meta(key=_key(WEIGHTS_KEY, loaded.name, digest), value=json.dumps(value)))
