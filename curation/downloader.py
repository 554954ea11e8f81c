"""Polite, concurrent, guarded HTTP fetching.

* Every connection goes through :mod:`curation.netguard`: the host is resolved, each address
  checked, and the socket connected to the checked address (so DNS rebinding cannot sneak past),
  on the first request and on every redirect hop.
* Few connections per host (``crawl.per_host``) and an optional per-host request rate
  (``crawl.per_host_rate``, requests/s, raised by a robots.txt ``Crawl-delay``).
* 429/5xx are retried with exponential backoff and jitter; ``Retry-After`` (seconds or an HTTP
  date) is honoured and pauses the whole host.
* Connect/read/total timeouts, a streaming byte cap, a descriptive User-Agent with a contact,
  robots.txt for image hosts and the ``X-Robots-Tag: noai``/``noimageai`` opt-out.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import Retry, Timeout, connection

from curation import __version__, options
from curation.netguard import AddressGuard, BlockedAddress, ResolutionFailed

UA_TOKEN = "curation-crawler"
REDIRECTS = (301, 302, 303, 307, 308)
RETRY_STATUSES = (429, 500, 502, 503, 504)
ROBOTS_MAX_BYTES = 512 * 1024
CHUNK = 64 * 1024
# Django REST framework's throttle message (Openverse), for 429s that come without Retry-After.
THROTTLE_HINT = re.compile(r"available in (\d+) seconds")


class FetchError(Exception):
    """A URL that could not be fetched; ``reason`` is a short code for the catalog."""

    def __init__(self, reason: str, detail: str = "", *, body: bytes = b"", retry_after: float | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.body = body
        self.retry_after = retry_after


@dataclass
class Fetched:
    """A fetched body and where it finally came from."""

    data: bytes
    url: str
    content_type: str


@options.table("crawl", extra_keys=("timeout",))
@dataclass
class FetchConfig:
    """Politeness and safety limits, from the ``[crawl]`` table."""

    contact: str = ""
    user_agent: str = ""
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    total_timeout: float = 60.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    retries: int = 3
    backoff: float = 1.0
    max_retry_after: float = 120.0
    per_host: int = 2
    per_host_rate: float = 0.0
    respect_robots: bool = True
    disallowed_directives: tuple[str, ...] = ("noai", "noimageai")
    allow_private_hosts: bool | list[str] = False

    @classmethod
    def from_settings(cls, crawl: dict[str, Any]) -> FetchConfig:
        """Read the ``[crawl]`` table, keeping defaults for what it does not set."""
        config = cls()
        for key in cls.__dataclass_fields__:
            if key in crawl:
                value = crawl[key]
                setattr(config, key, tuple(value) if key == "disallowed_directives" else value)
        if "timeout" in crawl:
            config.total_timeout = float(crawl["timeout"])
            config.read_timeout = min(config.read_timeout, config.total_timeout)
            config.connect_timeout = min(config.connect_timeout, config.total_timeout)
        return config

    def agent(self) -> str:
        """The User-Agent: who we are and how to reach the operator."""
        if self.user_agent:
            return self.user_agent
        contact = self.contact or "operator contact not configured: set [crawl] contact"
        return f"{UA_TOKEN}/{__version__} (ImageNet-A style dataset research; {contact}) urllib3/{urllib3.__version__}"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def robots_directives(values: list[str]) -> set[str]:
    """The directives of ``X-Robots-Tag`` headers, lower-cased (``bot: noai`` counts as ``noai``)."""
    tokens = set()
    for value in values:
        for part in value.split(","):
            tokens.update(part.strip().lower().rsplit(":", 1)[-1].split())
    return tokens


def guarded_pool_manager(guard: AddressGuard, **kwargs: Any) -> urllib3.PoolManager:
    """A urllib3 pool manager whose every new connection is resolved and checked by ``guard``."""

    def new_conn(self: HTTPConnection) -> socket.socket:
        addresses = guard.resolve(self.host, self.port)
        last: Exception | None = None
        for ip in addresses:
            try:
                return connection.create_connection(
                    (ip, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                last = ConnectTimeoutError(self, f"connect to {self.host} ({ip}) timed out")
                last.__cause__ = exc
            except OSError as exc:
                last = NewConnectionError(self, f"cannot connect to {self.host} ({ip}): {exc}")
        assert last is not None
        raise last

    http_conn = type("GuardedHTTPConnection", (HTTPConnection,), {"_new_conn": new_conn})
    https_conn = type("GuardedHTTPSConnection", (HTTPSConnection,), {"_new_conn": new_conn})
    manager = urllib3.PoolManager(**kwargs)
    manager.pool_classes_by_scheme = {
        "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }
    return manager


@dataclass
class _Host:
    """Per-host politeness state: connection slots, request spacing, robots.txt."""

    slots: threading.BoundedSemaphore
    interval: float
    next_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    robots_lock: threading.Lock = field(default_factory=threading.Lock)
    robots_loaded: bool = False
    robots: RobotFileParser | None = None

    def wait_turn(self) -> None:
        with self.lock:
            now = time.monotonic()
            at = max(now, self.next_at)
            self.next_at = at + self.interval
        if at > now:
            time.sleep(at - now)

    def pause(self, seconds: float) -> None:
        with self.lock:
            self.next_at = max(self.next_at, time.monotonic() + seconds)


class Downloader:
    """Fetches URLs politely and safely; thread-safe, meant to be shared by a pool of workers."""

    def __init__(self, config: FetchConfig, guard: AddressGuard | None = None) -> None:
        self.config = config
        self.guard = guard or AddressGuard(config.allow_private_hosts)
        self.headers = {"User-Agent": config.agent(), "Accept-Encoding": "gzip, deflate", "Accept": "*/*"}
        self.pool = guarded_pool_manager(
            self.guard, num_pools=512, maxsize=max(1, int(config.per_host)), block=False, headers=self.headers
        )
        self._hosts: dict[tuple[str, str, int | None], _Host] = {}
        self._hosts_lock = threading.Lock()
        self._rng = random.Random()

    # ------------------------------------------------------------------ public

    def fetch(
        self, url: str, *, polite: bool = True, headers: dict[str, str] | None = None, max_bytes: int | None = None
    ) -> Fetched:
        """GET ``url`` (following redirects), retrying 429/5xx; raises :class:`FetchError`.

        ``polite`` adds the image-host rules: robots.txt and the X-Robots-Tag opt-out (API
        calls are governed by the API's terms instead)."""
        attempt = 0
        while True:
            try:
                return self._fetch_once(url, polite, headers or {}, max_bytes or self.config.max_bytes)
            except FetchError as exc:
                if exc.retry_after is None or attempt >= self.config.retries:
                    raise
                wait = exc.retry_after
                if wait <= 0:
                    wait = self.config.backoff * 2**attempt * (0.5 + self._rng.random())
                if wait > self.config.max_retry_after:
                    raise FetchError(exc.reason, f"server asks to wait {wait:.0f}s", body=exc.body) from None
                self._host(urlsplit(url)).pause(wait)
                attempt += 1

    # ------------------------------------------------------------------ internals

    def _host(self, parts: Any) -> _Host:
        key = (parts.scheme, parts.hostname or "", parts.port)
        with self._hosts_lock:
            host = self._hosts.get(key)
            if host is None:
                rate = float(self.config.per_host_rate or 0)
                host = _Host(threading.BoundedSemaphore(max(1, int(self.config.per_host))), 1.0 / rate if rate else 0.0)
                self._hosts[key] = host
            return host

    def _fetch_once(self, url: str, polite: bool, headers: dict[str, str], max_bytes: int) -> Fetched:
        seen: set[str] = set()
        current = url
        for _hop in range(self.config.max_redirects + 1):
            if current in seen:
                raise FetchError("redirect_loop", current)
            seen.add(current)
            parts = urlsplit(current)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise FetchError("bad_scheme", current[:200])
            host = self._host(parts)
            if polite and self.config.respect_robots and not self._robots_allow(host, parts, current):
                raise FetchError("robots", current)
            with host.slots:
                host.wait_turn()
                response = self._request(current, headers)
                try:
                    if response.status in REDIRECTS:
                        location = response.headers.get("Location")
                        response.drain_conn()
                        if not location:
                            raise FetchError(f"http_{response.status}", "redirect without Location")
                        current = urljoin(current, location)
                        continue
                    return self._read(response, current, polite, max_bytes)
                finally:
                    response.release_conn()
        raise FetchError("too_many_redirects", url)

    def _request(self, url: str, headers: dict[str, str]) -> Any:
        timeout = Timeout(connect=self.config.connect_timeout, read=self.config.read_timeout)
        try:
            return self.pool.urlopen(
                "GET", url, headers={**self.headers, **headers}, redirect=False, retries=False,
                preload_content=False, timeout=timeout,
            )  # fmt: skip
        except BlockedAddress as exc:
            raise FetchError("private_address", str(exc)) from None
        except ResolutionFailed as exc:
            raise FetchError("dns_error", str(exc)) from None
        except NewConnectionError as exc:  # (a subclass of ConnectTimeoutError in urllib3 2)
            raise FetchError("connection_error", str(exc)) from None
        except (ConnectTimeoutError, ReadTimeoutError, TimeoutError) as exc:
            raise FetchError("timeout", str(exc)) from None
        except SSLError as exc:
            raise FetchError("tls_error", str(exc)) from None
        except (HTTPError, OSError) as exc:
            raise FetchError("connection_error", str(exc)) from None

    def _read(self, response: Any, url: str, polite: bool, max_bytes: int) -> Fetched:
        status = response.status
        if status >= 400:
            body = response.read(4096, decode_content=True) if status in (400, 401, 403, 429) else b""
            retry_after = None
            if status in RETRY_STATUSES:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                hint = THROTTLE_HINT.search(body.decode("utf-8", "replace")) if retry_after is None else None
                retry_after = float(hint.group(1)) if hint else retry_after or 0.0
            response.close()
            raise FetchError(f"http_{status}", body=body, retry_after=retry_after)
        if polite and self.config.disallowed_directives:
            opted_out = robots_directives(response.headers.getlist("X-Robots-Tag")) & set(
                self.config.disallowed_directives
            )
            if opted_out:
                response.close()
                raise FetchError("noai", ",".join(sorted(opted_out)))
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            response.close()
            raise FetchError("too_large", f"Content-Length {length} > {max_bytes}")
        deadline = time.monotonic() + self.config.total_timeout
        chunks, total = [], 0
        try:
            for chunk in response.stream(CHUNK, decode_content=True):
                total += len(chunk)
                if total > max_bytes:
                    raise FetchError("too_large", f"more than {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise FetchError("timeout", f"body not received within {self.config.total_timeout}s")
                chunks.append(chunk)
        except FetchError:
            response.close()
            raise
        except ReadTimeoutError as exc:
            response.close()
            raise FetchError("timeout", str(exc)) from None
        except ProtocolError as exc:
            response.close()
            raise FetchError("truncated", str(exc)) from None
        except DecodeError as exc:
            response.close()
            raise FetchError("corrupt", str(exc)) from None
        except (HTTPError, OSError) as exc:
            response.close()
            raise FetchError("connection_error", str(exc)) from None
        return Fetched(b"".join(chunks), url, response.headers.get("Content-Type", ""))

    def _robots_allow(self, host: _Host, parts: Any, url: str) -> bool:
        with host.robots_lock:
            if not host.robots_loaded:
                host.robots = self._load_robots(host, f"{parts.scheme}://{parts.netloc}/robots.txt")
                host.robots_loaded = True
        return host.robots is None or host.robots.can_fetch(UA_TOKEN, url)

    def _load_robots(self, host: _Host, robots_url: str) -> RobotFileParser | None:
        """The host's robots.txt (RFC 9309): 4xx or unreachable = no rules, 5xx = disallow all."""
        timeout = Timeout(connect=self.config.connect_timeout, read=self.config.read_timeout)
        try:
            response = self.pool.urlopen(
                "GET", robots_url, retries=Retry(total=5, connect=0, read=0, status=0, redirect=5),
                preload_content=False, timeout=timeout,
            )  # fmt: skip
            try:
                status = response.status
                body = response.read(ROBOTS_MAX_BYTES, decode_content=True) if status == 200 else b""
            finally:
                response.close()
                response.release_conn()
        except (HTTPError, OSError, BlockedAddress, ResolutionFailed):
            return None
        parser = RobotFileParser(robots_url)
        if status >= 500:
            parser.disallow_all = True
            return parser
        if status != 200:
            return None
        parser.parse(body.decode("utf-8", "replace").splitlines())
        delay = parser.crawl_delay(UA_TOKEN)
        if delay:
            host.interval = max(host.interval, min(float(delay), 30.0))
        return parser
