"""Foundation: catalog, migrations, class recipe, CLI contract, settings precedence."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest
from conftest import old_catalog
from sqlalchemy import select

from curation import catalog as cat
from curation.config import resolve_settings
from curation.errors import CurationError
from curation.synsets import DEFAULT_RECIPE, imagenet_a_reference, read_recipe


def test_recipe_equals_timm_imagenet_a():
    wnids, indices = imagenet_a_reference()
    recipe = read_recipe(DEFAULT_RECIPE)
    assert [r["wnid"] for r in recipe] == wnids
    assert [r["index_1k"] for r in recipe] == indices
    assert all(r["name"] and r["gloss"] and r["queries"] for r in recipe)


@pytest.mark.parametrize(
    "wnid, needle",
    [
        ("n02879718", "archery bow"),
        ("n03854065", "pipe organ"),
        ("n03804744", "metal nail fastener"),
        ("n04067472", "fishing reel"),
        ("n04389033", "army tank"),
        ("n03014705", "wooden storage chest"),
        ("n02190166", "fly insect"),
        ("n04456115", "flaming torch"),
    ],
)
def test_ambiguous_names_are_disambiguated(wnid, needle):
    recipe = {r["wnid"]: r for r in read_recipe(DEFAULT_RECIPE)}
    assert needle in recipe[wnid]["queries"]


def test_recipe_holds_every_wordnet_lemma():
    from curation.synsets import wordnet_lemmas

    lemmas = wordnet_lemmas()
    for row in read_recipe(DEFAULT_RECIPE):
        for lemma in lemmas[row["wnid"]].split(","):
            assert lemma.strip() in row["queries"], (row["wnid"], lemma)


def test_classes_list_csv_is_the_200_timm_classes(run_cli, catalog_url):
    result = run_cli("--db", catalog_url, "classes", "list", "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    wnids, indices = imagenet_a_reference()
    assert [r["wnid"] for r in rows] == wnids
    assert [int(r["index_1k"]) for r in rows] == indices


def test_status_creates_and_migrates_and_is_idempotent(run_cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'X.sqlite'}"
    first = run_cli("--db", url, "status", "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert len(data["classes"]) == 200
    assert all(v == 0 for v in data["totals"].values())
    con = sqlite3.connect(tmp_path / "X.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    before = con.execute("SELECT count(*) FROM classes").fetchone()[0]
    revision = con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    con.close()
    second = run_cli("--db", url, "status")
    assert second.returncode == 0 and second.stderr == ""
    con = sqlite3.connect(tmp_path / "X.sqlite")
    assert con.execute("SELECT count(*) FROM classes").fetchone()[0] == before == 200
    assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == revision == cat.head_revision()
    lines = second.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["wnid", "class"]
    assert sum(line.startswith("n") for line in lines[1:]) == 200
    assert lines[-3].startswith("total") and lines[-2].startswith("annotation: 0 votes")
    assert lines[-1].startswith("review: 0 of 0 pairs reviewed, 0 accepted")


def test_foreign_keys_are_enforced(catalog_url):
    catalog = cat.open_catalog(catalog_url)
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), catalog.session() as s:
        s.add(cat.Candidate(wnid="n00000000", source="urls", url="http://127.0.0.1/x.jpg"))


def test_old_catalog_is_upgraded_without_data_loss(tmp_path, run_cli):
    url = old_catalog(tmp_path / "old.sqlite", "0001", "pending")
    result = run_cli("--db", url, "status", "--json")
    assert result.returncode == 0, result.stderr
    assert "upgrading catalog schema 0001" in result.stderr
    catalog = cat.open_catalog(url)
    assert cat.current_revision(catalog.engine) == cat.head_revision()
    with catalog.session() as s:
        cand = s.scalars(select(cat.Candidate)).one()
        assert cand.url == "http://127.0.0.1/a.jpg"
        assert s.get(cat.ImageClass, "n01498041").gloss == "a ray"  # the old row survives the seed
    stingray = next(r for r in json.loads(result.stdout)["classes"] if r["wnid"] == "n01498041")
    assert stingray["candidates"] == 1


def test_predictions_older_than_the_own_class_columns_are_counted_for_rescore(tmp_path):
    """Migration 0013 adds class_prob/class_rank as NULL and counts the rows that should hold them (ok
    rows of the restricted or top1 rule, not failed or ImageNet-O rows) for `filter --rescore`."""
    engine = cat.make_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    cat.upgrade(engine, "0012")  # the classes are seeded by then
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO images (sha256, path, width, height, format, bytes, multi_class, created_at) "
            "VALUES ('ab', 'images/ab.jpg', 64, 64, 'JPEG', 1, 0, '2020-01-01')"
        )
        for k, (rule, status) in enumerate(
            [("restricted", "ok"), ("top1", "ok"), ("restricted", "failed"), ("msp", "ok")]
        ):
            conn.exec_driver_sql(
                "INSERT INTO predictions (sha256, wnid, model, weights_hash, rule, status, created_at) "
                f"VALUES ('ab', 'n01498041', 'm{k}', 'h', '{rule}', '{status}', '2020-01-01')"
            )
    cat.upgrade(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT value FROM catalog_meta WHERE key = 'filter:class-prob-missing'").all() == [
            ("2",)
        ]
        assert conn.exec_driver_sql("SELECT count(*) FROM predictions WHERE class_prob IS NULL").scalar() == 4
    engine.dispose()


def test_migrations_match_the_models(tmp_path):
    """The ORM models and the Alembic migrations describe the same schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = cat.make_engine(f"sqlite:///{tmp_path / 'm.sqlite'}")
    cat.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), cat.Base.metadata)
    assert diff == []


