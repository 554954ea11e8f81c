"""The versioned JSON API under ``/api/v1/`` that scripts (and later the pages) drive.

``POST /api/v1/session`` names the annotator and returns the CSRF token (no HTML scraping);
``GET /api/v1/rules`` the consensus rule and order in force; ``GET /api/v1/next`` the next pairs in
the server's order (``serving.py``; never one the annotator already decided), each item with
``served_as`` (``more_votes``, ``random``, ``ranked`` or ``hash``), ``p_accept`` (the learned
order's score, else null) and ``possible_copies`` (``possible.py``: dedup's undecided near-copies of
the image, never links), plus ``remaining`` and ``estimated_remaining_accepts`` with its
``estimate`` object (``interval``, ``accept_rate``, ``sampled_votes``, ``basis``: ``progress.py``);
``POST /api/v1/decisions`` records a
list of verdicts, each atomically (``decide.py``), answering a per-item error for bad ones;
``POST /api/v1/undo {"ids": [...]}`` withdraws the annotator's own verdicts on those pairs (the
pages' undo of the last image or grid page), answering ``{"removed": n, "errors": [...]}``.
The app's guard applies as to every route (Host, token, CSRF), except that ``session`` needs no
CSRF token (it hands one out): it accepts only ``application/json`` bodies, which a cross-site
form cannot send, so another site cannot sign a browser in under a name of its choosing.

Whole-request errors are HTTP statuses with ``{"ok": false, "error"}`` (400 bad input or CSRF,
403 token, 409 no annotator, 415 session body not JSON). Per-item ``errors`` of a decisions
request carry ``index``, ``id``, ``code`` and ``error``; codes: ``bad_id``, ``bad_verdict``,
``bad_note``, ``repeated``, and from ``decide.py`` ``unknown_id``, ``not_reviewable``,
``complete`` (a stale page another reviewer finished), ``busy`` (send it again); an undo's
``bad_id``, ``repeated``, ``not_decided`` (no verdict of this annotator on the pair) and ``busy``.
"""

from __future__ import annotations

import secrets
from typing import Any

from flask import Blueprint, abort, jsonify, request, session
from sqlalchemy.exc import OperationalError

from curation.annotate import progress, serving
from curation.annotate.consensus import FIXED, Rule, adopt
from curation.annotate.decide import BUSY, ERROR_TEXT, decide, lock_pair
from curation.annotate.estimates import page_default
from curation.annotate.possible import attach
from curation.annotate.queue import SKIP, class_names, describe, is_sha256, is_wnid
from curation.annotate.votes import MAX_NOTE, check_annotator, undo_vote
from curation.catalog import Catalog
from curation.errors import CurationError

SESSION_ENDPOINT = "api_v1.start_session"  # the one POST the guard lets through without a CSRF token
MODES = ("single", "grid")
DEFAULT_LIMIT = 20  # the single-image page's batch
MAX_LIMIT = 100  # two 48-image grid pages (the ImageNet / ImageNetV2 page size)
MAX_DECISIONS = 100  # per request: a full page of MAX_LIMIT; 100 decisions with short notes fit the 64 KiB body limit


def csrf_token() -> str:
    """The session's CSRF token, created on first use."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def parse_id(value: Any) -> tuple[str, str] | None:
    """(sha256, wnid) of an id written ``SHA256:WNID``, else None."""
    if not isinstance(value, str):
        return None
    sha, _, wnid = value.partition(":")
    return (sha, wnid) if is_sha256(sha) and is_wnid(wnid) else None


class ItemError(Exception):
    """One decision refused: ``code`` for scripts, the message for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def report(self, index: int, raw_id: Any) -> dict[str, Any]:
        """The per-item error of item ``index`` whose id was ``raw_id``."""
        return {
            "index": index,
            "id": raw_id if isinstance(raw_id, str) else None,
            "code": self.code,
            "error": str(self),
        }


def parse_decision(item: Any, verdicts: list[str]) -> tuple[tuple[str, str], str, str]:
    """(pair, verdict, note) of one ``{"id", "verdict", "note"?}``, else ``ItemError``."""
    if not isinstance(item, dict) or (pair := parse_id(item.get("id"))) is None:
        raise ItemError("bad_id", "each decision is an object whose id is written SHA256:WNID")
    verdict, note = item.get("verdict"), item.get("note", "")
    if verdict not in verdicts:
        raise ItemError("bad_verdict", f"verdict must be one of {', '.join(verdicts)}")
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise ItemError("bad_note", f"note must be a string of at most {MAX_NOTE} characters")
    return pair, verdict, note


def rules(rule: Rule, order: str, verdicts: list[str]) -> dict[str, Any]:
    """The acceptance rule in force (``consensus.py``) and the serving order."""
    return {
        "consensus": rule.kind,
        "votes_needed": rule.votes_needed if rule.kind == FIXED else None,
        "accepts_needed": rule.votes_needed // 2 + 1 if rule.kind == FIXED else 1,
        "rule": rule.describe(),
        "order": order,
        "random_share": serving.RANDOM_SHARE if order == serving.LEARNED else 1.0,
        "verdicts": verdicts,
        "skip": SKIP,
        "skip_is_a_vote": False,
        "modes": list(MODES),
        "max_limit": MAX_LIMIT,
        "max_decisions": MAX_DECISIONS,
    }


