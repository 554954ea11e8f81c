"""Settings: command line > environment > ``curation.toml`` > defaults.

``curation.toml`` holds one table per stage (``[crawl]``, ``[filter]``, ``[dedup]``,
``[annotate]``, ...) and one per image source (``[sources.<name>]`` with at least
``base_url`` and, where the source needs one, ``api_key``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation import options
from curation.errors import CurationError

DEFAULT_CONFIG_NAME = "curation.toml"
DEFAULT_DB_URL = "sqlite:///db/catalog.sqlite"
DEFAULT_DATA_DIR = "data"


@options.table("catalog")
@dataclass(frozen=True)
class CatalogTable:
    """The ``[catalog]`` keys (resolved by :func:`resolve_settings`, with their own variable names)."""

    db: str | None = None
    data_dir: str | None = None


@dataclass
class Settings:
    """Resolved settings for one run."""

    db_url: str = DEFAULT_DB_URL
    data_dir: Path = field(default_factory=lambda: Path(DEFAULT_DATA_DIR))
    config_path: Path | None = None
    toml: dict[str, Any] = field(default_factory=dict)
    engine_flags: dict[str, Any] = field(default_factory=dict)  # --engine and --ray-address

    def section(self, name: str) -> dict[str, Any]:
        """The ``[name]`` table of the config file (empty when absent)."""
        value = self.toml.get(name, {})
        if not isinstance(value, dict):
            raise CurationError(f"config {self.config_path}: [{name}] must be a table")
        return value

    def get(self, section: str, key: str, default: Any = None) -> Any:
        """One setting of a section, or ``default``."""
        return self.section(section).get(key, default)

    def source(self, name: str) -> dict[str, Any]:
        """The ``[sources.<name>]`` table (empty when absent)."""
        sources = self.section("sources")
        value = sources.get(name, {})
        if not isinstance(value, dict):
            raise CurationError(f"config {self.config_path}: [sources.{name}] must be a table")
        return value


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML config file, turning every failure into one clear line."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise CurationError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise CurationError(f"config file is a directory: {path}") from None
    except PermissionError:
        raise CurationError(f"config file is not readable: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CurationError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise CurationError(f"config file {path} is not UTF-8 text") from None


def resolve_settings(
    config: str | None = None,
    db: str | None = None,
    data_dir: str | None = None,
    environ: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Combine CLI values, environment, the config file and defaults."""
    env = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    config_path: Path | None = None
    if config:
        config_path = Path(config)
    elif env.get("CURATION_CONFIG"):
        config_path = Path(env["CURATION_CONFIG"])
    elif (cwd / DEFAULT_CONFIG_NAME).is_file():
        config_path = cwd / DEFAULT_CONFIG_NAME
    toml = read_toml(config_path) if config_path is not None else {}
    catalog = toml.get("catalog", {})
    if not isinstance(catalog, dict):
        raise CurationError(f"config {config_path}: [catalog] must be a table")
    db_url = db or env.get("CURATION_DB") or catalog.get("db") or DEFAULT_DB_URL
    data = data_dir or env.get("CURATION_DATA_DIR") or catalog.get("data_dir") or DEFAULT_DATA_DIR
    if "://" not in db_url:
        # A bare path means an SQLite file.
        db_url = f"sqlite:///{db_url}"
    return Settings(db_url=db_url, data_dir=Path(data), config_path=config_path, toml=toml)
