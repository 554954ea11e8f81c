"""`curation annotate auto-accept`: one accept vote per reviewable pair, under a name that says it is
not a human review; a rerun adds nothing; duplicates and pairs the filter did not keep get no vote.
Those votes enter no release unless the catalog was marked ``--count-for-release`` (the demo); a pair
with a human accept is released either way."""

from __future__ import annotations

from sqlalchemy import select
from test_release_catalog import build_catalog

from curation import catalog as cat
from curation.annotate.auto_accept import AUTO_ACCEPT_ANNOTATOR
from curation.annotate.votes import record_vote


def test_auto_accept_votes_on_the_review_queue_only_once(run_cli, catalog_url, tmp_path):
    build_catalog(catalog_url, tmp_path / "data")
    catalog = cat.open_catalog(catalog_url)
    with catalog.session() as s:
        reviewable = {
            (v.sha256, v.wnid)
            for v, d in s.execute(
                select(cat.FilterVerdict, cat.DedupStatus).join(
                    cat.DedupStatus, cat.DedupStatus.sha256 == cat.FilterVerdict.sha256
                )
            )
            if v.kept and d.status == cat.REPRESENTATIVE
        }
        all_pairs = {tuple(row) for row in s.execute(select(cat.FilterVerdict.sha256, cat.FilterVerdict.wnid))}
        before = cat.accepted_pairs(s, 1)
    assert 0 < len(reviewable) < len(all_pairs)
    first = run_cli("--db", catalog_url, "annotate", "auto-accept")
    assert first.returncode == 0, first.stderr
    assert f"{len(reviewable)} accept votes added" in first.stderr and "NOT a human review" in first.stderr
    with catalog.session() as s:
        auto = s.scalars(select(cat.Annotation).where(cat.Annotation.annotator == AUTO_ACCEPT_ANNOTATOR)).all()
        assert {(a.sha256, a.wnid) for a in auto} == reviewable
        assert {a.verdict for a in auto} == {"accept"}
    assert f"{len(before)} pairs now accepted" in first.stderr
    assert "enter no release without a human accept" in first.stderr
    human = sorted(reviewable - before)[0]
    with catalog.session() as s:
        record_vote(s, *human, "ann", "accept")
    release = run_cli("--db", catalog_url, "release", str(tmp_path / "out"), "--name", "first")
    assert release.returncode == 0, release.stderr
    with catalog.session() as s:
        assert cat.accepted_pairs(s, 1) == before | {human}
        released = {(i.sha256, i.wnid) for i in s.scalars(select(cat.ReleaseItem))}
        people = {(a.sha256, a.wnid) for a in s.scalars(select(cat.Annotation)) if a.annotator != AUTO_ACCEPT_ANNOTATOR}
    assert human in released and released <= people  # every released pair has a vote by a person
    again = run_cli("--db", catalog_url, "annotate", "auto-accept", "--count-for-release")
    assert again.returncode == 0 and "0 accept votes added" in again.stderr
    assert "count toward a release" in again.stderr
    with catalog.session() as s:
        assert cat.accepted_pairs(s, 1) == before | reviewable
