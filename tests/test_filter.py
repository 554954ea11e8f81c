"""`curation filter` on real photos imported with `curation crawl --folder`, real EfficientNet-Lite0
weights, real SQLite: the kept set is exactly what an independent plain-timm fp32 run says."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLES, VAL
from PIL import Image

from curation.inference import load_model
from curation.synsets import imagenet_a_reference

VAL_SUBSET = 40  # the val photos are small (227x227): keep the test quick


def _cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CURATION_")}
    full_env.update({"CURATION_DB": f"sqlite:///{cwd / 'catalog.sqlite'}", "CURATION_DATA_DIR": str(cwd / "data")})
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "curation", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=900
    )


def _val_folder(dest: Path, n: int) -> Path:
    """A copy of the first ``n`` ImageNet-A-class val photos with their manifest rows."""
    dest.mkdir()
    with open(VAL / "manifest.csv") as fh:
        reader = csv.DictReader(fh)
        rows = [r for r in reader if r["in_imagenet_a_200"] in ("1", "True", "true")][:n]
        fields = reader.fieldnames
    with open(dest / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        shutil.copy(VAL / row["file"], dest / row["file"])
    return dest


def _labelled_files(folder: Path) -> list[tuple[Path, str]]:
    if folder == SAMPLES:  # <wnid>.JPEG
        return [(path, path.stem) for path in sorted(SAMPLES.glob("*.JPEG"))]
    with open(folder / "manifest.csv") as fh:
        return [(folder / r["file"], r["wnid"]) for r in csv.DictReader(fh)]


def _independent_wrong(checkpoint: Path, files: list[tuple[Path, str]]) -> set[tuple[str, str]]:
    """(sha256, wnid) of the photos whose 200-way restricted fp32 argmax is not their label: plain timm."""
    import timm
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    model.eval()
    transform = create_transform(**resolve_data_config(model=model))
    wnids, indices = imagenet_a_reference()
    wrong = set()
    with torch.no_grad():
        for start in range(0, len(files), 32):
            part = files[start : start + 32]
            x = torch.stack([transform(Image.open(path).convert("RGB")) for path, _ in part])
            restricted = model(x)[:, indices].argmax(1)
            for (path, wnid), pred in zip(part, restricted.tolist(), strict=True):
                if wnids[pred] != wnid:
                    wrong.add((hashlib.sha256(path.read_bytes()).hexdigest(), wnid))
    return wrong


@pytest.fixture(scope="module")
def filtered(tmp_path_factory, lite0_checkpoint):
    """A catalog of the 200 samples + a val subset, filtered in two runs (--limit, then the rest)."""
    work = tmp_path_factory.mktemp("filter")
    val = _val_folder(work / "val", VAL_SUBSET)
    for folder in (SAMPLES, val):
        crawl = _cli(work, "crawl", "--folder", str(folder))
        assert crawl.returncode == 0, crawl.stderr
    args = ("filter", "--model", "tf_efficientnet_lite0", "--checkpoint", str(lite0_checkpoint), "--device", "cpu")
    first = _cli(work, *args, "--limit", "40", "--workers", "1", "--precision", "fp32")
    rest = _cli(work, *args, "--precision", "bf16")  # decisions must still equal fp32's
    again = _cli(work, *args)
    return {"work": work, "val": val, "runs": (first, rest, again), "args": args}


def _db(work: Path) -> sqlite3.Connection:
    return sqlite3.connect(work / "catalog.sqlite")


def test_kept_set_equals_independent_restricted_argmax(filtered, lite0_checkpoint):
    first, rest, again = filtered["runs"]
    for run in (first, rest, again):
        assert run.returncode == 0, run.stderr
    files = _labelled_files(SAMPLES) + _labelled_files(filtered["val"])
    expected = _independent_wrong(lite0_checkpoint, files)
    con = _db(filtered["work"])
    kept = set(con.execute("SELECT sha256, wnid FROM filter_verdicts WHERE kept = 1").fetchall())
    total = con.execute("SELECT count(*) FROM filter_verdicts").fetchone()[0]
    assert total == len(files) == 200 + VAL_SUBSET
    assert kept == expected
    assert 10 <= len(kept) <= 60  # EfficientNet-Lite0 gets most of these right


def test_runs_are_incremental_and_summarised(filtered):
    first, rest, again = filtered["runs"]
    n = 200 + VAL_SUBSET
    assert "scored 40 image(s)" in first.stdout and f"{n - 40} left by --limit" in first.stdout
    assert f"scored {n - 40} image(s)" in rest.stdout and "40 pair(s) already scored" in rest.stdout
    assert "scored 0 image(s)" in again.stdout and f"{n} pair(s) already scored" in again.stdout
    for run in (first, rest, again):
        assert len(run.stdout.strip().splitlines()) == 1 and "failed 0" in run.stdout
    con = _db(filtered["work"])
    rows = con.execute("SELECT model, weights_hash, rule, status, count(*) FROM predictions GROUP BY 1, 2, 3, 4")
    (model, weights_hash, rule, status, count), *others = rows.fetchall()
    assert not others and (model, rule, status, count) == ("tf_efficientnet_lite0", "restricted", "ok", n)
    assert len(weights_hash) == 16


def test_kill_9_mid_run_then_rerun_scores_each_pair_once(filtered, tmp_path, lite0_checkpoint):
    """Chunks commit atomically: after kill -9 the catalog holds whole chunks only, and a rerun scores
    the rest, ending with the same verdicts as an uninterrupted run."""
    for folder in (SAMPLES, filtered["val"]):
        assert _cli(tmp_path, "crawl", "--folder", str(folder)).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATION_")}
    env.update({"CURATION_DB": f"sqlite:///{tmp_path / 'catalog.sqlite'}", "CURATION_DATA_DIR": str(tmp_path / "data")})
    args = [sys.executable, "-m", "curation", *filtered["args"], "--precision", "bf16", "--workers", "1"]
    proc = subprocess.Popen(
        [*args, "--commit-every", "32", "--batch-size", "16"], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    count = 0
    deadline = time.monotonic() + 300
    while count < 64 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        with _db(tmp_path) as con:
            count = con.execute("SELECT count(*) FROM predictions").fetchone()[0]
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its decode worker
    proc.wait(timeout=30)
    with _db(tmp_path) as con:
        scored = con.execute("SELECT count(*) FROM predictions").fetchone()[0]
    n = 200 + VAL_SUBSET
    assert 64 <= scored < n and scored % 32 == 0  # whole chunks only, and it was killed mid-run

    rerun = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    assert f"scored {n - scored} image(s)" in rerun.stdout and f"{scored} pair(s) already scored" in rerun.stdout
    with _db(tmp_path) as con, _db(filtered["work"]) as reference:
        pairs = con.execute("SELECT sha256, wnid, count(*) FROM predictions GROUP BY 1, 2").fetchall()
        kept = set(con.execute("SELECT sha256, wnid FROM filter_verdicts WHERE kept = 1").fetchall())
        expected = set(reference.execute("SELECT sha256, wnid FROM filter_verdicts WHERE kept = 1").fetchall())
    assert len(pairs) == n and {c for _, _, c in pairs} == {1}
    assert kept == expected


def test_prediction_rows_hold_top5_confidence_margin_and_the_own_class_probability(filtered):
    con = _db(filtered["work"])
    wnids, indices = imagenet_a_reference()
    rows = con.execute(
        "SELECT wnid, top5, pred_index, pred_wnid, confidence, margin, correct, class_prob, class_rank FROM predictions"
    )
    ranks = set()
    for wnid, top5, pred_index, pred_wnid, confidence, margin, correct, class_prob, class_rank in rows:
        top5 = json.loads(top5)
        assert len(top5) == 5 and all(0 <= i < 1000 for i, _ in top5)
        assert [p for _, p in top5] == sorted((p for _, p in top5), reverse=True)
        assert pred_index in indices and wnids[indices.index(pred_index)] == pred_wnid
        assert 0 < margin <= confidence <= 1 and bool(correct) == (pred_wnid == wnid)
        # the pair's own class over the 200-way rule: rank 1 exactly when it is the prediction
        assert 1 <= class_rank <= 200 and (class_rank == 1) == bool(correct)
        assert class_prob == pytest.approx(confidence) if correct else 0 < class_prob < confidence
        ranks.add(class_rank)
    assert len(ranks) >= 3 and max(ranks) > 2  # the wrong ones rank their class anywhere below 1


def test_rescore_fills_the_own_class_probability_of_older_rows(filtered, tmp_path, lite0_checkpoint):
    """Rows older than the columns (NULL, counted by the migration) are named by every run and filled by
    `filter --rescore` with the values a fresh run writes; decisions stay untouched."""
    shutil.copy(filtered["work"] / "catalog.sqlite", tmp_path / "catalog.sqlite")
    (tmp_path / "data").symlink_to(filtered["work"] / "data")
    with _db(tmp_path) as con:
        fresh = {row[0]: row[1:] for row in con.execute("SELECT id, class_prob, class_rank FROM predictions")}
        con.execute("UPDATE predictions SET class_prob = NULL, class_rank = NULL WHERE id % 3 = 0")
        con.execute("INSERT INTO catalog_meta (key, value) VALUES ('filter:class-prob-missing', '80')")
        decisions = con.execute("SELECT id, pred_wnid, correct, confidence FROM predictions ORDER BY id").fetchall()
    plain = _cli(tmp_path, *filtered["args"])
    assert plain.returncode == 0 and "scored 0 image(s)" in plain.stdout
    assert "80 older prediction(s) lack the probability of their own class" in plain.stderr
    assert "`curation filter --rescore` fills them" in plain.stderr
    rescored = _cli(tmp_path, *filtered["args"], "--rescore")
    assert rescored.returncode == 0, rescored.stderr
    assert (
        rescored.stdout.strip()
        == "filter --rescore: filled the own-class probability of 80 prediction(s); 0 still lack it"
    )
    with _db(tmp_path) as con:
        after = {row[0]: row[1:] for row in con.execute("SELECT id, class_prob, class_rank FROM predictions")}
        assert (
            con.execute("SELECT id, pred_wnid, correct, confidence FROM predictions ORDER BY id").fetchall()
            == decisions
        )
        assert con.execute("SELECT count(*) FROM catalog_meta WHERE key = 'filter:class-prob-missing'").fetchone() == (
            0,
        )
    assert after.keys() == fresh.keys()
    # Not bit for bit: bf16 (and fp32 for the fixture's first 40) in other batches moves a probability a little.
    assert all(abs(p - fresh[row_id][0]) < 0.05 for row_id, (p, _) in after.items())
    assert sum(rank == fresh[row_id][1] for row_id, (_, rank) in after.items()) >= 0.9 * len(after)
    again = _cli(tmp_path, *filtered["args"])
    assert "lack the probability" not in again.stderr


def test_keep_rule_change_recomputes_verdicts_without_rescoring(filtered, tmp_path, lite0_checkpoint):
    work = filtered["work"]
    random_weights = tmp_path / "random.pth"
    torch.manual_seed(0)
    import timm

    torch.save(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict(), random_weights)
    two = ("filter", "--model", "tf_efficientnet_lite0", "--checkpoint", str(lite0_checkpoint))
    two += ("--model", "tf_efficientnet_lite0", "--checkpoint", str(random_weights), "--classes")
    two += (",".join(sorted({w for _, w in _labelled_files(filtered["val"])})[:5]),)
    any_wrong = _cli(work, *two, "--keep", "any-wrong")
    assert any_wrong.returncode == 0, any_wrong.stderr
    # Restricted to 5 classes, the earlier 200-way predictions no longer hold: they are redone.
    assert "class set changed since tf_efficientnet_lite0's last restricted run" in any_wrong.stderr
    all_wrong = _cli(work, *two, "--keep", "all-wrong")
    assert all_wrong.returncode == 0 and "scored 0 image(s)" in all_wrong.stdout
    con = _db(work)
    verdicts = dict(
        ((sha, wnid), (kept, rule, json.loads(models)))
        for sha, wnid, kept, rule, models in con.execute(
            "SELECT sha256, wnid, kept, keep_rule, models FROM filter_verdicts"
        )
    )
    by_pair: dict[tuple[str, str], list[bool]] = {}
    for sha, wnid, correct in con.execute("SELECT sha256, wnid, correct FROM predictions"):
        by_pair.setdefault((sha, wnid), []).append(bool(correct))
    two_model_pairs = [pair for pair, results in by_pair.items() if len(results) == 2]
    assert two_model_pairs
    for pair in two_model_pairs:
        kept, rule, models = verdicts[pair]
        assert rule == "all-wrong" and len(models) == 2
        assert bool(kept) == (not any(by_pair[pair]))


def test_corrupt_and_missing_files_are_recorded_and_the_run_goes_on(tmp_path, lite0_checkpoint):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("n01498041.JPEG", "n01531178.JPEG", "n01534433.JPEG", "n01558993.JPEG"):
        shutil.copy(SAMPLES / name, folder / name.replace(".JPEG", "_a.jpg"))
    assert _cli(tmp_path, "crawl", "--folder", str(folder)).returncode == 0
    con = _db(tmp_path)
    paths = [tmp_path / "data" / p for (p,) in con.execute("SELECT path FROM images ORDER BY sha256")]
    assert len(paths) == 4
    os.chmod(paths[0], 0o644)
    paths[0].write_bytes(paths[0].read_bytes()[:500])  # truncated on disk after the download
    paths[1].unlink()
    run = _cli(tmp_path, "filter", "--model", "tf_efficientnet_lite0", "--checkpoint", str(lite0_checkpoint))
    assert run.returncode == 0, run.stderr
    assert "2 image(s) failed" in run.stdout and "failed 2" in run.stdout
    rows = con.execute("SELECT status, error FROM predictions ORDER BY sha256").fetchall()
    assert [s for s, _ in rows] == ["failed", "failed", "ok", "ok"]
    assert all(e.startswith("unreadable image:") for _, e in rows[:2])
    assert con.execute("SELECT count(*) FROM filter_verdicts").fetchone()[0] == 2


def test_a_rerun_writes_verdicts_only_for_the_pairs_it_scored(tmp_path, lite0_checkpoint):
    """Verdicts already made are neither re-judged nor rewritten (their row and its timestamp stay);
    the pairs of newly crawled photos get theirs; --limit reads only the pairs it scores."""
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    later.mkdir()
    photos = sorted(SAMPLES.glob("*.JPEG"))
    for k, path in enumerate(photos[:12]):
        shutil.copy(path, (first if k < 8 else later) / path.name)
    args = ("filter", "--model", "tf_efficientnet_lite0", "--checkpoint", str(lite0_checkpoint), "--device", "cpu")
    assert _cli(tmp_path, "crawl", "--folder", str(first)).returncode == 0
    assert _cli(tmp_path, *args).returncode == 0
    con = _db(tmp_path)
    before = dict(
        ((sha, wnid), stamp) for sha, wnid, stamp in con.execute("SELECT sha256, wnid, updated_at FROM filter_verdicts")
    )
    assert len(before) == 8
    assert _cli(tmp_path, "crawl", "--folder", str(later)).returncode == 0
    limited = _cli(tmp_path, *args, "--limit", "3")
    assert limited.returncode == 0, limited.stderr
    assert "scored 3 image(s)" in limited.stdout and "8 pair(s) already scored, 1 left by --limit" in limited.stdout
    rest = _cli(tmp_path, *args)
    assert rest.returncode == 0, rest.stderr
    after = dict(
        ((sha, wnid), stamp) for sha, wnid, stamp in con.execute("SELECT sha256, wnid, updated_at FROM filter_verdicts")
    )
    assert len(after) == 12
    assert {pair: after[pair] for pair in before} == before
    stamps = {stamp for pair, stamp in after.items() if pair not in before}
    assert len(stamps) == 2  # one per run that scored them: 3 pairs, then the last one
    assert "verdicts (all-wrong): kept" in rest.stdout and "scored 1 image(s)" in rest.stdout


def test_a_run_of_several_pages_scores_every_pair_once(tmp_path, lite0_checkpoint, monkeypatch, capsys):
    """Pages of 2 pairs (PAGE_PAIRS is 50,000): each page after the first reads from the image reader
    again (a page once rebound it to a set of SHA-256s and the next page crashed), and the run's
    summary counts each image once across pages."""
    from curation.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted(SAMPLES.glob("*.JPEG"))[:7]:
        shutil.copy(path, photos / path.name)
    assert _cli(tmp_path, "crawl", "--folder", str(photos)).returncode == 0
    for key in [k for k in os.environ if k.startswith("CURATION_")]:
        monkeypatch.delenv(key)
    monkeypatch.setattr("curation.filter.scoring.PAGE_PAIRS", 2)
    args = ["--db", f"sqlite:///{tmp_path / 'catalog.sqlite'}", "--data-dir", str(tmp_path / "data")]
    model = ["--model", "tf_efficientnet_lite0", "--checkpoint", str(lite0_checkpoint), "--device", "cpu"]
    assert main([*args, "filter", *model, "--workers", "0"]) == 0
    assert "scored 7 image(s)" in capsys.readouterr().out
    con = _db(tmp_path)
    assert con.execute("SELECT count(*), count(DISTINCT sha256) FROM predictions").fetchone() == (7, 7)
    assert con.execute("SELECT count(*) FROM filter_verdicts").fetchone()[0] == 7


def test_class_outside_the_label_space_is_refused(tmp_path, lite0_checkpoint):
    added = _cli(tmp_path, "classes", "add", "n00007846")  # "person": ImageNet-21k only
    assert added.returncode == 0, added.stderr
    run = _cli(tmp_path, "filter", "--model", "tf_efficientnet_lite0", "--checkpoint", str(lite0_checkpoint))
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        "curation: error: model tf_efficientnet_lite0 cannot predict class n00007846: not in its label space"
    ]


def _unreachable_hub(tmp_path: Path) -> dict[str, str]:
    """A hub endpoint on a closed loopback port, and empty caches: the hub cannot be reached."""
    return {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "th")}


def test_unreachable_hub_without_checkpoint_is_one_line_at_once(tmp_path):
    run = _cli(tmp_path, "filter", env=_unreachable_hub(tmp_path))  # no HF_HUB_OFFLINE: found out by itself
    assert run.returncode == 1
    (line,) = run.stderr.strip().splitlines()  # and no hub retries ("Retrying in 8s ...")
    assert "resnet50.tv_in1k" in line and "cannot be reached" in line and "--checkpoint" in line
    forced = _cli(tmp_path, "filter", env={**_unreachable_hub(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert forced.returncode == 1 and forced.stderr.strip().splitlines() == [line]


def test_pretrained_weights_come_from_the_hub_cache_when_the_hub_is_unreachable(tmp_path, lite0_checkpoint):
    """``pretrained=True`` with no network: timm's weights, downloaded once on a connected machine,
    load from the local Hugging Face cache (the layout hf_hub_download writes) without any request."""
    from safetensors.torch import save_file

    env = _unreachable_hub(tmp_path)
    repo = Path(env["HF_HOME"]) / "hub" / "models--timm--tf_efficientnet_lite0.in1k"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    weights = {key: tensor.contiguous() for key, tensor in torch.load(lite0_checkpoint).items()}
    save_file(weights, repo / "snapshots" / revision / "model.safetensors")
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted(SAMPLES.glob("*.JPEG"))[:3]:
        shutil.copy(path, folder / path.name)
    assert _cli(tmp_path, "crawl", "--folder", str(folder)).returncode == 0
    run = _cli(tmp_path, "filter", "--model", "tf_efficientnet_lite0", "--device", "cpu", env=env)
    assert run.returncode == 0, run.stderr
    assert "scored 3 image(s)" in run.stdout
    with _db(tmp_path) as cached:
        (cached_hash,) = {h for (h,) in cached.execute("SELECT weights_hash FROM predictions")}
    assert cached_hash == load_model("tf_efficientnet_lite0", lite0_checkpoint, device="cpu").weights_hash


def test_checkpoint_from_config_and_bad_arguments(tmp_path, lite0_checkpoint):
    (tmp_path / "curation.toml").write_text(
        f'[filter]\nmodel = "tf_efficientnet_lite0"\ncheckpoint = "{lite0_checkpoint}"\n'
    )
    run = _cli(tmp_path, "filter")
    assert run.returncode == 0, run.stderr
    assert "scored 0 image(s)" in run.stdout and "over 200 classes" in run.stdout
    for bad, message in (
        (("--batch-size", "0"), "--batch-size must be at least 1"),
        (("--commit-every", "0"), "--commit-every must be at least 1"),
        (("--classes", "n99999999"), "class n99999999 is not in the catalog"),
        (("--checkpoint", "a.pth", "--checkpoint", "b.pth"), "2 checkpoint(s) for 1 model(s)"),
        (
            ("--model", "tf_efficientnet_lite0", "--model", "tf_efficientnet_lite0")
            + ("--checkpoint", str(lite0_checkpoint)) * 2,
            "the same model with the same weights is given twice",
        ),
    ):
        run = _cli(tmp_path, "filter", *bad)
        assert run.returncode == 1 and message in run.stderr, run.stderr


def test_judge_is_the_restricted_or_full_argmax_row_by_row():
    from curation.filter import judge

    labels = [f"n{i:08d}" for i in range(6)]
    logits = np.array([[0.0, 9.0, 3.0, 1.0, 2.5, 0.5], [5.0, 1.0, 0.0, 4.0, 0.0, 0.0]], dtype=np.float32)
    restricted = judge(logits, labels, [2, 3, 4])
    assert [r["pred_wnid"] for r in restricted] == ["n00000002", "n00000003"]
    assert json.loads(restricted[0]["top5"])[0][0] == 1 and len(json.loads(restricted[0]["top5"])) == 5
    assert abs(restricted[0]["confidence"] - 1 / (1 + np.exp(-0.5) + np.exp(-2))) < 1e-6
    second = np.exp(2.5) / (np.exp(3) + np.exp(2.5) + np.exp(1))
    assert abs(restricted[0]["margin"] - (restricted[0]["confidence"] - second)) < 1e-6
    full = judge(logits, labels, None)
    assert [r["pred_index"] for r in full] == [1, 0]
