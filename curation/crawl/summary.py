"""What one crawl did, for its closing line."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from curation.catalog import DOWNLOADED, FAILED, SKIPPED


@dataclass
class Summary:
    """Counts of one crawl."""

    found: Counter = field(default_factory=Counter)  # new candidates per source
    listed_skips: Counter = field(default_factory=Counter)  # list/folder entries not taken, by reason
    source_problems: list[str] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)  # downloaded / failed / skipped
    reasons: Counter = field(default_factory=Counter)  # failed and skipped by reason
    new_images: int = 0
    interrupted: bool = False

    def line(self, seconds: float) -> str:
        found = sum(self.found.values())
        by_source = ", ".join(f"{s} {n}" for s, n in sorted(self.found.items()))
        parts = [f"found {found} new candidates" + (f" ({by_source})" if by_source else "")]
        if self.listed_skips:
            parts.append(f"{sum(self.listed_skips.values())} list entries skipped ({counts(self.listed_skips)})")
        parts.append(f"downloaded {self.outcomes[DOWNLOADED]} ({self.new_images} new images)")
        for status in (FAILED, SKIPPED):
            reasons = Counter({r: n for (s, r), n in self.reasons.items() if s == status})
            parts.append(f"{status} {self.outcomes[status]}" + (f" ({counts(reasons)})" if reasons else ""))
        state = "interrupted" if self.interrupted else "done"
        return f"crawl {state} in {seconds:.1f}s: " + "; ".join(parts)


def counts(counter: Counter) -> str:
    return ", ".join(f"{k} {n}" for k, n in counter.most_common())
