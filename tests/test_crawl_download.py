"""Downloading from a real 127.0.0.1 server: every broken case is rejected with a named reason,
politeness rules are kept, and the private-address guard holds on every hop."""

from __future__ import annotations

import csv
import io
import sqlite3
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

import pytest
from conftest import old_catalog
from sqlalchemy import inspect, select

from curation import catalog as cat
from curation.config import Settings
from curation.crawl import crawl
from curation.downloader import parse_retry_after, robots_directives
from curation.netguard import AddressGuard, BlockedAddress
from tests.crawl_images import broken, sample_bytes, variants, with_comment
from tests.replay_server import JPEG, ReplayServer, Reply, photo_for

STINGRAY, GOLDFINCH = "n01498041", "n01531178"
FAKE_DNS = {"metadata.test": ["169.254.169.254"], "intranet.test": ["10.0.0.7"]}


def fake_resolver(host: str, port: int) -> list[str]:
    """Test resolver: two names that point at refused addresses; no real DNS, ever."""
    return FAKE_DNS[host]


@pytest.mark.parametrize(
    "ip", ["10.0.0.7", "172.16.3.4", "192.168.1.1", "127.0.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
           "::1", "fe80::1", "fd00:ec2::254", "::ffff:10.0.0.1", "224.0.0.1"],
)  # fmt: skip
def test_guard_refuses_non_public_addresses(ip):
    with pytest.raises(BlockedAddress):
        AddressGuard(False).check(ip)


def test_guard_resolves_through_the_injected_resolver_and_honours_the_allow_list():
    guard = AddressGuard(["127.0.0.0/8"], resolver=fake_resolver)
    assert guard.resolve("127.0.0.1", 80) == ["127.0.0.1"]
    assert AddressGuard(False).resolve("93.184.216.34", 80) == ["93.184.216.34"]  # checked, never contacted
    for host in FAKE_DNS:
        with pytest.raises(BlockedAddress):
            guard.resolve(host, 80)
    with pytest.raises(BlockedAddress):
        AddressGuard(False, resolver=lambda h, p: ["93.184.216.34", "10.1.1.1"]).resolve("mixed.test", 80)


def test_retry_after_parses_seconds_and_http_dates():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(formatdate(1_000_030, usegmt=True), now=1_000_000) == pytest.approx(30)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert robots_directives(["noindex, noai", "otherbot: noimageai"]) == {"noindex", "noai", "noimageai"}


class Flaky:
    """Answers ``first()`` once, then a real photo."""

    def __init__(self, first: Callable[[], Reply]) -> None:
        self.first, self.calls = first, 0

    def __call__(self, path: str, _query: dict) -> Reply:
        self.calls += 1
        return self.first() if self.calls == 1 else Reply(body=photo_for(path), headers=JPEG)


