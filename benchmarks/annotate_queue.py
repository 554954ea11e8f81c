"""How the review page scales: queue queries at 1k vs N pairs, and a vote's round trip through
the real server vs a static file's (the baseline), all on 127.0.0.1 in one process. Then a page of
a sparse queue (N pairs kept, all but --open of them set aside by dedup): the old walk of the kept
pairs (``queue.next_pairs``, what /api/queue and the old page served) against the v1 API's page
from the maintained ``review_queue`` (``serving.next_page``), learned and hash order.

    .venv/bin/python benchmarks/annotate_queue.py [--pairs 100000] [--votes 200] [--open 0,60]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests
from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation import catalog as cat  # noqa: E402
from curation.annotate.app import ReviewConfig, create_app, make_server  # noqa: E402
from curation.annotate.consensus import FIXED, Rule  # noqa: E402
from curation.annotate.queue import describe, next_pairs, open_for, remaining  # noqa: E402
from curation.annotate.serving import HASH, LEARNED, next_page  # noqa: E402
from curation.annotate.votes import record_vote  # noqa: E402


def build(root: Path, n_pairs: int, open_pairs: int | None = None) -> cat.Catalog:
    """A catalog with ``n_pairs`` kept (image, class) pairs (rows only): all representative, or all
    but ``open_pairs`` of them duplicates that dedup set aside (their status written first)."""
    catalog = cat.open_catalog(f"sqlite:///{root / 'catalog.sqlite'}")
    with catalog.session() as s:
        wnids = list(s.scalars(select(cat.ImageClass.wnid)))
        shas = [hashlib.sha256(f"{root}-{i}".encode()).hexdigest() for i in range(n_pairs)]
        now = cat.utcnow()
        s.execute(
            insert(cat.Image),
            [
                {"sha256": h, "path": f"images/{h}.jpg", "width": 500, "height": 375, "format": "JPEG", "bytes": 1}
                for h in shas
            ],
        )
        status = [cat.REPRESENTATIVE if open_pairs is None or i < open_pairs else cat.DUPLICATE for i in range(n_pairs)]
        s.execute(
            insert(cat.DedupStatus),
            [{"sha256": h, "status": status[i], "updated_at": now} for i, h in enumerate(shas)],
        )
        s.execute(
            insert(cat.FilterVerdict),
            [
                {"sha256": h, "wnid": wnids[i % len(wnids)], "kept": True, "models": "[]", "keep_rule": "all-wrong"}
                for i, h in enumerate(shas)
            ],
        )
        s.execute(
            insert(cat.Prediction),
            [
                {
                    "sha256": h,
                    "wnid": wnids[i % len(wnids)],
                    "model": "resnet50",
                    "weights_hash": "0",
                    "rule": "restricted",
                    "pred_wnid": wnids[(i + 1) % len(wnids)],
                    "confidence": 0.5,
                    "class_prob": (i % 97) / 100,
                    "class_rank": 2,
                }
                for i, h in enumerate(shas)
            ],
        )
    return catalog


def best_ms(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def walked_count(session, annotator: str, votes_needed: int) -> int:
    """The exact count as it was before review_counts: every open pair of the queue visited."""
    stmt = open_for(select(cat.FilterVerdict.sha256), annotator, votes_needed)
    return int(session.scalar(select(func.count()).select_from(stmt.subquery())))


def queue_timings(catalog: cat.Catalog, voted: int) -> dict[str, float]:
    """ms for: first page, a page deep in the queue, the remaining count, describing 20 pairs."""
    with catalog.session() as s:
        pairs = next_pairs(s, "bench", 1, limit=voted + 40)
        for sha, wnid in pairs[:voted]:
            record_vote(s, sha, wnid, "bench", "accept")
    deep = pairs[voted + 10]
    with catalog.session() as s:
        return {
            "first page (after own votes)": best_ms(lambda: next_pairs(s, "bench", 1, limit=20)),
            "page from a cursor": best_ms(lambda: next_pairs(s, "bench", 1, limit=20, after=deep)),
            "class-ordered first page": best_ms(lambda: next_pairs(s, "bench", 1, limit=20, order="class")),
            "class-ordered page, cursor": best_ms(
                lambda: next_pairs(s, "bench", 1, limit=20, order="class", after=deep)
            ),
            "remaining count (page load)": best_ms(lambda: remaining(s, "bench", 1)),
            "same count by walking the queue": best_ms(lambda: walked_count(s, "bench", 1)),
            "describe 20 pairs": best_ms(lambda: describe(s, pairs[voted : voted + 20], "bench")),
        }


def vote_round_trips(catalog: cat.Catalog, data_dir: Path, n_votes: int) -> tuple[list[float], list[float]]:
    """Per-request ms of one decision through POST /api/v1/decisions and of GET /static/annotate.css
    on the real server."""
    server = make_server(create_app(ReviewConfig(catalog=catalog, data_dir=data_dir)), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    http = requests.Session()
    http.trust_env = False
    try:
        page = http.get(f"{base}/?annotator=speedy", timeout=60).text
        marker = '<meta name="csrf-token" content="'
        start = page.index(marker) + len(marker)
        csrf = page[start : page.index('"', start)]
        with catalog.session() as s:
            pairs = next_pairs(s, "speedy", 1, limit=n_votes)
        static, votes = [], []
        for sha, wnid in pairs:
            t0 = time.perf_counter()
            http.get(f"{base}/static/annotate.css", timeout=60).raise_for_status()
            t1 = time.perf_counter()
            http.post(
                f"{base}/api/v1/decisions",
                json={"decisions": [{"id": f"{sha}:{wnid}", "verdict": "accept"}]},
                headers={"X-CSRF-Token": csrf},
                timeout=60,
            ).raise_for_status()
            t2 = time.perf_counter()
            static.append(1000 * (t1 - t0))
            votes.append(1000 * (t2 - t1))
    finally:
        server.shutdown()
        server.server_close()
    return static, votes


def sparse_timings(root: Path, n_pairs: int, open_pairs: int) -> dict[str, float]:
    """ms per page of 20 in a queue of ``n_pairs`` kept pairs of which ``open_pairs`` are reviewable."""
    root.mkdir()
    catalog = build(root, n_pairs, open_pairs)
    fixed = Rule(FIXED, 1)
    timings = {}
    with catalog.session() as s:
        timings["old walk (/api/queue, mixed)"] = best_ms(lambda: next_pairs(s, "bench", 1, limit=20))
        timings["old walk (class order)"] = best_ms(lambda: next_pairs(s, "bench", 1, limit=20, order="class"))
    for order in (LEARNED, HASH):
        with catalog.session() as s:  # the page's writes (scores, draws) stay in this transaction
            timings[f"v1 page, {order} order"] = best_ms(lambda o=order: next_page(s, "bench", fixed, o, 20))
            s.rollback()
    catalog.engine.dispose()
    return timings


def sparse_report(tmp: str, n_pairs: int, opens: list[int]) -> None:
    print(f"\n{'page of 20, sparse queue':<34} " + " ".join(f"{f'{o} open':>10}" for o in opens))
    rows: dict[str, list[float]] = {}
    for open_pairs in opens:
        for name, ms in sparse_timings(Path(tmp, f"sparse{open_pairs}"), n_pairs, open_pairs).items():
            rows.setdefault(name, []).append(ms)
    for name, values in rows.items():
        print(f"{name:<34} " + " ".join(f"{v:>8.2f}ms" for v in values))
    for i, open_pairs in enumerate(opens):
        old, new = rows["old walk (class order)"][i], rows[f"v1 page, {LEARNED} order"][i]
        print(f"{n_pairs:,} kept, {open_pairs} open: old class walk / v1 learned page = {old / new:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--votes", type=int, default=200)
    parser.add_argument("--open", default="0,60", help="reviewable pairs of the sparse queues, comma-separated")
    parser.add_argument("--sparse-only", action="store_true", help="only the sparse-queue pages")
    args = parser.parse_args()
    if args.sparse_only:
        with tempfile.TemporaryDirectory() as tmp:
            sparse_report(tmp, args.pairs, [int(x) for x in args.open.split(",")])
        return
    with tempfile.TemporaryDirectory() as tmp:
        small_dir, big_dir = Path(tmp, "small"), Path(tmp, "big")
        small_dir.mkdir()
        big_dir.mkdir()
        t0 = time.perf_counter()
        small, big = build(small_dir, 1_000), build(big_dir, args.pairs)
        print(f"built catalogs of 1,000 and {args.pairs:,} pairs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        base_times = queue_timings(small, voted=500)
        big_times = queue_timings(big, voted=500)
        print(f"{'queue query':<32} {'1k pairs':>10} {f'{args.pairs // 1000}k pairs':>10} {'ratio':>7}")
        for name, ms in big_times.items():
            print(f"{name:<32} {base_times[name]:>8.2f}ms {ms:>8.2f}ms {ms / base_times[name]:>6.1f}x")
        walked, counted = big_times["same count by walking the queue"], big_times["remaining count (page load)"]
        print(f"exact count at {args.pairs:,} pairs: {walked / counted:.0f}x faster from review_counts than walking")
        static, votes = vote_round_trips(big, big_dir, args.votes)
        s_med, v_med = statistics.median(static), statistics.median(votes)
        v_p95 = sorted(votes)[int(0.95 * len(votes)) - 1]
        print(
            f"vote round trip on {args.pairs:,} pairs: median {v_med:.2f} ms, p95 {v_p95:.2f} ms "
            f"= {v_med / s_med:.1f}x a static file ({s_med:.2f} ms); {1000 / v_med:.0f} votes/s sequential"
        )
        sparse_report(tmp, args.pairs, [int(x) for x in args.open.split(",")])


if __name__ == "__main__":
    main()
