"""The versioned review API (/api/v1) over real HTTP on 127.0.0.1, on SQLite and PostgreSQL, with
real photos: session, rules, next (single and grid), decisions and their per-item errors, and two
or more annotators deciding one queue at once."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, insert, select
from test_annotate import ReviewCatalog, build_review_catalog, client, votes_in

from curation import catalog as cat
from curation.annotate import accuracy, consensus, ranker
from curation.annotate.app import ReviewConfig, serving_in_thread
from curation.annotate.progress import progress_line, review_progress
from curation.annotate.votes import record_vote


@pytest.fixture
def review(catalog_url: str, tmp_path: Path) -> ReviewCatalog:
    """The review catalog of test_annotate (8 queued photos, 3 set aside), widened to every queued
    photo under every queued photo's class: 64 pairs, 8 per class, on SQLite or PostgreSQL."""
    return widened(tmp_path, catalog_url)


def widened(tmp_path: Path, catalog_url: str | None = None) -> ReviewCatalog:
    """``review``'s catalog (SQLite in ``tmp_path`` unless ``catalog_url``)."""
    built = build_review_catalog(tmp_path, url=catalog_url)
    shas = sorted({sha for sha, _ in built.queue})
    wnids = sorted({wnid for _, wnid in built.queue})
    extra = [(sha, wnid) for sha in shas for wnid in wnids if (sha, wnid) not in built.queue]
    catalog = built.open()
    with catalog.session() as s:
        s.execute(
            insert(cat.FilterVerdict),
            [{"sha256": h, "wnid": w, "kept": True, "models": "[]", "keep_rule": "all-wrong"} for h, w in extra],
        )
    catalog.engine.dispose()
    built.queue = sorted(built.queue + extra)
    return built


