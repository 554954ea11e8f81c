"""ATTRIBUTION.md and DATASHEET.md: credits, and what is in the release, where it came from and how it
was chosen (facts from the catalog and settings, never from the clock)."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from curation import catalog as cat
from curation.annotate.progress import progress_line, review_progress
from curation.config import Settings
from curation.release.selection import Item, Selection
from curation.release_card import auto_accept_warning

SECRET_KEY = re.compile(r"key|token|secret|password", re.IGNORECASE)
ATTRIBUTION_LICENCE = re.compile(r"\bby\b", re.IGNORECASE)


def needs_attribution(licence: str) -> bool:
    """Whether a licence string is a Creative Commons licence with the BY (attribution) clause."""
    lowered = licence.lower()
    words = re.sub(r"[-_/]", " ", lowered)
    return ("cc" in lowered or "creativecommons" in lowered) and bool(ATTRIBUTION_LICENCE.search(words))


def attribution(name: str, items: list[Item]) -> str:
    """ATTRIBUTION.md: one credit line per image, attribution-licensed ones first."""
    lines = [
        f"# Attribution for {name}",
        "",
        "Images under Creative Commons licences with the BY clause (CC BY, CC BY-SA, ...) may be shared",
        "only with credit to their authors. Each line gives the file, its title, author, licence and source page.",
        "",
        "## Images that require attribution",
        "",
    ]
    required = [i for i in items if needs_attribution(i.license)]
    others = [i for i in items if not needs_attribution(i.license)]
    lines += [_credit(i) for i in sorted(required, key=lambda i: i.file)] or ["(none)"]
    lines += ["", "## Other images", ""]
    lines += [_credit(i) for i in sorted(others, key=lambda i: i.file)] or ["(none)"]
    return "\n".join(lines) + "\n"


def _credit(item: Item) -> str:
    title = f'"{item.title}"' if item.title else "untitled"
    author = item.author or "unknown author"
    licence = item.license or "licence unknown"
    page = item.page_url or item.image_url or "no source page recorded"
    return f"- `{item.file}`: {title} by {author}, {licence}, {item.source or 'unknown source'}: <{page}>"


def datasheet_context(
    session: Session, settings: Settings, selection: Selection, votes_needed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Facts for the datasheet that come from the catalog and settings (never from the clock)."""
    from curation.annotate.agreement import agreement_stats

    references = session.execute(
        select(cat.ReferenceSet.name, cat.ReferenceSet.count, cat.ReferenceSet.complete).order_by(cat.ReferenceSet.name)
    ).all()
    annotation_dates = (
        session.execute(select(cat.Annotation.created_at).order_by(cat.Annotation.created_at)).scalars().all()
    )

    def public(section: str) -> dict[str, Any]:
        return {k: v for k, v in sorted(settings.section(section).items()) if not SECRET_KEY.search(k)}

    return {
        **ood_context(session),
        "name": args.name,
        "version": args.release_version,
        "label_space": label_space(session),
        "votes_needed": votes_needed,
        "min_per_class": args.min_per_class,
        "max_per_class": args.max_per_class,
        "dropped": selection.dropped,
        "references": references,
        "agreement": agreement_stats(session),
        "review": review_progress(session),
        "annotation_dates": (annotation_dates[0], annotation_dates[-1]) if annotation_dates else None,
        "thresholds": {"filter": public("filter"), "dedup": public("dedup"), "annotate": public("annotate")},
    }


def label_space(session: Session) -> list[tuple[str, str]]:
    """(wnid, name) of the release's label space: every catalog class, or the kind's targets."""
    from curation.kinds import catalog_kind
    from curation.synsets import read_recipe

    kind = catalog_kind(session)
    query = select(cat.ImageClass.wnid, cat.ImageClass.name).order_by(cat.ImageClass.wnid)
    if kind.ood:
        query = query.where(cat.ImageClass.wnid.in_([row["wnid"] for row in read_recipe(kind.recipe)]))
    return [tuple(row) for row in session.execute(query).all()]


def ood_context(session: Session) -> dict[str, Any]:
    """Datasheet facts of an out-of-distribution kind: the MSP threshold in force and the pool rule."""
    from curation.kinds import catalog_kind

    kind = catalog_kind(session)
    if not kind.ood:
        return {"ood": False}
    from curation.kinds.pool import POOL_RULE

    threshold = session.get(cat.Meta, "filter:min_confidence")
    return {
        "ood": True,
        "kind_title": kind.title,
        "min_confidence": threshold.value if threshold is not None else "unknown",
        "pool_rule": POOL_RULE,
    }


def _ood_selection(context: dict[str, Any], items: list[Item]) -> list[str]:
    """DATASHEET lines on how an out-of-distribution release was selected (threshold, pool rule)."""
    sources = sorted({(i.wnid, i.class_name) for i in items})
    return [
        f"- {context['kind_title']}: photos of source synsets outside ImageNet-1k, each filed under the ImageNet-1k "
        "class the filter model assigns it to (argmax over the label space's logits).",
        f"- Filter threshold: kept when the largest softmax probability over the {len(context['label_space'])} "
        f"classes (MSP) is at least {context['min_confidence']} (chosen by us; the authors did not publish theirs).",
        f"- Source pool rule (ours; the authors did not publish theirs): {context['pool_rule']}.",
        f"- Source synsets in this release: {len(sources)} ("
        + ", ".join(f"{wnid} {name}" for wnid, name in sources[:20])
        + (", ..." if len(sources) > 20 else "")
        + "; per image in manifest.csv).",
    ]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]


