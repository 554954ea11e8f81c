"""Whether the Hugging Face hub can be reached, asked without importing torch (importing
:mod:`curation.inference` takes ~4 s here), so a stage that may not need a model decides at once."""

from __future__ import annotations


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) accepts a TCP connection within ``timeout``
    seconds; False at once in offline mode (``HF_HUB_OFFLINE=1``)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    parts = urlsplit(constants.ENDPOINT)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False