def start(base: str, name: str) -> tuple[object, dict[str, str]]:
    """A client signed in as ``name`` through the API, and the CSRF header it must send."""
    http = client()
    response = http.post(base + "/api/v1/session", json={"annotator": name}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["annotator"] == name
    return http, {"X-CSRF-Token": response.json()["csrf"]}


def ids(pairs) -> list[str]:
    return [f"{sha}:{wnid}" for sha, wnid in pairs]


def test_session_next_and_decisions_round_trip(review):
    catalog = review.open()
    with serving_in_thread(ReviewConfig(catalog=catalog, data_dir=review.data_dir, votes_needed=2)) as base:
        http, csrf = start(base, "alice")
        rules = http.get(base + "/api/v1/rules", timeout=30).json()
        assert rules["votes_needed"] == 2 and rules["accepts_needed"] == 2 and rules["skip_is_a_vote"] is False
        assert "in_distribution" not in rules["verdicts"] and "accept" in rules["verdicts"]
        first = http.get(base + "/api/v1/next", params={"limit": 3}, timeout=30).json()
        assert [item["id"] for item in first["items"]] == ids(review.queue[:3])  # the server's (hash) order
        assert first["remaining"] == 64 and first["page"] is None
        assert first["estimated_remaining_accepts"] is None and "no vote yet" in first["estimate"]["basis"]
        assert {item["served_as"] for item in first["items"]} == {"hash"}
        item = first["items"][0]
        assert item["class_name"] and item["gloss"] and "vote" not in item
        photo = http.get(base + item["image"], timeout=30)
        assert photo.status_code == 200 and hashlib.sha256(photo.content).hexdigest() == item["sha256"]
        decided = http.post(
            base + "/api/v1/decisions",
            json={
                "decisions": [
                    {"id": first["items"][0]["id"], "verdict": "accept", "note": "a ray, photographed"},
                    {"id": first["items"][1]["id"], "verdict": "wrong_class"},
                    {"id": first["items"][2]["id"], "verdict": "skip"},
                ]
            },
            headers=csrf,
            timeout=30,
        ).json()
        assert decided == {"ok": True, "recorded": 3, "errors": []}
        after = http.get(base + "/api/v1/next", params={"limit": 100}, timeout=30).json()
        assert [item["id"] for item in after["items"]] == ids(review.queue[3:])  # never one already decided
        assert after["remaining"] == 61
        # one accept among two non-skip votes on pairs served in hash order (a random draw): half of the 61 left
        assert after["estimate"]["accept_rate"] == 0.5 and after["estimated_remaining_accepts"] == 30
        # bob still sees all: each pair needs two votes
        _bob, _ = start(base, "bob")
        assert len(_bob.get(base + "/api/v1/next", params={"limit": 100}, timeout=30).json()["items"]) == 64
    (s0, w0), (s1, w1), (s2, w2) = review.queue[:3]
    assert votes_in(catalog) == {
        (s0, w0, "alice", "accept"),
        (s1, w1, "alice", "wrong_class"),
        (s2, w2, "alice", "skip"),
    }
    with catalog.session() as s:
        assert s.scalar(select(cat.Annotation.note).where(cat.Annotation.verdict == "accept")) == "a ray, photographed"


def test_grid_pages_one_class_with_the_class_default(review):
    catalog = review.open()
    first_class = min(w for _, w in review.queue)
    in_class = [pair for pair in review.queue if pair[1] == first_class]
    with serving_in_thread(ReviewConfig(catalog=catalog, data_dir=review.data_dir, votes_needed=2)) as base:
        alice, alice_csrf = start(base, "alice")
        grid = alice.get(base + "/api/v1/next", params={"mode": "grid", "limit": 48}, timeout=30).json()
        assert grid["page"]["wnid"] == first_class and grid["page"]["default_verdict"] == "accept"
        assert "no votes" in grid["page"]["default_basis"] and grid["page"]["remaining"] == 8
        assert [item["id"] for item in grid["items"]] == ids(in_class)
        # bob calls most of the class wrong: alice's next page of it starts at wrong_class
        bob, bob_csrf = start(base, "bob")
        verdicts = ["wrong_class"] * 5 + ["accept"] * 2
        votes = [{"id": i, "verdict": v} for i, v in zip(ids(in_class), verdicts, strict=False)]
        assert (
            bob.post(base + "/api/v1/decisions", json={"decisions": votes}, headers=bob_csrf, timeout=30).json()[
                "recorded"
            ]
            == 7
        )
        again = alice.get(base + "/api/v1/next", params={"mode": "grid", "limit": 48}, timeout=30).json()
        assert again["page"]["default_verdict"] == "wrong_class" and "7 sampled votes" in again["page"]["default_basis"]
        assert again["estimate"]["accept_rate"] == pytest.approx(2 / 7)
        # alice finishes the class; her next grid page is the next class
        done = [{"id": i, "verdict": "accept"} for i in ids(in_class)]
        assert (
            alice.post(base + "/api/v1/decisions", json={"decisions": done}, headers=alice_csrf, timeout=30).json()[
                "recorded"
            ]
            == 8
        )
        later = alice.get(base + "/api/v1/next", params={"mode": "grid"}, timeout=30).json()
        assert later["page"]["wnid"] > first_class and all(i["wnid"] == later["page"]["wnid"] for i in later["items"])
        asked = alice.get(base + "/api/v1/next", params={"mode": "grid", "wnid": first_class}, timeout=30).json()
        assert asked["items"] == [] and asked["page"]["wnid"] == first_class and asked["remaining"] == 0


def test_v1_errors_are_per_item_and_lose_or_double_nothing(review):
    catalog = review.open()
    (s0, w0), (s1, w1), (s2, w2), (s3, w3) = review.queue[:4]
    with serving_in_thread(ReviewConfig(catalog=catalog, data_dir=review.data_dir, votes_needed=1)) as base:
        anonymous = client()
        assert anonymous.get(base + "/api/v1/next", timeout=30).status_code == 409  # no annotator yet
        # the session needs a JSON body (a cross-site form cannot send one) and a good name
        form = anonymous.post(base + "/api/v1/session", data={"annotator": "eve"}, timeout=30)
        assert form.status_code == 415 and form.json()["ok"] is False
        for body in ({"annotator": "<script>"}, {"annotator": 5}, ["eve"]):
            assert anonymous.post(base + "/api/v1/session", json=body, timeout=30).status_code == 400, body
        http, csrf = start(base, "alice")
        for params in ({"mode": "list"}, {"limit": "0"}, {"limit": "101"}, {"limit": "-1"}, {"wnid": "../x"}):
            response = http.get(base + "/api/v1/next", params=params, timeout=30)
            assert response.status_code == 400 and response.json()["ok"] is False, params
        # whole-request errors: no CSRF, or not a list of decisions
        one = {"decisions": [{"id": f"{s0}:{w0}", "verdict": "accept"}]}
        assert http.post(base + "/api/v1/decisions", json=one, timeout=30).status_code == 400
        assert (
            http.post(base + "/api/v1/decisions", json=one, headers={"X-CSRF-Token": "x"}, timeout=30).status_code
            == 400
        )
        for body in ({"decisions": []}, {"decisions": {}}, [one], {"decisions": [{}] * 101}):
            assert http.post(base + "/api/v1/decisions", json=body, headers=csrf, timeout=30).status_code == 400
        assert votes_in(catalog) == set()
        # bob finishes s3 (one vote needed): alice's page is stale there
        bob, bob_csrf = start(base, "bob")
        bob.post(
            base + "/api/v1/decisions",
            json={"decisions": [{"id": f"{s3}:{w3}", "verdict": "accept"}]},
            headers=bob_csrf,
            timeout=30,
        )
        dup, not_kept = review.excluded["duplicate"], review.excluded["not kept"]
        batch = [
            {"id": f"{s0}:{w0}", "verdict": "accept"},  # 0 good
            {"id": f"{'f' * 64}:{w0}", "verdict": "accept"},  # 1 unknown
            {"id": f"{dup[0]}:{dup[1]}", "verdict": "accept"},  # 2 set aside by dedup
            {"id": f"{not_kept[0]}:{not_kept[1]}", "verdict": "accept"},  # 3 the filter did not keep it
            {"id": f"{s1}:{w1}", "verdict": "maybe"},  # 4 not a verdict
            {"id": f"{s1}:{w1}", "verdict": "in_distribution"},  # 5 ImageNet-O only
            {"id": "../../etc/passwd", "verdict": "accept"},  # 6
            {"id": f"{s1}:{w1}", "verdict": "accept", "note": 5},  # 7
            {"id": f"{s1}:{w1}", "verdict": "accept", "note": "x" * 2001},  # 8
            {"id": f"{s0}:{w0}", "verdict": "wrong_class"},  # 9 the same id again
            {"id": f"{s3}:{w3}", "verdict": "accept"},  # 10 bob finished it
            "not an object",  # 11
            {"id": f"{s2}:{w2}", "verdict": "skip", "note": "blurry?"},  # 12 good
        ]
        answer = http.post(base + "/api/v1/decisions", json={"decisions": batch}, headers=csrf, timeout=30).json()
        assert answer["recorded"] == 2
        assert [(e["index"], e["code"]) for e in answer["errors"]] == [
            (1, "unknown_id"),
            (2, "not_reviewable"),
            (3, "not_reviewable"),
            (4, "bad_verdict"),
            (5, "bad_verdict"),
            (6, "bad_id"),
            (7, "bad_note"),
            (8, "bad_note"),
            (9, "repeated"),
            (10, "complete"),
            (11, "bad_id"),
        ]
        assert answer["errors"][0]["id"] == f"{'f' * 64}:{w0}" and answer["errors"][-1]["id"] is None
        assert all(e["error"] for e in answer["errors"])
        # sent again: nothing doubles, and her own vote may change
        again = http.post(
            base + "/api/v1/decisions",
            json={"decisions": [{"id": f"{s0}:{w0}", "verdict": "wrong_class"}]},
            headers=csrf,
            timeout=30,
        ).json()
        assert again == {"ok": True, "recorded": 1, "errors": []}
    assert votes_in(catalog) == {(s0, w0, "alice", "wrong_class"), (s2, w2, "alice", "skip"), (s3, w3, "bob", "accept")}
    token = ReviewConfig(catalog=catalog, data_dir=review.data_dir, token="s3cret-token")
    with serving_in_thread(token) as base:  # the guard's token and Host rules hold for /api/v1 too
        assert client().post(base + "/api/v1/session", json={"annotator": "eve"}, timeout=30).status_code == 403
        assert client().get(base + "/api/v1/rules", timeout=30).status_code == 403
        foreign = client().get(
            base + "/api/v1/rules", headers={"Host": "evil.example", "X-Curation-Token": "s3cret-token"}
        )
        assert foreign.status_code == 400
        http = client()
        http.headers["X-Curation-Token"] = "s3cret-token"
        assert http.post(base + "/api/v1/session", json={"annotator": "eve"}, timeout=30).status_code == 200


@pytest.mark.parametrize("votes_needed,annotators,order", [(1, 2, "learned"), (2, 3, "hash")])
def test_concurrent_annotators_never_double_a_pair_or_lose_a_vote(review, votes_needed, annotators, order):
    """Every annotator fetches the next page at the same moment and decides all of it; until the
    queue is empty. Each pair ends with exactly ``votes_needed`` votes, every decision the API said
    it recorded is in the catalog, and every refused one was a pair others had finished. The learned
    order (its pages also write scores and draws) is the one a single vote per pair is tested under."""
    catalog = review.open()
    cfg = ReviewConfig(catalog=catalog, data_dir=review.data_dir, votes_needed=votes_needed, order=order)
    names = [f"ann{i}" for i in range(annotators)]
    recorded: dict[str, set[str]] = {name: set() for name in names}
    refused: dict[str, list[str]] = {name: [] for name in names}
    failures: list[str] = []
    empty = dict.fromkeys(names, False)
    with serving_in_thread(cfg) as base:
        sessions = {name: start(base, name) for name in names}
        barrier = threading.Barrier(annotators)

        def work(name: str) -> None:
            http, csrf = sessions[name]
            try:
                for _ in range(100):
                    barrier.wait(timeout=120)  # all fetch the same page, then all decide it at once
                    page = http.get(base + "/api/v1/next", params={"limit": 8}, timeout=60).json()
                    empty[name] = not page["items"]
                    barrier.wait(timeout=120)
                    if all(empty.values()):
                        return
                    sent = [item["id"] for item in page["items"]]
                    body = {"decisions": [{"id": i, "verdict": "accept"} for i in sent]}
                    answer = http.post(base + "/api/v1/decisions", json=body, headers=csrf, timeout=120).json()
                    errors = {sent[e["index"]]: e["code"] for e in answer["errors"]}
                    refused[name] += [code for code in errors.values()]
                    recorded[name] |= {i for i in sent if i not in errors}
                    if answer["recorded"] != len(sent) - len(errors):
                        failures.append(f"{name}: recorded {answer['recorded']} of {len(sent)} with {errors}")
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(f"{name}: {exc!r}")
                barrier.abort()

        threads = [threading.Thread(target=work, args=(name,)) for name in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    assert failures == []
    assert all(code == "complete" for codes in refused.values() for code in codes)
    assert sum(len(r) for r in refused.values()) > 0  # they did collide
    with catalog.session() as s:
        per_pair = dict(
            s.execute(
                select(cat.Annotation.sha256 + ":" + cat.Annotation.wnid, func.count()).group_by(
                    cat.Annotation.sha256, cat.Annotation.wnid
                )
            ).all()
        )
    assert per_pair == {i: votes_needed for i in ids(review.queue)}
    assert votes_in(catalog) == {(*i.split(":"), name, "accept") for name, done in recorded.items() for i in done}


def test_a_decision_locks_its_pair_not_the_filter_verdict(pg_url, tmp_path):
    """On PostgreSQL a decision in progress holds its pair's advisory lock: a second decider of that
    pair waits (here: times out), one of another pair does not, and a filter run rewriting the
    pair's verdict row is never held up by reviewers."""
    from sqlalchemy import text, update
    from sqlalchemy.exc import OperationalError

    from curation.annotate.decide import lock_pair

    review = build_review_catalog(tmp_path, url=pg_url)
    catalog = review.open()
    (sha, wnid), other = review.queue[0], review.queue[1]
    with catalog.session() as holder:
        assert lock_pair(holder, sha, wnid)
        with catalog.session() as filter_run:
            filter_run.execute(text("SET LOCAL lock_timeout = '2s'"))
            filter_run.execute(
                update(cat.FilterVerdict)
                .where(cat.FilterVerdict.sha256 == sha, cat.FilterVerdict.wnid == wnid)
                .values(models='["resnet50@0"]')
            )
        with catalog.session() as second:
            second.execute(text("SET LOCAL lock_timeout = '200ms'"))
            assert lock_pair(second, *other)
        with pytest.raises(OperationalError, match="lock timeout"), catalog.session() as second:
            second.execute(text("SET LOCAL lock_timeout = '200ms'"))
            lock_pair(second, sha, wnid)


def test_a_decision_that_cannot_get_its_lock_is_refused_and_can_be_sent_again(pg_url, tmp_path):
    """A pair held past the lock timeout answers ``busy`` for that item only; the others land,
    and the same decision sent again later is recorded once."""
    from sqlalchemy import create_engine

    from curation.annotate.decide import lock_pair

    review = build_review_catalog(tmp_path, url=pg_url)
    impatient = cat.Catalog(create_engine(pg_url, connect_args={"options": "-c lock_timeout=300"}))
    (s0, w0), (s1, w1) = review.queue[:2]
    body = {"decisions": [{"id": f"{s0}:{w0}", "verdict": "accept"}, {"id": f"{s1}:{w1}", "verdict": "accept"}]}
    with serving_in_thread(ReviewConfig(catalog=impatient, data_dir=review.data_dir)) as base:
        http, csrf = start(base, "alice")
        with review.open().session() as holder:
            assert lock_pair(holder, s0, w0)  # a decision in progress elsewhere
            answer = http.post(base + "/api/v1/decisions", json=body, headers=csrf, timeout=30).json()
        assert answer["recorded"] == 1 and [(e["index"], e["code"]) for e in answer["errors"]] == [(0, "busy")]
        assert votes_in(impatient) == {(s1, w1, "alice", "accept")}
        again = http.post(base + "/api/v1/decisions", json=body, headers=csrf, timeout=30).json()
        assert again == {"ok": True, "recorded": 2, "errors": []}
    assert votes_in(impatient) == {(s0, w0, "alice", "accept"), (s1, w1, "alice", "accept")}


def test_the_learned_order_serves_every_pair_with_a_random_share(tmp_path):
    """One annotator pages through the whole queue in the learned order, with votes that teach the
    model (accept exactly the pairs of one class): every pair is served exactly once, every page
    holds at least one random draw (the 5 % guard, rounded up), the estimate of accepts left rests
    on the draws, and the learned scores put the accepted class ahead of the others."""
    review = widened(tmp_path)
    catalog = review.open()
    liked = review.queue[0][1]
    cfg = ReviewConfig(catalog=catalog, data_dir=review.data_dir, order="learned", consensus="fixed")
    served: list[str] = []
    with serving_in_thread(cfg) as base:
        http, csrf = start(base, "alice")
        while page := http.get(base + "/api/v1/next", params={"limit": 6}, timeout=30).json()["items"]:
            assert any(item["served_as"] == "random" for item in page)
            served += [item["id"] for item in page]
            votes = [{"id": i["id"], "verdict": "accept" if i["wnid"] == liked else "wrong_class"} for i in page]
            assert http.post(base + "/api/v1/decisions", json={"decisions": votes}, headers=csrf, timeout=30).json()[
                "recorded"
            ] == len(page)
            if len(served) == 24:
                estimate = http.get(base + "/api/v1/next", params={"limit": 1}, timeout=30).json()["estimate"]
                assert estimate["sampled_votes"] >= 4 and "served at random" in estimate["basis"]
                assert estimate["interval"][0] <= estimate["estimate"] <= estimate["interval"][1]
    assert sorted(served) == sorted(ids(review.queue))  # every pair, none twice
    with catalog.session() as s:
        state = ranker.load(s)[0]
        assert state.votes == 64 and state.classes[liked] == [8, 8]
    facts = {"p": 0.2, "conf": 0.6, "rank": 2, "margin": 0.3}
    assert ranker.features(facts, state.class_rate(liked)) @ np.asarray(state.coef) > ranker.features(
        facts, state.class_rate(review.queue[-1][1])
    ) @ np.asarray(state.coef)


def test_dynamic_consensus_asks_for_another_vote_where_two_reviewers_disagree(tmp_path):
    """Under dynamic consensus two agreeing accepts close a pair, one accept and one reject do not:
    that pair is served first to a third reviewer (as needing more votes), and never to the two who
    voted; a reviewer cannot add a vote to a closed pair (``complete``). Review progress counts it,
    and the release's selection holds only pairs closed as accepted, never one with only an
    automatic accept."""
    review = widened(tmp_path)
    catalog = review.open()
    agreed, disputed = ids(review.queue[:2])
    cfg = ReviewConfig(catalog=catalog, data_dir=review.data_dir, order="learned", consensus="dynamic")
    with serving_in_thread(cfg) as base:
        (alice, a_csrf), (bob, b_csrf), (carol, c_csrf) = (start(base, n) for n in ("alice", "bob", "carol"))
        rules = alice.get(base + "/api/v1/rules", timeout=30).json()
        assert rules["consensus"] == "dynamic" and "posterior" in rules["rule"] and rules["order"] == "learned"

        def decide(http, csrf, verdicts):
            body = {"decisions": [{"id": i, "verdict": v} for i, v in verdicts.items()]}
            return http.post(base + "/api/v1/decisions", json=body, headers=csrf, timeout=30).json()

        assert decide(alice, a_csrf, {agreed: "accept", disputed: "accept"})["recorded"] == 2
        assert decide(bob, b_csrf, {agreed: "accept", disputed: "wrong_class"})["recorded"] == 2
        first = carol.get(base + "/api/v1/next", params={"limit": 5}, timeout=30).json()["items"]
        assert first[0]["id"] == disputed and first[0]["served_as"] == "more_votes"
        assert agreed not in [i["id"] for i in first]
        for http in (alice, bob):
            page = http.get(base + "/api/v1/next", params={"limit": 100}, timeout=30).json()["items"]
            assert {agreed, disputed}.isdisjoint(i["id"] for i in page)
        late = decide(carol, c_csrf, {agreed: "accept"})
        assert late["recorded"] == 0 and late["errors"][0]["code"] == "complete"
        assert decide(carol, c_csrf, {disputed: "accept"})["recorded"] == 1
    with catalog.session() as s:
        rows = {f"{r.sha256}:{r.wnid}": (r.tier, r.outcome) for r in s.scalars(select(cat.ReviewQueue))}
    assert rows[agreed] == (cat.CLOSED, "accept")
    assert rows[disputed][0] in (cat.CLOSED, cat.MORE)  # two of three accept: closed unless still unsure
    with catalog.session() as s:
        progress = review_progress(s)
    closed = sum(tier == cat.CLOSED for tier, _ in rows.values())
    assert progress["reviewed"] == closed and progress["pairs"] == 64 and progress["accepted"] >= 1
    assert progress["votes_per_pair"] == pytest.approx((2 + 3 * (closed - 1)) / closed if closed == 2 else 2.0)
    line = progress_line(progress)
    assert f"review: {closed} of 64 pairs reviewed" in line and "served at random" in line
    # what a release selects (catalog.accepted_query): the pairs the rule closed as accepted, each
    # with a human accept; an automatic accept alone (the demo's auto-accept) selects nothing
    robot_pair = review.queue[2]
    with catalog.session() as s:
        record_vote(s, *robot_pair, consensus.AUTOMATIC[0], "accept")
    with catalog.session() as s:
        accepted = cat.accepted_pairs(s, 1)
    assert accepted == {tuple(i.split(":")) for i, (tier, outcome) in rows.items() if outcome == "accept"}
    assert tuple(agreed.split(":")) in accepted and robot_pair not in accepted


def test_dynamic_consensus_never_accepts_without_a_human_accept():
    """Automatic accepts (the demo's auto-accept) never close a pair as accepted and weigh nothing."""
    weights = accuracy.Weights()
    rule = consensus.Rule(consensus.DYNAMIC)
    robot = consensus.AUTOMATIC[0]
    assert consensus.judge(rule, {robot: "accept"}, 0.9, weights, "n01498041") is None
    assert consensus.judge(rule, {robot: "accept", "ann": "accept"}, 0.9, weights, "n01498041") == "accept"
    one_reject = {"x": "wrong_class"}
    assert consensus.posterior({robot: "accept", **one_reject}, 0.5, weights, "n") == consensus.posterior(
        one_reject, 0.5, weights, "n"
    )  # an automatic accept is no evidence
    five = {robot: "accept", **{name: "wrong_class" for name in "vwxy"}, "z": "accept"}
    assert consensus.judge(rule, five, 0.9, weights, "n01498041") == "reject"  # five human votes: decided
