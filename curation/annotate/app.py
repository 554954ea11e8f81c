"""The review web app (Flask): the grid and one-by-one pages over ``/api/v1`` (``api_v1.py``, their
only API), images by catalog id, and its safety rails.

Safety: the server answers only to loopback Host names when bound to loopback (no DNS
rebinding); with a token every request must carry it (query once, then an HttpOnly cookie,
or the ``X-Curation-Token`` header); every POST needs the session's CSRF token; templates
autoescape and data reaches the page only as escaped text or as ``tojson``; a strict
Content-Security-Policy forbids inline scripts; images are looked up by SHA-256 only.
The session cookie is signed with a secret kept in the catalog (``catalog_meta``), so a restart
keeps annotators signed in; ``rotate_session_secret`` signs everyone out.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Flask, Response, abort, jsonify, redirect, render_template, request, send_file, session, url_for
from sqlalchemy.exc import IntegrityError
from werkzeug.exceptions import HTTPException

from curation.annotate.agreement import VOTE_VERDICTS, agreement_stats, conflicts
from curation.annotate.api_v1 import SESSION_ENDPOINT, create_api, csrf_token
from curation.annotate.consensus import Rule
from curation.annotate.possible import attach
from curation.annotate.progress import remaining
from curation.annotate.queue import CENTRE_CROP_FRACTION, describe, is_sha256, is_wnid, pair_exists
from curation.annotate.votes import MAX_NOTE, check_annotator
from curation.catalog import Catalog, Image, Meta
from curation.errors import CurationError
from curation.kinds import catalog_kind
from curation.store.base import StoreError
from curation.store.reader import ImageReader, ReadFailed, local_reader

BATCH = 20
TOKEN_COOKIE = "curation_token"
TOKEN_HEADER = "X-Curation-Token"
CSRF_HEADER = "X-CSRF-Token"
SECRET_META_KEY = "annotate:session_secret"  # catalog_meta key: hex of the session-signing secret
SECRET_BYTES = 32
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
MIME_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "AVIF": "image/avif",
}
# Verdict -> (key, label) on the page; the keyboard handler in static/annotate.js uses the same keys.
VERDICT_UI = {
    "accept": ("a", "accept"),
    "wrong_class": ("w", "wrong class"),
    "ambiguous": ("m", "ambiguous / several objects"),
    "low_quality": ("q", "low quality / not a photo"),
    "inappropriate": ("x", "inappropriate"),
    "duplicate": ("d", "duplicate: a copy of another image"),
    "skip": ("s", "skip"),
}
IN_DISTRIBUTION_UI = ("i", "in-distribution (an ImageNet-1k class)")


def kind_verdict_ui(kind: Any) -> dict[str, tuple[str, str]]:
    """The verdict buttons of a dataset kind: ImageNet-O adds "in-distribution" (a reject) before skip."""
    if not kind.in_distribution_key:
        return VERDICT_UI
    ui = {k: v for k, v in VERDICT_UI.items() if k != "skip"}
    return {**ui, "in_distribution": IN_DISTRIBUTION_UI, "skip": VERDICT_UI["skip"]}


CSP = (
    "default-src 'none'; img-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _decode_secret(value: str) -> bytes:
    try:
        secret = bytes.fromhex(value)
    except ValueError:
        secret = b""
    if len(secret) != SECRET_BYTES:
        raise CurationError(
            f"catalog_meta {SECRET_META_KEY} is not {SECRET_BYTES} hex bytes: run `curation annotate serve --new-secret`"
        )
    return secret


def session_secret(catalog: Catalog) -> bytes:
    """The catalog's session-signing secret, created on first use. Insert-if-absent then re-read, so
    servers starting together on one catalog all end up with the same secret."""
    with catalog.session() as s:
        row = s.get(Meta, SECRET_META_KEY)
        if row is not None:
            return _decode_secret(row.value)
    try:
        with catalog.session() as s:
            s.add(Meta(key=SECRET_META_KEY, value=secrets.token_hex(SECRET_BYTES)))
    except IntegrityError:
        pass  # another server stored one first: use that
    with catalog.session() as s:
        return _decode_secret(s.get(Meta, SECRET_META_KEY).value)


def rotate_session_secret(catalog: Catalog) -> None:
    """Replace the catalog's session secret: every review session (name, CSRF token) becomes invalid."""
    with catalog.session() as s:
        s.merge(Meta(key=SECRET_META_KEY, value=secrets.token_hex(SECRET_BYTES)))


