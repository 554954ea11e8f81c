"""Typed options: each ``curation.toml`` table is declared once, by a dataclass, and resolved once.

A stage declares its table with :func:`table` on a dataclass whose fields are the table's keys
(type hints give the types, field defaults the defaults)::

    @options.table("dedup")
    @dataclass(frozen=True)
    class DedupOptions:
        workers: int | None = None

and reads it with ``options.resolve(DedupOptions, settings, args)``: command-line flag (the
attribute of the same name on ``args`` or key of a mapping, when not None) > environment (``CURATION_DEDUP_WORKERS``)
> ``curation.toml`` > the field's default, each value checked against its type. Several dataclasses
may declare parts of one table (the crawl loop and the downloader share ``[crawl]``).
:func:`check_tables` refuses, with one line naming it, a key or table that nothing declares.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from curation.errors import CurationError

T = TypeVar("T")

# Modules whose dataclasses declare tables (imported before a config file is checked).
DECLARING_MODULES = (
    "curation.config",
    "curation.engine",
    "curation.crawl",
    "curation.downloader",
    "curation.filter",
    "curation.dedup",
    "curation.annotate",
    "curation.store.location",
)
# Table name -> the dataclasses that declare its keys.
TABLES: dict[str, list[type]] = {}
# Keys a table accepts besides its dataclasses' fields (aliases read by hand).
EXTRA_KEYS: dict[str, set[str]] = {}
# Tables whose sub-tables each hold free-form keys (one per image source, checked by the source).
FREE_FORM = {"sources"}
TRUE_WORDS, FALSE_WORDS = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def table(name: str, *, extra_keys: tuple[str, ...] = ()) -> Any:
    """Class decorator: the dataclass declares keys of the ``[name]`` table."""

    def register(cls: type[T]) -> type[T]:
        TABLES.setdefault(name, []).append(cls)
        EXTRA_KEYS.setdefault(name, set()).update(extra_keys)
        cls.__options_table__ = name  # type: ignore[attr-defined]
        return cls

    return register


def known_keys(name: str) -> set[str]:
    keys = set(EXTRA_KEYS.get(name, ()))
    for cls in TABLES.get(name, ()):
        keys.update(f.name for f in dataclasses.fields(cls))
    return keys


def check_tables(toml: Mapping[str, Any], origin: str) -> None:
    """Refuse the first table or key of a parsed config file that no dataclass declares."""
    for module in DECLARING_MODULES:
        importlib.import_module(module)
    for name, value in toml.items():
        if name in FREE_FORM:
            continue
        if name not in TABLES:
            raise CurationError(f"{origin}: unknown table [{name}] (known: {', '.join(sorted([*TABLES, *FREE_FORM]))})")
        if not isinstance(value, dict):
            raise CurationError(f"{origin}: [{name}] must be a table")
        unknown = sorted(set(value) - known_keys(name))
        if unknown:
            raise CurationError(
                f"{origin}: unknown key [{name}] {unknown[0]} (known: {', '.join(sorted(known_keys(name)))})"
            )


def resolve(cls: type[T], settings: Any, flags: Any = None, environ: Mapping[str, str] | None = None) -> T:
    """An instance of ``cls`` from flags > environment > the config table > defaults."""
    name = cls.__options_table__  # type: ignore[attr-defined]
    env = os.environ if environ is None else environ
    section = settings.section(name)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        flag = flags.get(field.name) if isinstance(flags, Mapping) else getattr(flags, field.name, None)
        env_name = f"CURATION_{name.upper()}_{field.name.upper()}"
        if flag is not None and flag != []:
            values[field.name] = _coerce(flag, hints[field.name], f"--{field.name.replace('_', '-')}", False)
        elif env.get(env_name):
            values[field.name] = _coerce(env[env_name], hints[field.name], env_name, True)
        elif field.name in section:
            values[field.name] = _coerce(section[field.name], hints[field.name], f"[{name}] {field.name}", False)
    try:
        return cls(**values)
    except ValueError as exc:
        raise CurationError(str(exc)) from None


def _coerce(value: Any, hint: Any, origin: str, from_text: bool) -> Any:
    """``value`` as type ``hint`` (int, float, str, bool, list[str], tuple[str, ...], unions of
    these and None); text from the environment is parsed first."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is type(None):
            continue
        converted = _convert(value, option, from_text)
        if converted is not _FAIL:
            return converted
    names = " or ".join(_type_name(o) for o in options if o is not type(None))
    raise CurationError(f"{origin} must be {names}, not {value!r}")


_FAIL = object()


def _convert(value: Any, kind: Any, from_text: bool) -> Any:
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        if from_text and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        elif isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            return _FAIL
        return origin(value)
    if kind is bool:
        if from_text and isinstance(value, str) and value.lower() in TRUE_WORDS | FALSE_WORDS:
            return value.lower() in TRUE_WORDS
        return value if isinstance(value, bool) else _FAIL
    if from_text and isinstance(value, str) and kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            return _FAIL
    if isinstance(value, bool):
        return _FAIL
    if kind is float and isinstance(value, int | float):
        return float(value)
    return value if isinstance(value, kind) else _FAIL


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) in (list, tuple):
        return "a list of strings"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, str(kind))
