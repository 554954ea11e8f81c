"""The web sources against a 127.0.0.1 server replaying responses really recorded from their APIs."""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import ProxyHandler, build_opener

import pytest

from curation import catalog as cat
from curation.config import Settings
from curation.crawl import crawl
from curation.downloader import Downloader, FetchConfig
from curation.netguard import AddressGuard
from curation.sources import make_source
from curation.sources.api import ApiClient
from tests.replay_server import ReplayServer, Reply, fixture, inat_observations, json_reply, rewrite

W = "n01498041"  # the class the replayed answers are filed under
TAXON_QUERY = "Nicrophorus vespilloides"  # matches a taxon of the recorded /v1/taxa answer


def only_loopback(host: str, port: int) -> list[str]:
    """Test resolver: nothing but the replay server resolves (no real DNS, no other address)."""
    raise AssertionError(f"unexpected DNS lookup of {host}")


def settings_for(tmp_path: Path, server: ReplayServer, **crawl_extra) -> Settings:
    rate = {"rate": 1000}
    toml = {
        "crawl": {
            "allow_private_hosts": ["127.0.0.0/8"],
            "concurrency": 8,
            "per_host": 4,
            "retries": 2,
            "backoff": 0.05,
            "read_timeout": 1.0,
            "timeout": 3.0,
            "contact": "crawler-tests@example.org",
            **crawl_extra,
        },
        "sources": {
            "inaturalist": {"base_url": f"{server.base}/inat/v1", **rate},
            "flickr": {
                "base_url": f"{server.base}/flickr/services/rest/",
                "api_key": "test-key",
                "static_base": f"{server.base}/live.staticflickr.com",
                **rate,
            },
            "commons": {"base_url": f"{server.base}/commons/w/api.php", **rate},
            "openverse": {"base_url": f"{server.base}/openverse/v1", **rate},
            "duckduckgo": {"base_url": f"{server.base}/ddg", **rate},
        },
    }
    return Settings(db_url=f"sqlite:///{tmp_path / 'c.sqlite'}", data_dir=tmp_path / "data", toml=toml)


def set_queries(settings: Settings, wnid: str, queries: list[str]) -> None:
    catalog = cat.open_catalog(settings.db_url)
    with catalog.session() as s:
        s.query(cat.SearchQuery).filter_by(wnid=wnid).delete()
        s.add_all(cat.SearchQuery(wnid=wnid, query=q, position=i) for i, q in enumerate(queries))


def candidates(settings: Settings, source: str) -> dict[str, dict]:
    con = sqlite3.connect(settings.db_url.removeprefix("sqlite:///"))
    con.row_factory = sqlite3.Row
    rows = con.execute("SELECT * FROM candidates WHERE source = ?", (source,)).fetchall()
    con.close()
    return {r["source_id"]: dict(r) for r in rows}