@dataclass
class ReviewConfig:
    """What one review server needs."""

    catalog: Catalog
    data_dir: Path
    bind_host: str = "127.0.0.1"
    images: ImageReader | None = None  # the image store; None: the folder data_dir/images
    votes_needed: int = 1
    token: str | None = None
    default_annotator: str | None = None
    crop_fraction: float = CENTRE_CROP_FRACTION
    grid_size: int = 48  # thumbnails per grid page ([annotate] grid_size)
    order: str = "hash"  # the legacy flow; `curation annotate serve` passes [annotate] order (learned)
    consensus: str = "fixed"  # likewise: [annotate] consensus (dynamic)


def create_app(cfg: ReviewConfig) -> Flask:
    """The Flask app for one catalog."""
    if not is_loopback(cfg.bind_host) and not cfg.token:
        raise CurationError(f"refusing to serve on {cfg.bind_host} without --token (any non-loopback host needs one)")
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=session_secret(cfg.catalog),
        SESSION_COOKIE_NAME="curation_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        MAX_CONTENT_LENGTH=64 * 1024,
        JSON_SORT_KEYS=False,
    )
    images = cfg.images or local_reader(cfg.data_dir)
    with cfg.catalog.session() as s:
        kind = catalog_kind(s)
    verdict_ui = kind_verdict_ui(kind)
    rule = Rule(cfg.consensus, cfg.votes_needed)  # as the API's: the pages count what it serves
    allowed_hosts = LOOPBACK_HOSTS | {cfg.bind_host.strip("[]")} if is_loopback(cfg.bind_host) else None

    def annotator() -> str | None:
        return session.get("annotator") or cfg.default_annotator

    def same(a: str | None, b: str | None) -> bool:
        return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())

    @app.before_request
    def guard() -> Response | None:
        hostname = urlsplit("//" + request.host).hostname or ""
        if allowed_hosts is not None and hostname not in allowed_hosts:
            abort(400, f"unexpected Host {request.host!r}: open the page through 127.0.0.1")
        if cfg.token:
            supplied = (
                request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE) or request.args.get("token")
            )
            if not same(supplied, cfg.token):
                abort(403, "this server needs its token: open the URL it printed")
            if "token" in request.args and request.method == "GET":
                # Keep the token out of the address bar and history: move it into a cookie.
                rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
                response = redirect(request.path + ("?" + urlencode(rest) if rest else ""))
                response.set_cookie(TOKEN_COOKIE, cfg.token, httponly=True, samesite="Strict")
                return response
        if (
            request.method == "POST"
            and request.endpoint != SESSION_ENDPOINT
            and not same(request.headers.get(CSRF_HEADER) or request.form.get("csrf_token"), session.get("csrf"))
        ):
            abort(400, "missing or stale CSRF token: reload the page")
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if request.endpoint not in ("image", "static"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        message = exc.description or exc.name
        if request.path.startswith("/api/"):
            response = jsonify(ok=False, error=message)
        else:
            response = Response(f"{exc.code} {exc.name}: {message}\n", mimetype="text/plain")
        response.status_code = exc.code or 500
        return response

    @app.context_processor
    def common() -> dict[str, Any]:
        return {"csrf": csrf_token(), "annotator": annotator(), "votes_needed": cfg.votes_needed}

    def parse_pair(text: str) -> tuple[str, str]:
        sha, _, wnid = text.partition(":")
        if not (is_sha256(sha) and is_wnid(wnid)):
            abort(400, "a pair is written SHA256:WNID")
        return sha, wnid

    app.register_blueprint(
        create_api(
            cfg.catalog,
            votes_needed=cfg.votes_needed,
            verdicts=list(verdict_ui),
            default_annotator=cfg.default_annotator,
            crop_fraction=cfg.crop_fraction,
            order=cfg.order,
            consensus=cfg.consensus,
        )
    )

    def page(template: str, mode: str) -> Any:
        """A review page: the items come from ``/api/v1/next`` (the page's script asks), except the
        one pair of ``?pair=`` (from the conflicts list, whatever its votes), shown in single mode."""
        if "annotator" in request.args:
            try:
                session["annotator"] = check_annotator(request.args["annotator"])
            except CurationError as exc:
                abort(400, str(exc))
            rest = [(k, v) for k, v in request.args.items(multi=True) if k != "annotator"]
            return redirect(request.path + ("?" + urlencode(rest) if rest else ""))
        name = annotator()
        if not name:
            return render_template("name.html", next_page=request.endpoint)
        wnid = request.args.get("wnid") or None
        if wnid is not None and not is_wnid(wnid):
            abort(400, "wnid must look like n01498041")
        boot: dict[str, Any] = {"mode": mode, "wnid": wnid, "verdicts": list(verdict_ui), "items": []}
        with cfg.catalog.session() as s:
            if mode == "single" and request.args.get("pair"):
                pair = parse_pair(request.args["pair"])
                boot["items"] = describe(s, [pair] if pair_exists(s, *pair) else [], name, cfg.crop_fraction)
                attach(s, boot["items"])
                boot.update(pair=True, remaining=len(boot["items"]))
            else:  # once per page load: exact, from the maintained counts
                boot["remaining"] = remaining(s, name, rule, wnid)
        boot.update(batch=BATCH, grid_size=cfg.grid_size, crop_fraction=cfg.crop_fraction)
        first = boot["items"][0] if boot["items"] else None
        return render_template(
            template, boot=boot, first=first, verdict_ui=verdict_ui, question=kind.review_question, max_note=MAX_NOTE
        )

    @app.get("/")
    def review() -> Any:
        return page("review.html", "single")

    @app.get("/grid")
    def grid() -> Any:
        return page("grid.html", "grid")

    @app.post("/name")
    def set_name() -> Any:
        try:
            session["annotator"] = check_annotator(request.form.get("annotator", ""))
        except CurationError as exc:
            abort(400, str(exc))
        back = request.form.get("next")  # the page that asked for the name: an endpoint, never a URL
        return redirect(url_for(back if back in ("grid", "review") else "review"))

    @app.get("/image/<sha256>")
    def image(sha256: str) -> Any:
        if not is_sha256(sha256):
            abort(404, "images are named by their SHA-256")
        with cfg.catalog.session() as s:
            row = s.get(Image, sha256)
            if row is None:
                abort(404, "no such image in the catalog")
            rel_path, fmt = row.path, row.format
        try:  # the key comes from the catalog's row; a ".." segment is no key, so nothing outside is served
            data = images.ref(rel_path).read()
        except StoreError:  # missing, or a row whose path is no key
            abort(404, "the image is not in the image store")
        except ReadFailed:
            abort(503, "the image store cannot be read now")
        mimetype = MIME_TYPES.get((fmt or "").upper(), "application/octet-stream")
        return send_file(io.BytesIO(data), mimetype=mimetype, etag=sha256, max_age=31536000)

    @app.get("/stats")
    def stats() -> Any:
        with cfg.catalog.session() as s:
            numbers = agreement_stats(s)
            left = remaining(s, annotator(), rule) if annotator() else None
        return render_template("stats.html", stats=numbers, remaining=left, verdicts=VOTE_VERDICTS)

    @app.get("/conflicts")
    def conflict_list() -> Any:
        with cfg.catalog.session() as s:
            rows = conflicts(s)
        return render_template("conflicts.html", rows=rows)

    return app


def make_server(app: Flask, host: str, port: int) -> Any:
    """A threaded WSGI server bound to (host, port); port 0 picks a free one. No line per request."""
    import logging

    from werkzeug.serving import make_server as werkzeug_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    return werkzeug_server(host, port, app, threaded=True)


@contextmanager
def serving_in_thread(cfg: ReviewConfig, host: str = "127.0.0.1") -> Iterator[str]:
    """The review server for ``cfg`` on a free port of ``host``, in a thread; yields its base URL (for
    scripts, benchmarks and tests that drive the pages or the v1 API in-process)."""
    server = make_server(create_app(cfg), host, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
