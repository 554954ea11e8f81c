"""`curation init --kind imagenet-a|imagenet-o`: create a catalog of one dataset kind (or confirm the
kind of an existing one). The kind is recorded in ``catalog_meta`` and read by every stage; the
catalog is seeded with the kind's classes. A catalog that holds candidates or user-added classes
keeps its kind: changing it is refused with one line."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from curation.errors import CurationError
from curation.kinds import DEFAULT_KIND, KIND_META_KEY, get_kind, kind_names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("init", help="create a catalog of one dataset kind (default imagenet-a)")
    parser.add_argument("--kind", choices=kind_names(), default=DEFAULT_KIND, help=f"default {DEFAULT_KIND}")
    parser.set_defaults(func=run)


def set_kind(session: Any, name: str) -> bool:
    """Record kind ``name`` and seed its classes; True when the kind changed. Refuses to change the
    kind of a non-empty catalog; an empty one (a new catalog is seeded as ImageNet-A by its first
    migration) swaps the classes seeded for its old kind for the new kind's."""
    from sqlalchemy import delete, exists, select

    from curation.catalog import Candidate, ImageClass, Meta, SearchQuery
    from curation.classes import seed_default_classes
    from curation.kinds import catalog_kind

    old = catalog_kind(session)
    if old.name == name:
        session.merge(Meta(key=KIND_META_KEY, value=name))
        return False
    user_classes = select(ImageClass.wnid).where(ImageClass.origin != old.recipe_origin)
    if session.scalar(select(exists(select(Candidate.id)))) or session.scalar(select(exists(user_classes))):
        raise CurationError(
            f"this catalog already holds {old.name} candidates or classes: its kind cannot change to {name} "
            "(use a new catalog, e.g. --db other.sqlite)"
        )
    seeded = select(ImageClass.wnid).where(ImageClass.origin == old.recipe_origin)
    session.execute(delete(SearchQuery).where(SearchQuery.wnid.in_(seeded)))
    session.execute(delete(ImageClass).where(ImageClass.origin == old.recipe_origin))
    session.execute(delete(Meta).where(Meta.key == "seeded"))
    session.merge(Meta(key=KIND_META_KEY, value=name))
    session.flush()
    seed_default_classes(session)
    return True


def run(args: argparse.Namespace, settings: Any) -> int:
    from sqlalchemy import func, select

    from curation.catalog import ImageClass, open_catalog

    kind = get_kind(args.kind)
    catalog = open_catalog(settings.db_url)
    with catalog.session() as session:
        changed = set_kind(session, kind.name)
    with catalog.session() as session:
        n_classes = session.scalar(select(func.count()).select_from(ImageClass))
    what = "initialised as" if changed else "is"
    print(f"init: catalog {what} {kind.title} ({kind.name}), {n_classes} classes", file=sys.stderr)
    return 0