def test_funnel_counts_each_stage(catalog_url):
    catalog = cat.open_catalog(catalog_url)
    w = "n01498041"
    with catalog.session() as s:
        s.add(cat.Image(sha256="a" * 64, path="images/a", width=10, height=10, format="JPEG", bytes=1))
        s.add(cat.Image(sha256="b" * 64, path="images/b", width=10, height=10, format="JPEG", bytes=1))
        s.flush()
        s.add_all(
            [
                cat.Candidate(wnid=w, source="urls", url="u1", status="downloaded", image_sha256="a" * 64),
                cat.Candidate(wnid=w, source="urls", url="u2", status="downloaded", image_sha256="b" * 64),
                cat.Candidate(wnid=w, source="urls", url="u3", status="failed", reason="http_404"),
                cat.FilterVerdict(sha256="a" * 64, wnid=w, kept=True, models="[]", keep_rule="all-wrong"),
                cat.FilterVerdict(sha256="b" * 64, wnid=w, kept=True, models="[]", keep_rule="all-wrong"),
                cat.DedupStatus(sha256="a" * 64, status="representative"),
                cat.DedupStatus(sha256="b" * 64, status="duplicate", cluster_id="a" * 64),
                cat.Annotation(sha256="a" * 64, wnid=w, annotator="ann1", verdict="accept"),
            ]
        )
    with catalog.session() as s:
        row = next(r for r in cat.funnel(s) if r["wnid"] == w)
        assert row == {
            "wnid": w,
            "name": "stingray",
            "candidates": 3,
            "downloaded": 2,
            "failed": 1,
            "kept": 2,
            "unique": 1,
            "accepted": 1,
            "released": 0,
        }
        # Three votes needed: one accept is no majority.
        assert next(r for r in cat.funnel(s, 3) if r["wnid"] == w)["accepted"] == 0


def test_export_every_table(run_cli, catalog_url, tmp_path):
    from curation.cli import main

    result = run_cli("--db", catalog_url, "export", "classes", "--format", "csv", "-o", str(tmp_path / "cli.csv"))
    assert result.returncode == 0, result.stderr
    for table in cat.table_names():
        for fmt in ("csv", "jsonl"):
            out = tmp_path / f"{table}.{fmt}"
            assert main(["--db", catalog_url, "export", table, "--format", fmt, "-o", str(out)]) == 0
            assert out.exists()
    assert (tmp_path / "cli.csv").read_text() == (tmp_path / "classes.csv").read_text()
    from curation.annotate.app import session_secret

    secret = session_secret(cat.open_catalog(catalog_url)).hex()
    assert main(["--db", catalog_url, "export", "catalog_meta", "-o", str(tmp_path / "meta.csv")]) == 0
    meta = (tmp_path / "meta.csv").read_text()
    assert "seeded" in meta and "secret" not in meta and secret not in meta  # credentials stay in the catalog
    rows = list(csv.DictReader(open(tmp_path / "classes.csv")))
    assert len(rows) == 200
    assert len((tmp_path / "search_queries.jsonl").read_text().splitlines()) > 200


