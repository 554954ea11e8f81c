"""`curation filter --follow`: keep the models loaded and score new pairs as a crawl beside the run
commits them, in the same committed chunks as a plain run (a kill -9 loses at most the chunk in
flight; a rerun scores the rest, each pair once).

Each poll costs one O(1) query: a commit counter of the catalog (SQLite's ``data_version``, the
PostgreSQL WAL position). Only when it moved does the follower walk the pending pairs, so an idle
follower costs nothing that grows with the catalog. Between polls it waits 0.5 s, doubling up to 8 s
while nothing new arrives.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from curation import counters
from curation.dialect import commit_counter, lock_held
from curation.filter.config import FOLLOW_GRACE_S
from curation.filter.plan import Pending
from curation.filter.scorer import Scorer
from curation.filter.scoring import Scored

POLL_MIN_S = 0.5
POLL_MAX_S = 8.0
CRAWL_LOCK = "crawl"  # the catalog-wide lock a crawl holds for its whole run (curation.crawl)


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by the first Ctrl-C or SIGTERM (the chunk in flight still commits); a second
    Ctrl-C interrupts at once."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        print("filter --follow: stopping after the chunk in flight (Ctrl-C again to abort)", file=sys.stderr)

    saved = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _add(total: Scored, part: Scored) -> None:
    total.images += part.images
    total.pairs += part.pairs
    total.failed |= part.failed
    total.rechecked += part.rechecked


def follow(scorer: Scorer, *, until_crawl_ends: bool) -> int:
    """Score pending pairs, then every pair committed later, until Ctrl-C/SIGTERM or, with
    ``until_crawl_ends``, until no crawl holds the catalog's crawl lock and nothing is pending (having
    seen a crawl, or after FOLLOW_GRACE_S without one). Prints one summary line; exits 0."""
    plan = scorer.plan
    engine = plan.catalog.engine
    pending = scorer.prepare()
    since = pending.since
    total, counts = Scored(), {"kept": 0, "discarded": 0, "failed": 0}
    started, passes, seen_crawl, reason = time.monotonic(), 0, False, "Ctrl-C"
    poll, last = POLL_MIN_S, None
    with _stop_on_signals() as stop, engine.connect() as probe:
        until = " until the crawl ends" if until_crawl_ends else ""
        print(f"filter --follow: following the catalog{until}; Ctrl-C ends the run", file=sys.stderr, flush=True)
        while not stop.is_set():
            crawling = lock_held(engine, CRAWL_LOCK)  # before the walk: a crawl gone now has committed all
            seen_crawl |= crawling
            token = commit_counter(probe)
            probe.rollback()  # no transaction left open between polls
            if token != last:  # read before the walk: what commits during it moves the next token
                last, passes = token, passes + 1
                with plan.catalog.session() as session:
                    downloads = counters.current(session, counters.DOWNLOADS)
                scored = scorer.score(None, since, stop.is_set)
                _add(total, scored)
                if not stop.is_set():  # a whole pass: every pair downloaded up to ``downloads`` is scored
                    scored_pairs = pending.pairs[0] - pending.pairs[1] + total.pairs
                    scorer.all_scored(Pending((scored_pairs, 0), since, downloads))
                    since = downloads
                if scored.pairs:
                    for key, n in plan.verdicts(scorer.keys).items():
                        counts[key] += n
                    print(f"filter --follow: scored {scored.pairs} new pair(s)", file=sys.stderr)
                    poll = POLL_MIN_S
                    continue
            if until_crawl_ends and not crawling and (seen_crawl or time.monotonic() - started >= FOLLOW_GRACE_S):
                reason = "the crawl ended" if seen_crawl else f"no crawl within {FOLLOW_GRACE_S:g} s"
                break
            stop.wait(poll)
            poll = min(2 * poll, POLL_MAX_S)
    line = plan.summary(len(scorer.models), total, pending.pairs, pending.pairs[1], counts)
    print(f"{line}; followed {time.monotonic() - started:.0f} s ({passes} pass(es)) until {reason}")
    return 0
