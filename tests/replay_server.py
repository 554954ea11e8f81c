"""A real HTTP server on 127.0.0.1 for the crawl tests and benchmark.

It replays API responses that were really recorded (``../shared/sources/fixtures``) with every
image URL in them rewritten to itself, serves real JPEG bytes from ``../shared/images`` (made
unique per URL by a JPEG comment), and misbehaves on request: HTML bodies, truncated bodies,
redirect loops, 404, 429 with ``Retry-After``, slow answers, oversized bodies, robots.txt rules.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.conftest import FIXTURES, SAMPLES
from tests.crawl_images import with_comment

# Hosts whose URLs inside recorded responses are rewritten to the replay server.
IMAGE_HOSTS = (
    "static.inaturalist.org",
    "inaturalist-open-data.s3.amazonaws.com",
    "live.staticflickr.com",
    "thumb.wikimedia.org",
    "upload.wikimedia.org",
)
URL = re.compile(r"https?://(" + "|".join(re.escape(h) for h in IMAGE_HOSTS) + r")/")


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the status line
    content_length: int | None = None  # lie about the length (then close the connection)
    chunked: bool = False


Handler = Callable[[str, dict[str, list[str]]], Reply]


def fixture(path: str) -> Any:
    """A recorded fixture file, parsed."""
    return json.loads((FIXTURES / path).read_text())


def rewrite(document: Any, base: str) -> Any:
    """``document`` with every image-host URL pointing at ``base/<host>/...``."""
    return json.loads(URL.sub(lambda m: f"{base}/{m.group(1)}/", json.dumps(document)))


def photo_for(key: str, photos: list[Path] | None = None) -> bytes:
    """Real JPEG bytes, unique to ``key``: a shared photo chosen by ``key`` plus a comment naming it."""
    photos = photos or sorted(SAMPLES.glob("*.JPEG"))
    index = int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(photos)
    return with_comment(photos[index].read_bytes(), key)


class QuietServer(ThreadingHTTPServer):
    """Clients that hang up early (byte caps, timeouts) are expected here, not errors."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class ReplayServer:
    """A threaded HTTP server on 127.0.0.1 with routes added by tests; records every request."""

    def __init__(self, latency: float = 0.0) -> None:
        self.routes: dict[str, Handler] = {}
        self.prefixes: list[tuple[str, Handler]] = []
        self.requests: list[tuple[float, str, dict[str, str]]] = []
        self.latency = latency
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = QuietServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.request_queue_size = 256
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> ReplayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def route(self, path: str, handler: Handler | Reply) -> None:
        """Answer ``path`` (exact) with a handler or a fixed reply."""
        self.routes[path] = handler if callable(handler) else (lambda _p, _q, r=handler: r)

    def prefix(self, prefix: str, handler: Handler) -> None:
        """Answer every path under ``prefix``."""
        self.prefixes.append((prefix, handler))

    def serve_images(self) -> None:
        """Serve a unique real JPEG for every URL on the rewritten image hosts."""
        for host in IMAGE_HOSTS:
            self.prefix(f"/{host}/", lambda path, _q: Reply(body=photo_for(path), headers=JPEG))

    def hits(self, path: str) -> list[float]:
        """When ``path`` was requested."""
        with self._lock:
            return [t for t, p, _h in self.requests if p == path]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                parts = urlsplit(self.path)
                with server._lock:
                    server.requests.append((time.monotonic(), parts.path, dict(self.headers)))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                handler = server.routes.get(parts.path) or next(
                    (h for p, h in server.prefixes if parts.path.startswith(p)), None
                )
                reply = handler(parts.path, parse_qs(parts.query)) if handler else Reply(404, b"not found")
                time.sleep(server.latency + reply.delay)
                with server._lock:
                    # Before the reply: once it has arrived the client may send its next request,
                    # which must not overlap this one in the count.
                    server.in_flight -= 1
                try:
                    self._send(reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, reply: Reply) -> None:
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                if reply.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(reply.body), 65536):
                        piece = reply.body[start : start + 65536]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                length = len(reply.body) if reply.content_length is None else reply.content_length
                self.send_header("Content-Length", str(length))
                if reply.content_length is not None:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(reply.body)

        return Handler


JPEG = {"Content-Type": "image/jpeg"}
JSON = {"Content-Type": "application/json"}


def json_reply(document: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(document).encode(), dict(JSON))


INAT_RESULT_CAP = 10_000  # the API's page * per_page limit (Elasticsearch's max_result_window)


def inat_observations(observations: list[dict[str, Any]], taxon_id: str, cap: int = INAT_RESULT_CAP) -> Handler:
    """``GET /v1/observations`` over recorded-shape ``observations``, as the real API pages them.

    ``page * per_page`` past ``cap`` is refused: the API keeps Elasticsearch's 10,000-record result
    window and, since iNaturalistAPI#134, answers with an error status and message rather than a
    500 (sources.md records no such body; this is the API's ``{"error", "status"}`` shape, 403).
    ``order_by=id`` sorts by id (``order`` asc or desc; otherwise newest first) and ``id_above`` /
    ``id_below`` filter, with ``total_results`` counting what matches this request.
    """

    def handle(_path: str, q: dict[str, list[str]]) -> Reply:
        if q.get("taxon_id") != [taxon_id]:
            return json_reply({"error": f"Unknown taxon_id {q.get('taxon_id')}", "status": 422}, 422)
        page, per_page = int(q.get("page", ["1"])[0]), int(q.get("per_page", ["30"])[0])
        if page * per_page > cap:
            message = f"You can only view the first {cap:,} results of a query; use id_above or id_below"
            return json_reply({"error": message, "status": 403}, 403)
        ascending = q.get("order_by") == ["id"] and q.get("order") == ["asc"]
        matching = sorted(observations, key=lambda o: o["id"], reverse=not ascending)
        if "id_above" in q:
            matching = [o for o in matching if o["id"] > int(q["id_above"][0])]
        if "id_below" in q:
            matching = [o for o in matching if o["id"] < int(q["id_below"][0])]
        results = matching[(page - 1) * per_page : page * per_page]
        return json_reply(
            {"total_results": len(matching), "page": page, "per_page": min(len(matching), per_page), "results": results}
        )

    return handle