def test_classes_add_fills_from_wordnet_and_refuses_unknown(run_cli, catalog_url):
    ok = run_cli("--db", catalog_url, "classes", "add", "n02084071")
    assert ok.returncode == 0, ok.stderr
    listing = run_cli("--db", catalog_url, "classes", "list", "--format", "json")
    dog = next(c for c in json.loads(listing.stdout) if c["wnid"] == "n02084071")
    assert dog["name"] == "dog" and "domestic dog" in dog["queries"] and dog["gloss"]
    assert dog["index_1k"] is None
    bad = run_cli("--db", catalog_url, "classes", "add", "n99999999")
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "unknown wnid" in bad.stderr


def test_classes_import(run_cli, catalog_url, tmp_path):
    recipe = tmp_path / "mine.csv"
    recipe.write_text("wnid,name,queries\nn02121808,house cat,domestic cat | house cat photo\n")
    result = run_cli("--db", catalog_url, "classes", "import", str(recipe))
    assert result.returncode == 0, result.stderr
    listing = json.loads(run_cli("--db", catalog_url, "classes", "list", "--format", "json").stdout)
    cat_row = next(c for c in listing if c["wnid"] == "n02121808")
    assert cat_row["name"] == "house cat" and "house cat photo" in cat_row["queries"]


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["status", "--bogus-flag"],
        ["--config", "missing.toml", "status"],
        ["--config", "bad.toml", "status"],
        ["--db", "sqlite:////proc/forbidden/catalog.sqlite", "status"],
        ["--db", "nosuchdialect://x", "status"],
        ["classes", "add", "n00000001"],
        ["export", "no_such_table"],
    ],
)
def test_bad_input_gives_one_line_and_nonzero(run_cli, tmp_path, args):
    (tmp_path / "bad.toml").write_text("this is = = not toml\n")
    result = run_cli(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_db_file(run_cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "catalog.sqlite").mkdir()  # a directory where the file should be
    result = run_cli("--db", f"sqlite:///{locked / 'catalog.sqlite'}", "status")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "catalog" in result.stderr


def test_settings_precedence(tmp_path):
    (tmp_path / "curation.toml").write_text('[catalog]\ndb = "from-toml.sqlite"\ndata_dir = "toml-data"\n')
    s = resolve_settings(environ={}, cwd=tmp_path)
    assert s.db_url == "sqlite:///from-toml.sqlite" and s.data_dir == Path("toml-data")
    s = resolve_settings(environ={"CURATION_DB": "sqlite:///env.sqlite"}, cwd=tmp_path)
    assert s.db_url == "sqlite:///env.sqlite" and s.data_dir == Path("toml-data")
    s = resolve_settings(db="sqlite:///cli.sqlite", environ={"CURATION_DB": "sqlite:///env.sqlite"}, cwd=tmp_path)
    assert s.db_url == "sqlite:///cli.sqlite"
    other = tmp_path / "other.toml"
    other.write_text('[sources.flickr]\nbase_url = "http://127.0.0.1:9/"\napi_key = "k"\n')
    s = resolve_settings(environ={"CURATION_CONFIG": str(other)}, cwd=tmp_path)
    assert s.source("flickr") == {"base_url": "http://127.0.0.1:9/", "api_key": "k"}
    assert resolve_settings(environ={}, cwd=tmp_path / "empty").db_url == "sqlite:///db/catalog.sqlite"
    with pytest.raises(CurationError):
        resolve_settings(config=str(tmp_path / "nope.toml"), environ={}, cwd=tmp_path)


def test_every_command_has_help(run_cli):
    for command in ["classes", "crawl", "filter", "dedup", "annotate", "release", "eval", "report", "status", "export"]:
        result = run_cli(command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert "usage: curation " + command in result.stdout
