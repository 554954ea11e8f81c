"""`make demo` end to end, offline, exactly as the Makefile runs it (on a subset of the shared photos
so that it stays near a minute on 2 cores), and the pointer `make crawl filter` prints offline.

Both run the real Makefile with `-o .venv/.installed` (never reinstall the venv) and BIN set to this
interpreter's folder. Nothing leaves loopback: the model hub is a closed loopback port and every
web source of the offline crawl points at one.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SAMPLES, VAL

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
N_SAMPLES = 100  # of the 200 ImageNet-A class samples; Lite0 gets a few of them wrong
N_VAL = 60  # of the 300 val photos of ImageNet-A classes


def make(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600):
    """Run the real Makefile in the repository, offline, with this interpreter's venv."""
    # Not MAKELEVEL/MAKEFLAGS either: under `make test` the inner make would report as make[1].
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CURATION_", "HF_")) and k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")
    }
    full_env.update(env or {})
    full_env.update(
        HF_ENDPOINT="http://127.0.0.1:9",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", f"BIN={Path(sys.executable).parent}", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def shared_subset(root: Path) -> Path:
    """A SHARED folder with links to the first photos of each shared set (same layouts)."""
    samples, val = root / "images" / "imagenet_samples", root / "images" / "imagenet_val"
    samples.mkdir(parents=True)
    val.mkdir()
    for photo in sorted(SAMPLES.glob("*.JPEG"))[:N_SAMPLES]:
        (samples / photo.name).symlink_to(photo)
    with open(VAL / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["in_imagenet_a_200"] == "1"][:N_VAL]
    with open(val / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "wnid"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        (val / row["file"]).symlink_to(VAL / row["file"])
    return root


def test_make_demo_runs_every_stage_offline_into_its_own_catalog(tmp_path):
    from torchvision.datasets import ImageFolder

    user_catalog = REPO / "db" / "catalog.sqlite"
    before = user_catalog.stat().st_mtime_ns if user_catalog.exists() else None
    demo = tmp_path / "demo"
    shared = shared_subset(tmp_path / "shared")
    result = make(tmp_path, "demo", f"DEMO_DIR={demo}", f"SHARED={shared}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # Every stage ran, in order, on the demo's own catalog.
    stages = [" -m curation.wheel_weights ", " crawl --folder ", " filter --model tf_efficientnet_lite0 ", " dedup"]
    stages += [" annotate auto-accept", " release ", " eval ", " report "]
    commands = [line for line in result.stdout.splitlines() if "curation" in line and not line.startswith("demo:")]
    assert [next(s for s in stages if s in c) for c in commands] == [stages[0], stages[1], *stages[1:]]
    assert all(f"--db {demo}/catalog.sqlite" in c for c in commands[1:])
    assert "EfficientNet-Lite0 stands in for ResNet-50" in output
    assert "auto-accept (NOT a human review)" in output
    assert f"downloaded {N_SAMPLES} ({N_SAMPLES} new images)" in output
    assert (user_catalog.stat().st_mtime_ns if user_catalog.exists() else None) == before
    # It ends with the paths of the release and the HTML report.
    release, report = demo / "release" / "imagenet-a-demo", demo / "report" / "index.html"
    assert result.stdout.strip().splitlines()[-2:] == [f"demo: release {release}", f"demo: report  {report}"]
    assert "NOT a human review" in result.stdout.strip().splitlines()[-3]
    # The release holds what Lite0 got wrong, and Lite0 scores 0 % on it: the paper's construction.
    folder = ImageFolder(str(release))
    assert 1 <= len(folder) < (N_SAMPLES + N_VAL) // 4
    with open(release / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(folder) and all(r["filter_model"].startswith("tf_efficientnet_lite0@") for r in rows)
    assert all(r["filter_prediction"] != r["wnid"] for r in rows)
    assert f"eval: {len(folder)} images (0 unreadable), 200-way top-1 0.00 %" in output
    assert "Not a human review" in (release / "README.md").read_text()
    assert "Not a human review" in (release / "DATASHEET.md").read_text()
    html = report.read_text()
    assert "funnel.png" in html and (report.parent / "funnel.png").is_file()


def test_make_crawl_filter_offline_points_to_the_demo_and_to_checkpoint(tmp_path):
    config = tmp_path / "offline.toml"
    sources = "".join(
        f'[sources.{name}]\nbase_url = "http://127.0.0.1:9/"\n'
        for name in ("inaturalist", "flickr", "commons", "openverse")
    )
    config.write_text(f"[crawl]\nper_class = 1\nretries = 0\ntimeout = 5\n{sources}")
    env = {
        "CURATION_CONFIG": str(config),
        "CURATION_DB": str(tmp_path / "catalog.sqlite"),
        "CURATION_DATA_DIR": str(tmp_path / "data"),
    }
    result = make(tmp_path, "crawl", "filter", "ARGS=--classes n01498041", env=env, timeout=300)
    assert result.returncode != 0  # the filter could not run: no weights
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("make: ***")]
    hint = "`make demo` runs every stage offline on the shared photos"
    assert hint in lines[-1] and "--checkpoint" in lines[-1]
    assert "--checkpoint" in lines[-2]  # the filter's own one line, just before
    # The crawl found nothing (every source is a closed loopback port), so it ended with the pointer too.
    assert "downloaded 0 (0 new images)" in result.stdout
    assert result.stderr.index(hint) < result.stderr.index("cannot load pretrained weights")
    assert not (tmp_path / "db").exists() and (tmp_path / "catalog.sqlite").is_file()
