"""The GPU path on a real CUDA device: batched GPU JPEG decode + bf16 + the exact re-check give the
decisions of timm's transform + fp32 on the CPU. Skipped where no GPU is present (CI); run it on a
lent GPU machine with ``pytest tests/test_gpu.py``."""

from __future__ import annotations

import csv
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLES, VAL

from curation import inference as inf
from curation.synsets import imagenet_a_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _photos() -> list[tuple[Path, str]]:
    """(path, wnid) of the 200 samples and the 300 val photos of ImageNet-A classes."""
    photos = [(path, path.stem) for path in sorted(SAMPLES.glob("*.JPEG"))]
    with open(VAL / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["in_imagenet_a_200"] in ("1", "True", "true")]
    return photos + [(VAL / r["file"], r["wnid"]) for r in rows]


def test_gpu_decisions_equal_cpu_fp32(lite0_checkpoint):
    paths = [path for path, _ in _photos()]
    wnids, _ = imagenet_a_reference()
    cpu = inf.load_model("tf_efficientnet_lite0", lite0_checkpoint, device="cpu")
    columns = inf.class_indices(cpu, wnids)
    exact = inf.predict_logits(cpu, paths, precision="fp32", draft=False).logits[:, columns]
    gpu = inf.load_model("tf_efficientnet_lite0", lite0_checkpoint, device="cuda")
    chunks = list(inf.iter_logits(gpu, paths, precision="auto", argmax_over=columns, chunk_size=256))
    fast = np.concatenate([chunk.logits for chunk in chunks])[:, columns]
    assert not any(chunk.errors for chunk in chunks)
    assert np.array_equal(fast.argmax(1), exact.argmax(1))
    assert 0 < sum(chunk.rechecked for chunk in chunks) < len(paths) / 4  # GPU-decoded rows are re-checked
    raw = inf.predict_logits(gpu, paths, precision="auto", margin_recheck=-1.0).logits  # nothing re-checked
    error = np.abs(raw[:, columns] - exact).max(axis=1)
    assert error.max() < inf.MARGIN_RECHECK / 2  # the measured CPU bound holds for GPU decode + bf16 too


def test_filter_on_cuda_keeps_what_it_keeps_on_cpu(tmp_path, lite0_checkpoint):
    folder = tmp_path / "photos"
    for path, wnid in _photos():
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        (folder / wnid / path.name).symlink_to(path)
    kept = {}
    for device in ("cpu", "cuda"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CURATION_")}
        env.update(
            {"CURATION_DB": f"sqlite:///{tmp_path / device}.sqlite", "CURATION_DATA_DIR": str(tmp_path / device)}
        )
        for args in (["crawl", "--folder", str(folder)],
                     ["filter", "--model", "tf_efficientnet_lite0", "--checkpoint", str(lite0_checkpoint),
                      "--device", device, "--precision", "fp32" if device == "cpu" else "auto"]):  # fmt: skip
            run = subprocess.run([sys.executable, "-m", "curation", *args], env=env, capture_output=True, text=True)
            assert run.returncode == 0, run.stderr
        assert "failed 0" in run.stdout
        with sqlite3.connect(tmp_path / f"{device}.sqlite") as con:
            kept[device] = set(con.execute("SELECT sha256, wnid FROM filter_verdicts WHERE kept = 1"))
    assert kept["cuda"] == kept["cpu"] and len(kept["cpu"]) > 0
