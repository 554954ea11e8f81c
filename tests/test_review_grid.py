"""The review pages' server side: undo through /api/v1/undo and the `[annotate] grid_size` option
(the pages themselves run in Chromium: tests/test_annotate_browser.py)."""

from __future__ import annotations

import pytest
from test_annotate import ReviewCatalog, build_review_catalog, client, votes_in
from test_review_api import ids, start

from curation import options
from curation.annotate import MAX_GRID, AnnotateOptions
from curation.annotate.api_v1 import MAX_LIMIT
from curation.annotate.app import ReviewConfig, serving_in_thread
from curation.config import Settings
from curation.errors import CurationError


@pytest.fixture
def review(tmp_path) -> ReviewCatalog:
    return build_review_catalog(tmp_path)


def test_undo_withdraws_only_the_annotators_own_verdicts(review):
    catalog = review.open()
    (s0, w0), (s1, w1), (s2, w2) = review.queue[:3]
    with serving_in_thread(ReviewConfig(catalog=catalog, data_dir=review.data_dir, votes_needed=2)) as base:
        alice, alice_csrf = start(base, "alice")
        bob, bob_csrf = start(base, "bob")
        page = [{"id": i, "verdict": "accept"} for i in ids(review.queue[:2])]
        for http, csrf in ((alice, alice_csrf), (bob, bob_csrf)):
            assert (
                http.post(base + "/api/v1/decisions", json={"decisions": page}, headers=csrf, timeout=30).json()[
                    "recorded"
                ]
                == 2
            )
        body = {"ids": [*ids(review.queue[:3]), "nonsense", ids(review.queue[:1])[0]]}
        assert alice.post(base + "/api/v1/undo", json=body, timeout=30).status_code == 400  # no CSRF token
        undone = alice.post(base + "/api/v1/undo", json=body, headers=alice_csrf, timeout=30).json()
        assert undone["removed"] == 2
        assert [(e["index"], e["code"]) for e in undone["errors"]] == [
            (2, "not_decided"),
            (3, "bad_id"),
            (4, "repeated"),
        ]
        assert client().post(base + "/api/v1/undo", json=body, headers=alice_csrf, timeout=30).status_code == 400
        for bad in ({"ids": []}, {"ids": "x"}, ["x"]):
            assert alice.post(base + "/api/v1/undo", json=bad, headers=alice_csrf, timeout=30).status_code == 400
        # the withdrawn pairs are alice's to decide again, first in her queue
        again = alice.get(base + "/api/v1/next", params={"limit": 2}, timeout=30).json()
        assert [item["id"] for item in again["items"]] == ids(review.queue[:2])
    assert votes_in(catalog) == {(s0, w0, "bob", "accept"), (s1, w1, "bob", "accept")}
    assert (s2, w2) not in {(s, w) for s, w, _a, _v in votes_in(catalog)}


def test_grid_size_is_a_typed_option_and_unknown_keys_are_refused():
    assert options.resolve(AnnotateOptions, Settings()).grid_size == 48 == ReviewConfig.grid_size
    assert options.resolve(AnnotateOptions, Settings(toml={"annotate": {"grid_size": 24}})).grid_size == 24
    assert options.resolve(AnnotateOptions, Settings(), environ={"CURATION_ANNOTATE_GRID_SIZE": "12"}).grid_size == 12
    assert MAX_GRID == MAX_LIMIT  # a page is one GET /api/v1/next
    for bad, message in ((0, "from 1 to 100"), (101, "from 1 to 100"), ("many", "grid_size")):
        with pytest.raises(CurationError, match=message):
            options.resolve(AnnotateOptions, Settings(toml={"annotate": {"grid_size": bad}}))
    with pytest.raises(CurationError, match="unknown key \\[annotate\\] grid_sise"):
        options.check_tables({"annotate": {"grid_sise": 8}}, "curation.toml")


@pytest.mark.parametrize("consensus", ["fixed", "dynamic"])
def test_an_undone_decision_reopens_its_pair_for_everyone(review, consensus):
    catalog = review.open()
    first = ids(review.queue[:1])
    cfg = ReviewConfig(catalog=catalog, data_dir=review.data_dir, consensus=consensus)
    with serving_in_thread(cfg) as base:
        alice, alice_csrf = start(base, "alice")
        bob, _ = start(base, "bob")

        def bob_sees() -> tuple[list[str], int]:
            answer = bob.get(base + "/api/v1/next", params={"limit": 100}, timeout=30).json()
            return [item["id"] for item in answer["items"]], answer["remaining"]

        everything, left = bob_sees()
        decided = alice.post(
            base + "/api/v1/decisions", json={"decisions": [{"id": first[0], "verdict": "wrong_class"}]},
            headers=alice_csrf, timeout=30,
        ).json()  # fmt: skip
        assert decided["recorded"] == 1
        if consensus == "fixed":  # one vote closes it (dynamic may ask bob for a second one)
            assert bob_sees() == ([i for i in everything if i != first[0]], left - 1)
        undone = alice.post(base + "/api/v1/undo", json={"ids": first}, headers=alice_csrf, timeout=30).json()
        assert undone == {"ok": True, "removed": 1, "errors": []}
        assert sorted(bob_sees()[0]) == sorted(everything) and bob_sees()[1] == left
    assert votes_in(catalog) == set()
