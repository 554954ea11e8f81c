"""`curation filter` without waiting: a run with nothing to score never imports torch, and
`--follow` scores pairs while a crawl beside it stores them (real photos, real Lite0 weights, real
HTTP on loopback, real SQLite), with the kill -9 and Ctrl-C guarantees of a plain run."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLES
from tests.replay_server import JPEG, ReplayServer, Reply, photo_for

WNIDS = ("n01498041", "n01531178", "n01534433")


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATION_")}
    env.update({"CURATION_DB": f"sqlite:///{work / 'catalog.sqlite'}", "CURATION_DATA_DIR": str(work / "data")})
    return {**env, "PYTHONPATH": str(REPO)}


def _cli(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "curation", *args], cwd=work, env=_env(work), capture_output=True, text=True, timeout=600
    )


def _filter_args(checkpoint: Path) -> tuple[str, ...]:
    return ("filter", "--model", "tf_efficientnet_lite0", "--checkpoint", str(checkpoint), "--device", "cpu")


def _photos(dest: Path, n: int, skip: int = 0) -> Path:
    dest.mkdir()
    for path in sorted(SAMPLES.glob("*.JPEG"))[skip : skip + n]:
        shutil.copy(path, dest / path.name)
    return dest


def _db(work: Path) -> sqlite3.Connection:
    return sqlite3.connect(work / "catalog.sqlite", timeout=30)


def _count(work: Path, sql: str) -> int:
    try:
        with _db(work) as con:
            return con.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def _verdicts(work: Path) -> set[tuple[str, str, int]]:
    with _db(work) as con:
        return set(con.execute("SELECT sha256, wnid, kept FROM filter_verdicts").fetchall())


NO_TORCH_PROBE = """
import json, sys
from curation.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "imported": sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)}))
"""


def _probe(work: Path, *args: str) -> tuple[dict, str]:
    """Run the CLI in a fresh interpreter; returns what it imported and its output."""
    run = subprocess.run(
        [sys.executable, "-c", NO_TORCH_PROBE, *args], cwd=work, env=_env(work), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    *lines, last = run.stdout.strip().splitlines()
    return json.loads(last), "\n".join(lines)


def test_a_run_with_nothing_to_score_never_imports_torch(tmp_path, lite0_checkpoint):
    assert _cli(tmp_path, "crawl", "--folder", str(_photos(tmp_path / "a", 6))).returncode == 0
    args = _filter_args(lite0_checkpoint)
    first, out = _probe(tmp_path, *args)  # weights never seen: the model loads and records them
    assert first == {"code": 0, "imported": ["timm", "torch", "torchvision"]} and "scored 6 image(s)" in out
    again, out = _probe(tmp_path, *args)
    assert again == {"code": 0, "imported": []}
    assert "scored 0 image(s)" in out and "6 pair(s) already scored" in out and "verdicts (all-wrong)" in out
    keep_any, out = _probe(tmp_path, *args, "--keep", "any-wrong")  # verdicts follow without a model
    assert keep_any["imported"] == [] and "verdicts (any-wrong)" in out

    assert _cli(tmp_path, "crawl", "--folder", str(_photos(tmp_path / "b", 2, skip=6))).returncode == 0
    new_pairs, out = _probe(tmp_path, *args)  # new pairs: work, so the model loads
    assert "torch" in new_pairs["imported"] and "scored 2 image(s)" in out
    other = tmp_path / "other.pth"  # other bytes of a checkpoint: never mistaken for the known weights
    import torch

    state = torch.load(lite0_checkpoint)
    state["conv_stem.weight"] = state["conv_stem.weight"] * 0.5
    torch.save(state, other)
    other_weights, out = _probe(tmp_path, *_filter_args(other))
    assert "torch" in other_weights["imported"] and "scored 8 image(s)" in out
    # A changed class set loads the model too: test_filter's keep-rule test sees its rescoring message.


def _url_list(work: Path, server: ReplayServer, n: int) -> Path:
    listing = work / "list.tsv"
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["url", "wnid"])
        writer.writerows((f"{server.base}/img/{i}.jpg", WNIDS[i % 3]) for i in range(n))
    (work / "curation.toml").write_text(
        '[crawl]\nallow_private_hosts = true\nconcurrency = 2\nper_host = 2\nretries = 0\ncontact = "t@example.org"\n'
    )
    return listing


def _start_follower(work: Path, checkpoint: Path, *extra: str) -> subprocess.Popen:
    """A follower that has loaded its model and is polling the catalog."""
    args = [sys.executable, "-m", "curation", *_filter_args(checkpoint), "--follow", *extra]
    proc = subprocess.Popen(
        args, cwd=work, env=_env(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    for line in proc.stderr:
        if "filter --follow: following the catalog" in line:
            return proc
    raise AssertionError(f"the follower ended before following: {proc.wait()}")


def test_follow_beside_a_crawl_scores_every_pair_once_and_ends_with_it(tmp_path, lite0_checkpoint):
    n = 45
    with ReplayServer(latency=0.4) as server:  # ~9 s of crawl at 2 connections
        server.prefix("/img/", lambda path, _q: Reply(body=photo_for(path), headers=JPEG))
        listing = _url_list(tmp_path, server, n)
        follower = _start_follower(tmp_path, lite0_checkpoint, "--until-crawl-ends", "--batch-size", "4")
        crawl = subprocess.Popen(
            [sys.executable, "-m", "curation", "--config", str(tmp_path / "curation.toml"), "crawl", "--urls",
             str(listing)], cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        scored_while_storing = 0  # pairs scored at a moment the crawl had not yet stored all n images
        while crawl.poll() is None:
            scored = _count(tmp_path, "SELECT count(*) FROM predictions")
            if _count(tmp_path, "SELECT count(*) FROM candidates WHERE status = 'downloaded'") < n:
                scored_while_storing = max(scored_while_storing, scored)
            time.sleep(0.2)
        assert crawl.returncode == 0, crawl.stderr.read()
        out, err = follower.communicate(timeout=120)  # ends by itself
    assert follower.returncode == 0, err
    assert 0 < scored_while_storing < n  # it scored while the crawl was still storing
    assert "until the crawl ended" in out and f"scored {n} image(s) ({n} pair(s)" in out
    with _db(tmp_path) as con:
        pairs = con.execute("SELECT DISTINCT image_sha256, wnid FROM candidates WHERE status = 'downloaded'").fetchall()
        predicted = con.execute("SELECT sha256, wnid, count(*) FROM predictions GROUP BY 1, 2").fetchall()
    assert len(pairs) == n and {(s, w) for s, w, _ in predicted} == set(pairs) and {c for *_, c in predicted} == {1}
    assert {(s, w) for s, w, _ in _verdicts(tmp_path)} == set(pairs)


def test_kill_9_of_the_follower_then_a_rerun_gives_the_verdicts_of_one_plain_run(tmp_path, lite0_checkpoint):
    followed, plain = tmp_path / "followed", tmp_path / "plain"
    followed.mkdir()
    assert _cli(followed, "crawl", "--folder", str(_photos(tmp_path / "photos", 48))).returncode == 0
    plain.mkdir()
    shutil.copy(followed / "catalog.sqlite", plain / "catalog.sqlite")
    shutil.copytree(followed / "data", plain / "data")
    chunk = ("--commit-every", "8", "--batch-size", "4", "--workers", "1")
    follower = _start_follower(followed, lite0_checkpoint, *chunk)
    deadline = time.monotonic() + 120
    while _count(followed, "SELECT count(*) FROM predictions") < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(follower.pid, signal.SIGKILL)  # the follower and its decode worker
    follower.wait(timeout=30)
    killed_at = _count(followed, "SELECT count(*) FROM predictions")
    assert 8 <= killed_at < 48 and killed_at % 8 == 0  # whole chunks only, killed mid-run
    rerun = _cli(followed, *_filter_args(lite0_checkpoint))
    assert rerun.returncode == 0 and f"scored {48 - killed_at} image(s)" in rerun.stdout, rerun.stderr
    assert _cli(plain, *_filter_args(lite0_checkpoint)).returncode == 0
    assert _verdicts(followed) == _verdicts(plain) and len(_verdicts(plain)) == 48
    assert _count(followed, "SELECT count(*) FROM predictions") == 48

    idle = _start_follower(followed, lite0_checkpoint)  # Ctrl-C ends a follower: exit 0 and its summary
    idle.send_signal(signal.SIGINT)
    out, err = idle.communicate(timeout=60)
    assert idle.returncode == 0 and "until Ctrl-C" in out and "scored 0 image(s)" in out, err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--until-crawl-ends",), "--until-crawl-ends goes with --follow"),
        (("--follow", "--limit", "5"), "does not go with --limit"),
    ],
)
def test_follow_flags_are_checked(tmp_path, flags, message):
    run = _cli(tmp_path, "filter", *flags)
    (line,) = run.stderr.strip().splitlines()
    assert run.returncode == 1 and line.startswith("curation: error: ") and message in line


def test_a_rerun_reads_only_the_pairs_downloaded_since_the_last_complete_run(tmp_path, lite0_checkpoint):
    """After a complete run the catalog records the downloads sequence value up to which every pair is
    scored; the next run counts and pages only candidates downloaded later (ix_candidates_download_seq),
    so a prediction removed behind its back is not even seen, while every new pair is, including new
    classes of bytes already stored."""
    args = _filter_args(lite0_checkpoint)
    assert _cli(tmp_path, "crawl", "--folder", str(_photos(tmp_path / "a", 6))).returncode == 0
    assert _cli(tmp_path, *args).returncode == 0
    with _db(tmp_path) as con:
        (record,) = con.execute("SELECT value FROM catalog_meta WHERE key LIKE 'filter-through:%'").fetchone()
        assert json.loads(record) == {"downloads": 1, "pairs": 6}
        con.execute("DELETE FROM predictions WHERE id = (SELECT min(id) FROM predictions)")
    again = tmp_path / "again"  # the same bytes under another class: a new pair of a stored image
    again.mkdir()
    first = sorted((tmp_path / "a").iterdir())[0]
    shutil.copy(first, again / f"{WNIDS[2] if first.stem != WNIDS[2] else WNIDS[1]}.JPEG")
    assert _cli(tmp_path, "crawl", "--folder", str(again)).returncode == 0
    assert _cli(tmp_path, "crawl", "--folder", str(_photos(tmp_path / "b", 2, skip=6))).returncode == 0
    rerun = _cli(tmp_path, *args)
    assert rerun.returncode == 0, rerun.stderr
    assert "scored 3 image(s) (3 pair(s)" in rerun.stdout and "6 pair(s) already scored" in rerun.stdout
    assert _count(tmp_path, "SELECT count(*) FROM predictions") == 8  # 6 - 1 removed + 3
    with _db(tmp_path) as con:
        seqs = dict(con.execute("SELECT download_seq, count(*) FROM candidates GROUP BY 1").fetchall())
    assert seqs == {1: 6, 2: 1, 3: 2}  # one value per crawl batch, on every downloaded candidate
