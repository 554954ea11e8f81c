"""Typed options: flags > environment > curation.toml > defaults; unknown keys and bad types refused."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from curation import options
from curation.config import resolve_settings
from curation.dedup import DedupOptions
from curation.errors import CurationError
from curation.filter import FilterOptions


def settings_with(tmp_path: Path, toml: str):
    (tmp_path / "curation.toml").write_text(toml)
    return resolve_settings(environ={}, cwd=tmp_path)


def test_precedence_flag_over_environment_over_file_over_default(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, "[filter]\nbatch_size = 64\nworkers = 3\n")
    flags = argparse.Namespace(batch_size=None, workers=None, model=None)
    assert options.resolve(FilterOptions, settings, flags, environ={}).batch_size == 64
    env = {"CURATION_FILTER_BATCH_SIZE": "16", "CURATION_FILTER_MODEL": "a,b"}
    from_env = options.resolve(FilterOptions, settings, flags, environ=env)
    assert (from_env.batch_size, from_env.workers, from_env.model) == (16, 3, ("a", "b"))
    flags.batch_size = 8
    assert options.resolve(FilterOptions, settings, flags, environ=env).batch_size == 8
    default = options.resolve(FilterOptions, settings_with(tmp_path, ""), None, environ={})
    assert default == FilterOptions() and default.margin_recheck is None and default.rule is None


def test_types_are_checked_with_the_origin_named(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, '[dedup]\nmax_distance = "ten"\n')
    with pytest.raises(CurationError, match=r"^\[dedup\] max_distance must be an integer, not 'ten'$"):
        options.resolve(DedupOptions, settings, environ={})
    with pytest.raises(CurationError, match=r"^CURATION_DEDUP_WORKERS must be an integer, not 'many'$"):
        options.resolve(DedupOptions, settings_with(tmp_path, ""), environ={"CURATION_DEDUP_WORKERS": "many"})
    with pytest.raises(CurationError, match="must be between 0 and 16"):
        options.resolve(DedupOptions, settings_with(tmp_path, "[dedup]\nmax_distance = 40\n"), environ={})
    # A float key takes an integer; a bool is never a number.
    ok = options.resolve(FilterOptions, settings_with(tmp_path, "[filter]\nmargin_recheck = 2\n"), environ={})
    assert ok.margin_recheck == 2.0 and isinstance(ok.margin_recheck, float)
    with pytest.raises(CurationError, match="batch_size must be an integer"):
        options.resolve(FilterOptions, settings_with(tmp_path, "[filter]\nbatch_size = true\n"), environ={})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[filter]\nbatchsize = 64\n", "unknown key [filter] batchsize (known: batch_size, "),
        ("[filtr]\nbatch_size = 64\n", "unknown table [filtr] (known: annotate, catalog, crawl, dedup, engine, "),
        ("[crawl]\nper_hosts = 2\n", "unknown key [crawl] per_hosts (known: "),
        ('[engine]\nkind = "spark"\n', "[engine] kind must be one of local, ray, not 'spark'"),
    ],
)
def test_cli_refuses_unknown_keys_in_one_line(tmp_path: Path, run_cli, toml: str, message: str) -> None:
    (tmp_path / "curation.toml").write_text(toml)
    result = run_cli("--db", str(tmp_path / "c.sqlite"), "dedup", timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "c.sqlite").exists()  # nothing written


def test_known_keys_of_every_table_pass(tmp_path: Path, run_cli) -> None:
    (tmp_path / "curation.toml").write_text(
        '[catalog]\ndata_dir = "d"\n[crawl]\nper_host = 2\nconcurrency = 4\ntimeout = 5\n'
        "[filter]\nbatch_size = 8\n[dedup]\norientations = 8\n[annotate]\nvotes_needed = 2\n"
        '[engine]\nkind = "local"\n[sources.flickr]\napi_key = "x"\n'
    )
    result = run_cli("--db", str(tmp_path / "c.sqlite"), "dedup", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "8 orientations" in result.stdout