def _dynamic(context: dict[str, Any]) -> bool:
    return str((context.get("review") or {}).get("rule") or "").startswith("dynamic")


def datasheet(items: list[Item], context: dict[str, Any]) -> str:
    """DATASHEET.md: what is in the release, where it came from and how it was chosen."""
    sources = Counter(i.source or "unknown" for i in items)
    licences = Counter(i.license or "unknown" for i in items)
    classes = sorted({(i.label, i.folder_name or i.class_name) for i in items})
    per_class = Counter((i.label, i.source or "unknown") for i in items)
    dates = sorted(i.crawled_at for i in items if i.crawled_at is not None)
    models = Counter(f"{i.filter_model} (rule {i.filter_rule or 'unknown'})" for i in items)
    keep_rules = Counter(i.keep_rule for i in items)
    agreement = context["agreement"]
    lines = [
        f"# Datasheet: {context['name']} {context['version']}",
        "",
        "## Composition",
        "",
        f"- {len(items)} images in {len(classes)} of the catalog's {len(context['label_space'])} classes "
        "(one folder per WordNet ID; README.txt lists all of them), a test set only: no train split.",
        f"- Per class: min {min(Counter(i.label for i in items).values())}, "
        f"max {max(Counter(i.label for i in items).values())}.",
        "- Each image is a natural photo that the filter model(s) misclassified and that human annotators accepted "
        "as a clear example of its class."
        if not context.get("ood")
        else "- Each image is a natural photo of a synset outside ImageNet-1k that the filter model(s) assigned to "
        "its folder's class with high confidence and that human annotators accepted as showing its source synset "
        "clearly and none of the 1,000 ImageNet classes.",
        *[f"- {line}" for line in auto_accept_warning(context)],
        "",
        "## Collection",
        "",
        f"- Sources: {', '.join(f'{s} ({n})' for s, n in sorted(sources.items()))}.",
        f"- Crawled between {dates[0]:%Y-%m-%d} and {dates[-1]:%Y-%m-%d} (UTC)." if dates else "- Crawl dates unknown.",
    ]
    if context["annotation_dates"]:
        first, last = context["annotation_dates"]
        lines.append(f"- Annotated between {first:%Y-%m-%d} and {last:%Y-%m-%d} (UTC).")
    lines += ["", "## Selection", ""]
    if context.get("ood"):
        lines += _ood_selection(context, items)
    else:
        lines.append("- Filter: an image is kept for its class when the filter model(s) get it wrong.")
    lines += [
        f"  Models (by the images they judged): {', '.join(f'{m}: {n}' for m, n in sorted(models.items()))}.",
        f"  Keep rule: {', '.join(f'{r}: {n}' for r, n in sorted(keep_rules.items()))}.",
        "- Dedup: only cluster representatives; near-duplicates and images leaked from a reference set are left out.",
        "  Reference sets: "
        + (", ".join(f"{n} ({c} items{'' if ok else ', incomplete'})" for n, c, ok in context["references"]) or "none")
        + ".",
        f"- Annotation: accepted by a majority of {context['votes_needed']} vote(s), with more accepts than other "
        "verdicts (skips do not count); images accepted for several classes are left out."
        if not _dynamic(context)
        else "- Annotation: accepted under dynamic consensus, votes asked until the posterior that the pair is true "
        "(reviewer accuracies estimated from agreement) passed 0.98 with a human accept; images accepted for "
        "several classes are left out.",
        *(
            [f"- Review at release: {progress_line(context['review']).removeprefix('review: ')}."]
            if context.get("review")
            else []
        ),
        f"- Per-class limits: min {context['min_per_class']}, max {context['max_per_class'] or 'none'} "
        "(above the maximum a class keeps the images with the smallest sha256).",
        "- Left out at release: "
        + (", ".join(f"{n} {r}" for r, n in sorted(context["dropped"].items())) or "nothing")
        + ".",
        "",
        "### Thresholds and settings",
        "",
        "```json",
        json.dumps(context["thresholds"], indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Annotator agreement",
        "",
        f"- {len(agreement['annotators'])} annotator(s), {agreement['votes']} votes (skips not counted) on "
        f"{agreement['images']} (image, class) pairs; {agreement['images_multi']} pairs with two or more votes, "
        f"{agreement['conflicts']} of them conflicting.",
        f"- Pairwise agreement {_number(agreement['pairwise_agreement'])}; Fleiss' kappa over all verdicts "
        f"{_number(agreement['fleiss_kappa'])}, accept versus not {_number(agreement['fleiss_kappa_accept'])} "
        "(n/a: fewer than two votes per pair, or a single verdict).",
    ]
    lines += ["", "## Licences", "", *_table(["licence", "images"], [[k, v] for k, v in sorted(licences.items())])]
    source_names = sorted(sources)
    lines += [
        "",
        "## Images per class and source",
        "",
        *_table(
            ["wnid", "class", "images", *source_names],
            [
                [
                    wnid,
                    name,
                    sum(per_class[(wnid, s)] for s in source_names),
                    *[per_class[(wnid, s)] for s in source_names],
                ]
                for wnid, name in classes
            ],
        ),
    ]
    return "\n".join(lines) + "\n"