def create_api(
    catalog: Catalog,
    *,
    votes_needed: int,
    verdicts: list[str],
    default_annotator: str | None,
    crop_fraction: float,
    order: str = serving.HASH,
    consensus: str = FIXED,
) -> Blueprint:
    """The ``/api/v1`` blueprint for one catalog (``verdicts``: the dataset kind's, in order); it makes
    the consensus rule the catalog's (``consensus.adopt``: a changed rule reopens the closed pairs)."""
    api = Blueprint("api_v1", __name__, url_prefix="/api/v1")
    rule = Rule(consensus, votes_needed)
    reject_verdict = next(v for v in verdicts if v not in ("accept", SKIP))
    with catalog.session() as s:
        adopt(s, rule)

    def annotator() -> str:
        name = session.get("annotator") or default_annotator
        return name or abort(409, 'no annotator: POST /api/v1/session {"annotator": NAME} first')

    @api.post("/session")
    def start_session() -> Any:
        if not request.is_json:
            abort(415, "send the annotator as application/json")
        body = request.get_json(silent=True)
        name = body.get("annotator") if isinstance(body, dict) else None
        if not isinstance(name, str):
            abort(400, 'expected {"annotator": NAME}')
        try:
            session["annotator"] = check_annotator(name)
        except CurationError as exc:
            abort(400, str(exc))
        return jsonify(ok=True, annotator=session["annotator"], csrf=csrf_token())

    @api.get("/rules")
    def get_rules() -> Any:
        return jsonify(ok=True, **rules(rule, order, verdicts))

    @api.get("/next")
    def get_next() -> Any:
        name = annotator()
        mode = request.args.get("mode", "single")
        wnid = request.args.get("wnid") or None
        limit_text = request.args.get("limit", str(DEFAULT_LIMIT))
        if mode not in MODES:
            abort(400, f"mode must be one of {', '.join(MODES)}")
        if wnid is not None and not is_wnid(wnid):
            abort(400, "wnid must look like n01498041")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            abort(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
        limit = int(limit_text)
        with catalog.session() as s:
            page: dict[str, Any] | None = None
            if mode == "grid":  # one class per page: the asked one, else that of the best pair left
                page_wnid = wnid or serving.top_class(s, name, order)
                served = serving.next_page(s, name, rule, order, limit, page_wnid) if page_wnid else serving.Page()
                if page_wnid:
                    scores = list(served.scores.values())
                    default = page_default(s, page_wnid, scores, served.state.trusted(), reject_verdict)
                    page = {
                        "wnid": page_wnid,
                        "class_name": class_names(s, {page_wnid})[page_wnid],
                        "default_verdict": default["verdict"],
                        "default_basis": default["basis"],
                        "remaining": progress.remaining(s, name, rule, page_wnid),
                    }
            else:
                served = serving.next_page(s, name, rule, order, limit, wnid)
            items = [
                {"id": f"{d['sha256']}:{d['wnid']}", "image": f"/image/{d['sha256']}", **d}
                for d in describe(s, served.pairs, name, crop_fraction)
            ]
            for item in items:  # never decided by this annotator: no vote of theirs to show
                del item["vote"], item["note"]
                pair = (item["sha256"], item["wnid"])
                item["served_as"] = served.how[pair]
                item["p_accept"] = served.scores.get(pair)
            attach(s, items)  # "possible copy of ...": one query for the page
            left = progress.remaining(s, name, rule, wnid)
            estimate = progress.accepts_left(served.state, left)
        return jsonify(
            ok=True,
            mode=mode,
            items=items,
            page=page,
            remaining=left,
            estimated_remaining_accepts=estimate["estimate"],
            estimate=estimate,
        )

    @api.post("/decisions")
    def post_decisions() -> Any:
        name = annotator()
        body = request.get_json(silent=True)
        decisions = body.get("decisions") if isinstance(body, dict) else None
        if not isinstance(decisions, list) or not 1 <= len(decisions) <= MAX_DECISIONS:
            abort(400, f'expected {{"decisions": [{{"id", "verdict", "note"?}}, ...]}} with 1 to {MAX_DECISIONS} items')
        recorded, errors, seen = 0, [], set()
        for index, item in enumerate(decisions):
            try:
                pair, verdict, note = parse_decision(item, verdicts)
                if pair in seen:
                    raise ItemError("repeated", "the same id twice in one request: the first one counts")
                seen.add(pair)
                try:
                    with catalog.session() as s:
                        code = decide(s, *pair, name, verdict, note, rule)
                except OperationalError:
                    code = BUSY
                if code is not None:
                    raise ItemError(code, ERROR_TEXT[code])
                recorded += 1
            except ItemError as exc:
                errors.append(exc.report(index, item.get("id") if isinstance(item, dict) else None))
        return jsonify(ok=True, recorded=recorded, errors=errors)

    @api.post("/undo")
    def post_undo() -> Any:
        name = annotator()
        body = request.get_json(silent=True)
        wanted = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(wanted, list) or not 1 <= len(wanted) <= MAX_DECISIONS:
            abort(400, f'expected {{"ids": ["SHA256:WNID", ...]}} with 1 to {MAX_DECISIONS} ids')
        removed, errors, seen = 0, [], set()
        for index, raw_id in enumerate(wanted):
            try:
                if (pair := parse_id(raw_id)) is None:
                    raise ItemError("bad_id", "each id is written SHA256:WNID")
                if pair in seen:
                    raise ItemError("repeated", "the same id twice in one request: the first one counts")
                seen.add(pair)
                if not withdraw(pair, name):
                    raise ItemError("not_decided", "this annotator has no verdict on the pair")
                removed += 1
            except ItemError as exc:
                errors.append(exc.report(index, raw_id))
        return jsonify(ok=True, removed=removed, errors=errors)

    def withdraw(pair: tuple[str, str], name: str) -> bool:
        """Remove ``name``'s verdict on ``pair`` under the pair's lock (as ``decide`` writes it)."""
        try:
            with catalog.session() as s:
                lock_pair(s, *pair)
                return undo_vote(s, *pair, name)
        except OperationalError:
            raise ItemError(BUSY, ERROR_TEXT[BUSY]) from None

    return api