def assert_stored(settings: Settings, rows: dict[str, dict]) -> None:
    con = sqlite3.connect(settings.db_url.removeprefix("sqlite:///"))
    paths = dict(con.execute("SELECT sha256, path FROM images").fetchall())
    con.close()
    for row in rows.values():
        assert row["status"] == "downloaded", row
        data = (settings.data_dir / paths[row["image_sha256"]]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["image_sha256"]


def replay_apis(server: ReplayServer) -> None:
    base = server.base
    observations = [
        *rewrite(fixture("inaturalist/v1_observations_search_page1.json"), base)["results"],
        *rewrite(fixture("inaturalist/v1_observations_by_id_open_data_urls.json"), base)["results"],
    ]
    server.route("/inat/v1/taxa", lambda _p, q: json_reply(fixture("inaturalist/v1_taxa_search_q_vespi.json")))
    server.route("/inat/v1/observations", inat_observations(observations, "70118"))
    server.route(
        "/flickr/services/rest/",
        lambda _p, q: (
            json_reply(rewrite(fixture("flickr/photos_search_extras_page1.json"), base))
            if q.get("api_key") == ["test-key"]
            else Reply(403)
        ),
    )
    first = fixture("wikimedia_commons/query_generator_search_formatversion2_thumb330_trimmed.json")
    second = fixture("wikimedia_commons/query_allimages_imageinfo_continue_1.json")
    third = fixture("wikimedia_commons/query_allimages_imageinfo_continue_2.json")
    by_continuation = {
        None: first,
        second["continue"]["gucontinue"]: third,
        third["continue"]["gucontinue"]: {"batchcomplete": ""},  # the documented end of a batch
    }

    def commons(_path: str, q: dict) -> Reply:
        if "gsroffset" in q and "gucontinue" not in q:
            return json_reply(rewrite(second, base))
        return json_reply(rewrite(by_continuation[(q.get("gucontinue") or [None])[0]], base))

    server.route("/commons/w/api.php", commons)
    pages = {
        "1": fixture("openverse/images_search_page3_trimmed_tape.json")["res"]["body"],
        "2": fixture("openverse/images_search_no_results_tape.json")["res"]["body"],
    }
    server.route("/openverse/v1/images/", lambda _p, q: json_reply(rewrite(pages[q["page"][0]], base)))
    server.serve_images()


def test_recorded_api_answers_become_stored_images_with_provenance(tmp_path):
    with ReplayServer() as server:
        replay_apis(server)
        settings = settings_for(tmp_path, server)
        set_queries(settings, W, [TAXON_QUERY])
        summary = crawl(
            settings, classes=[W], sources=["inaturalist", "flickr", "commons", "openverse"], per_class=100,
            resolver=only_loopback,
        )  # fmt: skip
    assert summary.source_problems == []

    inat = candidates(settings, "inaturalist")
    page1 = fixture("inaturalist/v1_observations_search_page1.json")["results"][0]
    by_id = fixture("inaturalist/v1_observations_by_id_open_data_urls.json")["results"][0]
    assert set(inat) == {str(p["id"]) for p in page1["photos"] + by_id["photos"]}
    first = inat["92152429"]
    assert first["url"] == f"{server.base}/static.inaturalist.org/photos/92152429/large.jpg?1598551272"
    assert (first["author"], first["license"], first["page_url"]) == (
        "samroom", "CC BY-NC", "https://www.inaturalist.org/observations/57754375",
    )  # fmt: skip
    assert inat["24355315"]["url"].endswith("/inaturalist-open-data.s3.amazonaws.com/photos/24355315/large.jpeg")
    assert inat["24355315"]["author"] == "Nicolas Noé" and inat["24355315"]["query"] == TAXON_QUERY
    assert_stored(settings, inat)

    flickr = candidates(settings, "flickr")
    recorded = fixture("flickr/photos_search_extras_page1.json")["photos"]["photo"]
    assert set(flickr) == {p["id"] for p in recorded}
    for photo in recorded:
        row = flickr[photo["id"]]
        assert row["license"] == "CC BY-NC-SA 2.0" and row["author"] == photo["ownername"]
        assert row["page_url"] == f"https://www.flickr.com/photos/{photo['owner']}/{photo['id']}/"
        expected = photo.get(
            "url_l", f"https://live.staticflickr.com/{photo['server']}/{photo['id']}_{photo['secret']}_z.jpg"
        )
        assert row["url"] == expected.replace("https://", f"{server.base}/")
    assert sum("url_l" not in p for p in recorded) == 2
    assert_stored(settings, flickr)

    commons = candidates(settings, "commons")
    wanted = {
        str(p["pageid"])
        for p in fixture("wikimedia_commons/query_allimages_imageinfo_continue_1.json")["query"]["pages"].values()
    }
    first_batch = fixture("wikimedia_commons/query_generator_search_formatversion2_thumb330_trimmed.json")["query"][
        "pages"
    ]
    wanted |= {str(p["pageid"]) for p in first_batch}
    assert set(commons) == wanted  # pages of the imageinfo-less continuation were merged, not dropped
    hospital = commons["121371"]
    assert hospital["license"] == "Public domain" and hospital["author"].startswith("Tomasz Sienicki")
    assert hospital["page_url"] == "https://commons.wikimedia.org/wiki/File:Hospital_room_ubt.jpeg"
    assert "/thumb.wikimedia.org/" in hospital["url"] and "330px-" in hospital["url"]
    assert_stored(settings, commons)

    openverse = candidates(settings, "openverse")
    results = fixture("openverse/images_search_page3_trimmed_tape.json")["res"]["body"]["results"]
    assert set(openverse) == {r["id"] for r in results}
    for r in results:
        row = openverse[r["id"]]
        assert row["author"] == r["creator"] and row["page_url"] == r["foreign_landing_url"]
        assert row["license"] == f"CC {r['license'].upper()} {r['license_version']}"
    assert_stored(settings, openverse)
    assert summary.outcomes["downloaded"] == len(inat) + len(flickr) + len(commons) + len(openverse)


def test_rerun_asks_only_for_what_is_missing(tmp_path):
    with ReplayServer() as server:
        replay_apis(server)
        settings = settings_for(tmp_path, server)
        crawl(settings, classes=[W], sources=["flickr"], per_class=10, resolver=only_loopback)
        assert len(candidates(settings, "flickr")) == 10
        calls = len(server.hits("/flickr/services/rest/"))
        crawl(settings, classes=[W], sources=["flickr"], per_class=10, resolver=only_loopback)
        assert len(server.hits("/flickr/services/rest/")) == calls  # target met: no API call
        crawl(settings, classes=[W], sources=["flickr"], per_class=20, resolver=only_loopback)
    assert len(candidates(settings, "flickr")) == 20


@pytest.mark.parametrize(
    "source, answer, expected",
    [
        (
            "flickr",
            Reply(
                200,
                json.loads(
                    (
                        Path(__file__).parent.parent.parent
                        / "shared/sources/fixtures/flickr/error_201_malformed_json_body_cassette.json"
                    ).read_text()
                )["response"]["body_text"].encode(),
                {"Content-Type": "text/xml; charset=utf-8"},
            ),
            "not a JSON response",
        ),
        (
            "openverse",
            Reply(429, json.dumps(fixture("openverse/images_search_429_throttled_tape.json")["res"]["body"]).encode()),
            "Expected available in 3600 seconds",
        ),
    ],
)
def test_recorded_api_errors_stop_the_source_with_one_line(tmp_path, capsys, source, answer, expected):
    with ReplayServer() as server:
        server.route("/flickr/services/rest/", answer)
        server.route("/openverse/v1/images/", answer)
        settings = settings_for(tmp_path, server)
        summary = crawl(settings, classes=[W, "n01531178"], sources=[source], per_class=5, resolver=only_loopback)
    assert len(summary.source_problems) == 1
    assert summary.source_problems[0].startswith(f"source {source} stopped at {W}:")
    assert expected in summary.source_problems[0]
    if source == "openverse":  # an hour's wait is more than crawl.max_retry_after: no pointless retries
        assert len(server.hits("/openverse/v1/images/")) == 1
    assert f"curation crawl: source {source} stopped" in capsys.readouterr().err


def test_openverse_empty_answer_is_no_candidates(tmp_path):
    with ReplayServer() as server:
        server.route(
            "/openverse/v1/images/", json_reply(fixture("openverse/images_search_no_results_tape.json")["res"]["body"])
        )
        settings = settings_for(tmp_path, server)
        summary = crawl(settings, classes=[W], sources=["openverse"], per_class=5, resolver=only_loopback)
    assert summary.source_problems == [] and sum(summary.found.values()) == 0
    assert len(server.hits("/openverse/v1/images/")) == 1


def test_duckduckgo_best_effort_token_then_json_pages(tmp_path):
    """No DuckDuckGo answer was ever recorded; this replays the shape documented in sources.md."""

    def results(start: int, n: int) -> list[dict]:
        return [
            {"height": 626, "width": 626, "image": f"{server.base}/live.staticflickr.com/ddg/{i}.jpg",
             "thumbnail": "https://tse2.mm.bing.net/th/id/OIP.x?pid=Api", "title": f"image {i}",
             "url": f"https://www.example.com/page{i}.htm", "source": "Bing"}
            for i in range(start, start + n)
        ]  # fmt: skip

    def ijs(_p: str, q: dict) -> Reply:
        if q.get("vqd") != ["4-123456789"]:
            return Reply(403)
        if q["s"] == ["0"]:
            return json_reply({"ads": None, "next": "i.js?q=ray&o=json&p=1&s=100&u=bing&f=,,,,,&l=us-en&vqd=4-123456789",
                               "query": "ray", "results": results(0, 3) + results(1, 1)})  # fmt: skip
        return json_reply({"ads": None, "query": "ray", "results": results(3, 2)})

    with ReplayServer() as server:
        server.route(
            "/ddg/", Reply(200, b'<html><script>vqd="4-123456789";</script></html>', {"Content-Type": "text/html"})
        )
        server.route("/ddg/i.js", ijs)
        server.serve_images()
        settings = settings_for(tmp_path, server)
        summary = crawl(settings, classes=[W], sources=["duckduckgo"], per_class=50, resolver=only_loopback)
    rows = candidates(settings, "duckduckgo")
    assert summary.source_problems == [] and len(rows) == 5  # the repeated image counted once
    assert {r["license"] for r in rows.values()} == {None} and {r["status"] for r in rows.values()} == {"downloaded"}


def synthesized_observations(base: str, n: int) -> list[dict]:
    """``n`` observations in the recorded shape, each with its own id and photo; every 5th photo is
    all rights reserved (licence ``null``) and must be left out."""
    template = fixture("inaturalist/v1_observations_search_page1.json")["results"][0]
    observations = []
    for i in range(n):
        observation = copy.deepcopy(template)
        observation["id"] = 60_000_000 + 7 * i  # ids with gaps, as real ones
        observation["uri"] = f"https://www.inaturalist.org/observations/{observation['id']}"
        photo = copy.deepcopy(template["photos"][0])
        photo["id"] = 90_000_000 + i
        photo["url"] = f"https://static.inaturalist.org/photos/{photo['id']}/square.jpg?1598551272"
        photo["license_code"] = None if i % 5 == 4 else photo["license_code"]
        observation["photos"] = [photo]
        observation["observation_photos"][0]["photo"] = photo
        observations.append(observation)
    return rewrite(observations, base)


def test_inaturalist_reads_past_the_result_cap_with_id_below(tmp_path):
    with ReplayServer() as server:
        observations = synthesized_observations(server.base, 57)
        api = inat_observations(observations, "70118", cap=20)
        asked: list[dict] = []
        server.route("/inat/v1/taxa", json_reply(fixture("inaturalist/v1_taxa_search_q_vespi.json")))
        server.route("/inat/v1/observations", lambda p, q: (asked.append(q), api(p, q))[1])
        with pytest.raises(HTTPError) as refused:  # the cap is real: page paging ends at record 20
            no_proxy = build_opener(ProxyHandler({}))  # straight to 127.0.0.1, whatever the environment says
            no_proxy.open(f"{server.base}/inat/v1/observations?taxon_id=70118&per_page=10&page=3", timeout=5)
        assert refused.value.code == 403 and b'"status": 403' in refused.value.read()
        asked.clear()
        settings = settings_for(tmp_path, server)
        config = {**settings.source("inaturalist"), "per_page": 10}
        guard = AddressGuard(["127.0.0.0/8"], only_loopback)
        client = ApiClient(
            Downloader(FetchConfig.from_settings(settings.section("crawl")), guard), "inaturalist", config
        )
        source = make_source("inaturalist", config, client)

        found = list(source.search(W, [TAXON_QUERY], 1000))
        ids = [f.source_id for f in found]
        open_ids = {str(o["photos"][0]["id"]) for o in observations if o["photos"][0]["license_code"]}
        assert len(ids) == len(set(ids)) == len(open_ids) == 46 and set(ids) == open_ids
        assert {f.license for f in found} == {"CC BY-NC"}
        assert len(asked) == 6  # 57 observations, 10 a page: the 6th page holds all that is left
        assert all(q.get("page", ["1"]) == ["1"] for q in asked)
        assert (asked[0].get("order_by"), asked[0].get("order")) == (["id"], ["desc"]) and "id_below" not in asked[0]
        below = [int(q["id_below"][0]) for q in asked[1:]]  # newest first: the smallest id of each page
        assert below == [observations[-10 * k]["id"] for k in range(1, 6)]
        assert ids[:8] == [str(o["photos"][0]["id"]) for o in observations[::-1] if o["photos"][0]["license_code"]][:8]

        asked.clear()
        assert len(list(source.search(W, [TAXON_QUERY], 15))) == 15
        assert len(asked) == 2  # 8 open photos a page: the second page reaches the limit, no third request


def test_inaturalist_stops_with_one_line_when_id_below_is_ignored(tmp_path):
    with ReplayServer() as server:
        recorded = rewrite(fixture("inaturalist/v1_observations_search_page1.json"), server.base)
        stuck = {**recorded, "total_results": 50_000}  # the same page again and again, more always promised
        server.route("/inat/v1/taxa", json_reply(fixture("inaturalist/v1_taxa_search_q_vespi.json")))
        server.route("/inat/v1/observations", json_reply(stuck))
        server.serve_images()
        settings = settings_for(tmp_path, server)
        set_queries(settings, W, [TAXON_QUERY])
        summary = crawl(settings, classes=[W], sources=["inaturalist"], per_class=100, resolver=only_loopback)
        assert len(server.hits("/inat/v1/observations")) == 2
    assert summary.source_problems == [
        f"source inaturalist stopped at {W}: observation paging stuck at id_below=57754375"
    ]