def serve_cases(server: ReplayServer) -> dict[str, str | None]:
    """Route every case; returns url -> expected reason (None = stored)."""
    base, expected = server.base, {}
    for name, (body, reason) in broken().items():
        server.route(f"/broken/{name}", Reply(body=body, headers=JPEG))  # the header lies on purpose
        expected[f"{base}/broken/{name}"] = reason
    for name, body in variants().items():
        server.route(f"/variant/{name}", Reply(body=body, headers={"Content-Type": "application/octet-stream"}))
        expected[f"{base}/variant/{name}"] = None
    for i in range(3):
        server.route(f"/ok/{i}.jpg", Reply(body=photo_for(f"ok{i}"), headers=JPEG))
        expected[f"{base}/ok/{i}.jpg"] = None
    jpeg = sample_bytes(4)
    server.route("/cut.jpg", Reply(body=jpeg[: len(jpeg) // 2], headers=JPEG, content_length=len(jpeg)))
    expected[f"{base}/cut.jpg"] = "truncated"
    big = with_comment(jpeg, "x" * 60_000) + b"\x00" * 500_000
    server.route("/huge.jpg", Reply(body=big, headers=JPEG))
    server.route("/huge-chunked.jpg", Reply(body=big, headers=JPEG, chunked=True))
    expected[f"{base}/huge.jpg"] = expected[f"{base}/huge-chunked.jpg"] = "too_large"
    server.route("/loop/a", Reply(302, headers={"Location": "/loop/b"}))
    server.route("/loop/b", Reply(302, headers={"Location": f"{base}/loop/a"}))
    expected[f"{base}/loop/a"] = "redirect_loop"
    server.route("/moved.jpg", Reply(301, headers={"Location": "/ok/moved.jpg"}))
    server.route("/ok/moved.jpg", Reply(body=photo_for("moved"), headers=JPEG))
    expected[f"{base}/moved.jpg"] = None
    expected[f"{base}/missing.jpg"] = "http_404"
    server.route("/busy.jpg", Flaky(lambda: Reply(429, b"slow down", {"Retry-After": "1"})))
    expected[f"{base}/busy.jpg"] = None
    server.route(
        "/busy-date.jpg", Flaky(lambda: Reply(503, b"", {"Retry-After": formatdate(time.time() + 2, usegmt=True)}))
    )
    expected[f"{base}/busy-date.jpg"] = None
    server.route("/slow.jpg", Reply(body=photo_for("slow"), headers=JPEG, delay=2.5))
    expected[f"{base}/slow.jpg"] = "timeout"
    server.route(
        "/robots.txt", Reply(body=b"User-agent: *\nDisallow: /private/\n", headers={"Content-Type": "text/plain"})
    )
    server.route("/private/x.jpg", Reply(body=photo_for("private"), headers=JPEG))
    expected[f"{base}/private/x.jpg"] = "robots"
    server.route("/noai.jpg", Reply(body=photo_for("noai"), headers={**JPEG, "X-Robots-Tag": "noindex, noai"}))
    expected[f"{base}/noai.jpg"] = "noai"
    expected["http://metadata.test/latest/meta-data/"] = "private_address"
    server.route("/to-intranet.jpg", Reply(302, headers={"Location": "http://intranet.test:8080/x.jpg"}))
    expected[f"{base}/to-intranet.jpg"] = "private_address"
    same = photo_for("same bytes")
    server.route("/dup/a.jpg", Reply(body=same, headers=JPEG))
    server.route("/dup/b.jpg", Reply(body=same, headers=JPEG))
    expected[f"{base}/dup/a.jpg"] = expected[f"{base}/dup/b.jpg"] = None
    return expected


def settings_for(tmp_path: Path) -> Settings:
    crawl_table = {
        "allow_private_hosts": ["127.0.0.0/8"], "concurrency": 16, "per_host": 8, "retries": 2, "backoff": 0.05,
        "read_timeout": 1.0, "timeout": 4.0, "max_bytes": 500_000, "min_side": 64, "contact": "tests@example.org",
    }  # fmt: skip
    return Settings(
        db_url=f"sqlite:///{tmp_path / 'c.sqlite'}", data_dir=tmp_path / "data", toml={"crawl": crawl_table}
    )


def write_list(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "wnid", "license", "author"])
        writer.writerows([(url, wnid, "CC BY 4.0", "A. Photographer") for url, wnid in rows])
    return path


def test_every_broken_case_is_rejected_with_its_reason_and_the_rest_stored(tmp_path):
    with ReplayServer() as server:
        expected = serve_cases(server)
        rows = [(url, STINGRAY) for url in expected] + [
            (f"{server.base}/ok/0.jpg", GOLDFINCH),
            ("ftp://x/y.jpg", STINGRAY),
        ]
        settings = settings_for(tmp_path)
        summary = crawl(settings, urls=write_list(tmp_path / "list.csv", rows), resolver=fake_resolver)
        busy, busy_date = server.hits("/busy.jpg"), server.hits("/busy-date.jpg")
        ok0_fetches = len(server.hits("/ok/0.jpg"))
        seen_agents = {h.get("User-Agent") for _t, _p, h in server.requests}
    con = sqlite3.connect(tmp_path / "c.sqlite")
    got = {url: (status, reason) for url, status, reason in con.execute(
        "SELECT url, status, reason FROM candidates WHERE wnid = ?", (STINGRAY,))}  # fmt: skip
    for url, reason in expected.items():
        if reason is None:
            assert got[url] == ("downloaded", None), url
        else:
            assert got[url][1] == reason, url
            assert got[url][0] == (
                "skipped" if reason in {"robots", "noai", "private_address", "too_small"} else "failed"
            )
    assert summary.listed_skips == {"bad_scheme": 1}
    # 429 then OK: retried once, after the Retry-After pause (seconds and HTTP-date forms).
    assert len(busy) == 2 and busy[1] - busy[0] >= 0.9
    assert len(busy_date) == 2 and busy_date[1] - busy_date[0] >= 0.9
    # Same bytes at two URLs: stored once. Same URL for two classes: fetched once, flagged multi-class.
    dup = con.execute("SELECT count(DISTINCT image_sha256) FROM candidates WHERE url LIKE '%/dup/%'").fetchone()
    assert dup == (1,)
    assert ok0_fetches == 1
    flagged = con.execute(
        "SELECT i.multi_class, count(DISTINCT c.wnid) FROM images i JOIN candidates c ON c.image_sha256 = i.sha256 "
        "GROUP BY i.sha256 ORDER BY 2 DESC"
    ).fetchall()
    assert flagged[0] == (1, 2) and all(m == 0 for m, n in flagged[1:])
    files = sorted(
        p.relative_to(tmp_path / "data").as_posix()
        for p in (tmp_path / "data/images").rglob("*")
        if p.is_file() and p.name != ".catalog-id"
    )
    assert files == sorted(r[0] for r in con.execute("SELECT path FROM images"))
    assert con.execute("SELECT license, author FROM candidates LIMIT 1").fetchone() == ("CC BY 4.0", "A. Photographer")
    con.close()
    assert len(seen_agents) == 1 and "tests@example.org" in seen_agents.pop()


def test_guard_on_refuses_even_the_local_server(tmp_path):
    with ReplayServer() as server:
        server.route("/ok.jpg", Reply(body=photo_for("x"), headers=JPEG))
        settings = settings_for(tmp_path)
        settings.toml["crawl"]["allow_private_hosts"] = False
        summary = crawl(settings, urls=write_list(tmp_path / "l.csv", [(f"{server.base}/ok.jpg", STINGRAY)]))
        assert server.requests == []
    assert summary.reasons == {("skipped", "private_address"): 1}


def test_per_host_connection_limit_is_kept(tmp_path):
    with ReplayServer(latency=0.2) as server:
        server.prefix("/img/", lambda path, _q: Reply(body=photo_for(path), headers=JPEG))
        settings = settings_for(tmp_path)
        settings.toml["crawl"].update(per_host=2, concurrency=16)
        rows = [(f"{server.base}/img/{i}.jpg", STINGRAY) for i in range(12)]
        summary = crawl(settings, urls=write_list(tmp_path / "l.csv", rows))
        most = server.max_in_flight
    assert summary.outcomes["downloaded"] == 12
    assert most == 2  # 16 workers, one host: never more than per_host requests at once


@pytest.mark.parametrize("rule", ["per_host_rate", "crawl_delay"])
def test_requests_to_one_host_are_spaced(tmp_path, rule):
    """`crawl.per_host_rate = 5` spaces requests by 0.2 s; a robots.txt `Crawl-delay: 1` by 1 s."""
    with ReplayServer() as server:
        server.prefix("/img/", lambda path, _q: Reply(body=photo_for(path), headers=JPEG))
        settings = settings_for(tmp_path)
        if rule == "per_host_rate":
            settings.toml["crawl"]["per_host_rate"] = 5
            n, gap = 5, 0.2
        else:
            server.route("/robots.txt", Reply(body=b"User-agent: *\nCrawl-delay: 1\n"))
            n, gap = 3, 1.0
        rows = [(f"{server.base}/img/{i}.jpg", STINGRAY) for i in range(n)]
        summary = crawl(settings, urls=write_list(tmp_path / "l.csv", rows))
        times = sorted(t for t, p, _h in server.requests if p.startswith("/img/"))
    assert summary.outcomes["downloaded"] == n
    assert all(b - a >= gap * 0.9 for a, b in zip(times, times[1:], strict=False))


def test_parquet_url_list_keeps_licence_and_author(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with ReplayServer() as server:
        server.route("/p.jpg", Reply(body=photo_for("parquet"), headers=JPEG))
        table = pa.table(
            {"url": [f"{server.base}/p.jpg"], "wnid": [GOLDFINCH], "license": ["CC0"], "author": ["Ann"],
             "page_url": ["https://example.org/p"]}
        )  # fmt: skip
        pq.write_table(table, tmp_path / "list.parquet")
        summary = crawl(settings_for(tmp_path), urls=tmp_path / "list.parquet")
    con = sqlite3.connect(tmp_path / "c.sqlite")
    row = con.execute("SELECT wnid, source, license, author, page_url, status FROM candidates").fetchall()
    con.close()
    assert row == [(GOLDFINCH, "urls", "CC0", "Ann", "https://example.org/p", "downloaded")]
    assert summary.new_images == 1


def test_final_url_after_a_redirect_is_recorded_and_reused(tmp_path):
    with ReplayServer() as server:
        server.route("/old/a.jpg", Reply(302, headers={"Location": "/new/a.jpg"}))
        server.route("/new/a.jpg", Reply(body=photo_for("a"), headers=JPEG))
        server.route("/b.jpg", Reply(body=photo_for("b"), headers=JPEG))
        server.route("/gone.jpg", Reply(302, headers={"Location": "/missing.jpg"}))
        base, settings = server.base, settings_for(tmp_path)
        rows = [(f"{base}/old/a.jpg", STINGRAY), (f"{base}/b.jpg", STINGRAY), (f"{base}/gone.jpg", STINGRAY)]
        crawl(settings, urls=write_list(tmp_path / "l.csv", rows))
        # The same URL found later for another class reuses the stored image and its final URL.
        crawl(settings, urls=write_list(tmp_path / "l2.csv", [(f"{base}/old/a.jpg", GOLDFINCH)]))
        assert len(server.hits("/old/a.jpg")) == len(server.hits("/new/a.jpg")) == 1
    con = sqlite3.connect(tmp_path / "c.sqlite")
    got = {(url.removeprefix(base), wnid): (status, final) for url, wnid, status, final in con.execute(
        "SELECT url, wnid, status, final_url FROM candidates")}  # fmt: skip
    con.close()
    assert got == {
        ("/old/a.jpg", STINGRAY): ("downloaded", f"{base}/new/a.jpg"),
        ("/old/a.jpg", GOLDFINCH): ("downloaded", f"{base}/new/a.jpg"),
        ("/b.jpg", STINGRAY): ("downloaded", f"{base}/b.jpg"),  # no redirect: the requested URL
        ("/gone.jpg", STINGRAY): ("failed", None),  # nothing stored, no final URL
    }
    out = io.StringIO()
    cat.export_table(cat.open_catalog(settings.db_url), "candidates", "csv", out)
    assert f"{base}/new/a.jpg" in out.getvalue() and "final_url" in out.getvalue().splitlines()[0]


def test_catalog_at_0002_gains_final_url_and_keeps_its_rows(tmp_path):
    url = old_catalog(tmp_path / "old.sqlite", "0002", "downloaded")
    catalog = cat.open_catalog(url)
    assert cat.current_revision(catalog.engine) == cat.head_revision()
    assert "final_url" in {c["name"] for c in inspect(catalog.engine).get_columns("candidates")}
    with catalog.session() as s:
        row = s.scalars(select(cat.Candidate)).one()
        assert (row.url, row.status, row.attempts, row.final_url) == ("http://127.0.0.1/a.jpg", "downloaded", 1, None)
        row.final_url = "http://127.0.0.1/b.jpg"
    with catalog.session() as s:
        assert s.scalars(select(cat.Candidate.final_url)).one() == "http://127.0.0.1/b.jpg"
