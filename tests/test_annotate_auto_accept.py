"""`curation annotate auto-accept`: one accept vote per reviewable pair, under a name that says it is
not a human review; a rerun adds nothing; duplicates and pairs the filter did not keep get no vote."""

from __future__ import annotations

from sqlalchemy import select
from test_release_catalog import build_catalog

from curation import catalog as cat
from curation.annotate.auto_accept import AUTO_ACCEPT_ANNOTATOR


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
    assert 0 < len(reviewable) < len(all_pairs)
    first = run_cli("--db", catalog_url, "annotate", "auto-accept")
    assert first.returncode == 0, first.stderr
    assert f"{len(reviewable)} accept votes added" in first.stderr and "NOT a human review" in first.stderr
    with catalog.session() as s:
        auto = s.scalars(select(cat.Annotation).where(cat.Annotation.annotator == AUTO_ACCEPT_ANNOTATOR)).all()
        assert {(a.sha256, a.wnid) for a in auto} == reviewable
        assert {a.verdict for a in auto} == {"accept"}
    again = run_cli("--db", catalog_url, "annotate", "auto-accept")
    assert again.returncode == 0 and "0 accept votes added" in again.stderr
