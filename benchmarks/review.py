"""Review throughput: today's flow (hash order, one image per key, fixed 3 votes) against the new one
(learned order, grid pages, dynamic consensus), with simulated reviewers that know the truth.

Per seed, a queue is built from the shared photos through the real CLI (``crawl --folder``,
``filter`` with the EfficientNet-Lite0 stand-in, ``dedup``): half of the ImageNet-A-class photos
under their own class (the original, else its rot90, whichever the stand-in gets wrong: a true
pair), every other photo under one wrong A class, half random, half the stand-in's second choice
(confusable); every file re-encoded under an opaque name. Then both flows run on a copy of that
catalog through the v1 API only (a real server on 127.0.0.1), with REVIEWERS reviewers whose votes
are right with probability 0.95 on most classes and 0.80 on a HARD_SHARE of them.

Printed, median and range over the seeds: recall of true pairs after serving 25 % / 50 % of the
queue and WSS@95; the guards (every pair served, random share per page, the early finds' p(class)
and top-1 confidence against all true pairs'); actions per decision (grid: a click per thumbnail
whose verdict differs from the page default plus one submit; single: one key per decision);
votes per pair, release precision and recall; and the headline: the share of all true pairs
released within 10 % of the reviewer time today's flow needs for the whole queue, under the time
model SINGLE_S / THUMB_S + CLICK_S + SUBMIT_S.

    .venv/bin/python benchmarks/review.py [--seeds 3] [--reviewers 5] [--work DIR]

``--work DIR`` keeps the stand-in's probabilities and each seed's CLI-built catalog there, so a rerun
only runs the flows again (each on a fresh copy of the seed's catalog).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image
from sqlalchemy import select

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from curation import catalog as cat  # noqa: E402
from curation.annotate.app import ReviewConfig, serving_in_thread  # noqa: E402

SHARED = REPO.parent / "shared" / "images"
CLASSES_CSV = REPO / "data" / "classes" / "imagenet_a.csv"
SINGLE_S, THUMB_S, CLICK_S, SUBMIT_S = 1.0, 0.3, 1.3, 1.55  # the time model (seconds)
ACCURACY, HARD_ACCURACY, HARD_SHARE = 0.95, 0.80, 0.2
BUDGET = 0.10  # of today's reviewer time for the whole queue
REJECT = "wrong_class"


@dataclass
class Photo:
    path: Path
    wnid: str
    a_class: bool


def shared_photos() -> list[Photo]:
    classes = {row["wnid"] for row in csv.DictReader(open(CLASSES_CSV, newline=""))}
    photos = [Photo(p, p.stem, True) for p in sorted((SHARED / "imagenet_samples").glob("*.JPEG"))]
    with open(SHARED / "imagenet_val" / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            photos.append(Photo(SHARED / "imagenet_val" / row["file"], row["wnid"], row["wnid"] in classes))
    return photos


def prepass(photos: list[Photo], checkpoint: Path, work: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The stand-in's 200-way probabilities on every photo and on the rot90 of the A-class ones (to
    choose true pairs it gets wrong and confusable labels; the queue itself comes from the CLI)."""
    from curation import inference

    wnids = [row["wnid"] for row in csv.DictReader(open(CLASSES_CSV, newline=""))]
    cached = work / "prepass.npz"
    if cached.is_file():
        saved = np.load(cached)
        return wnids, saved["original"], saved["rotated"]
    rotated = work / "rot90"
    rotated.mkdir(exist_ok=True)
    rot_paths = []
    for i, photo in enumerate(photos):
        target = rotated / f"{i}.png"
        if photo.a_class:
            with Image.open(photo.path) as im:
                im.convert("RGB").rotate(90, expand=True).save(target)
        rot_paths.append(target if photo.a_class else photo.path)
    loaded = inference.load_model("tf_efficientnet_lite0", checkpoint, device="cpu")
    columns = inference.class_indices(loaded, wnids)

    def probs(paths: list[Path]) -> np.ndarray:
        logits = inference.predict_logits(loaded, paths).logits[:, columns]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    original, rotated_probs = probs([p.path for p in photos]), probs(rot_paths)
    np.savez(cached, original=original, rotated=rotated_probs)
    return wnids, original, rotated_probs


def build_queue(seed: int, photos, pre, checkpoint: Path, root: Path) -> tuple[str, dict[tuple[str, str], bool]]:
    """The seed's folder of re-encoded photos, run through crawl, filter and dedup; (catalog URL, truth)."""
    wnids, original, rotated = pre
    url = f"sqlite:///{root / 'catalog.sqlite'}"
    if (root / "truth.json").is_file():
        saved = json.loads((root / "truth.json").read_text())
        return url, {(sha, w): t for sha, w, t in saved}
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(seed)
    folder = root / "photos"
    folder.mkdir(parents=True)
    a_photos = [i for i, p in enumerate(photos) if p.a_class]
    positives = set(rng.sample(a_photos, len(a_photos) // 2))
    rows, truth_by_file = [], {}
    for i, photo in enumerate(photos):
        if i in positives:
            own = wnids.index(photo.wnid)
            use_rot = original[i].argmax() == own and rotated[i].argmax() != own
            label, rotate, is_true = photo.wnid, use_rot, True
        else:
            order = np.argsort(-original[i])
            candidates = [wnids[j] for j in order if wnids[j] != photo.wnid]
            confusable = rng.random() < 0.5
            label = candidates[1] if confusable else rng.choice(candidates[2:])
            rotate, is_true = False, False
        name = hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:20] + ".jpg"
        with Image.open(photo.path) as im:
            im = im.convert("RGB")
            if rotate:
                im = im.rotate(90, expand=True)
            buffer = io.BytesIO()
            im.save(buffer, "JPEG", quality=93)
        (folder / name).write_bytes(buffer.getvalue())
        truth_by_file[(hashlib.sha256(buffer.getvalue()).hexdigest(), label)] = is_true
        rows.append({"file": name, "wnid": label})
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "wnid"])
        writer.writeheader()
        writer.writerows(rows)
    base = [sys.executable, "-m", "curation", "--db", str(root / "catalog.sqlite"), "--data-dir", str(root / "data")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "PYTHONPATH": str(REPO)}
    for stage in (
        ["crawl", "--folder", str(folder)],
        ["filter", "--model", "tf_efficientnet_lite0", "--checkpoint", str(checkpoint)],
        ["dedup"],
    ):
        done = subprocess.run(base + stage, cwd=root, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"curation {stage[0]} failed:\n{done.stderr[-2000:]}")
    catalog = cat.open_catalog(url)
    with catalog.session() as s:
        queued = s.execute(select(cat.ReviewQueue.sha256, cat.ReviewQueue.wnid)).all()
    catalog.engine.dispose()
    truth = {(sha, w): truth_by_file.get((sha, w), False) for sha, w in queued}
    (root / "truth.json").write_text(json.dumps([[sha, w, t] for (sha, w), t in truth.items()]))
    return url, truth


@contextmanager
def server(url: str, data_dir: Path, order: str, consensus: str, votes_needed: int) -> Iterator[str]:
    catalog = cat.open_catalog(url)
    cfg = ReviewConfig(catalog=catalog, data_dir=data_dir, votes_needed=votes_needed, order=order, consensus=consensus)
    try:
        with serving_in_thread(cfg) as base:
            yield base
    finally:
        catalog.engine.dispose()


@dataclass
class Run:
    """What one flow did."""

    served: list[tuple[str, str]] = field(default_factory=list)  # first serves, in order
    random_shares: list[float] = field(default_factory=list)
    actions: int = 0
    decisions: int = 0
    seconds: float = 0.0
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (reviewer seconds, true pairs released)


class Reviewer:
    def __init__(self, base: str, name: str, accuracy: dict[str, float], rng: random.Random) -> None:
        self.base, self.http, self.accuracy, self.rng = base, requests.Session(), accuracy, rng
        self.http.trust_env = False
        answer = self.http.post(f"{base}/api/v1/session", json={"annotator": name}, timeout=60).json()
        self.csrf = {"X-CSRF-Token": answer["csrf"]}

    def vote(self, pair: tuple[str, str], truth: dict) -> str:
        right = self.rng.random() < self.accuracy[pair[1]]
        return "accept" if truth[pair] == right else REJECT

    def turn(self, mode: str, limit: int, truth: dict, run: Run) -> bool:
        """One page: fetch, decide every item, submit; False when the queue is empty for this reviewer."""
        page = self.http.get(f"{self.base}/api/v1/next", params={"mode": mode, "limit": limit}, timeout=120).json()
        items = page["items"]
        if not items:
            return False
        seen = set(run.served)
        for item in items:
            pair = (item["sha256"], item["wnid"])
            if pair not in seen:
                run.served.append(pair)
                seen.add(pair)
        if any(i["served_as"] != "more_votes" for i in items):  # the guard holds while fresh pairs remain
            run.random_shares.append(sum(i["served_as"] in ("random", "hash") for i in items) / len(items))
        decisions = [{"id": i["id"], "verdict": self.vote((i["sha256"], i["wnid"]), truth)} for i in items]
        if mode == "grid":
            default = page["page"]["default_verdict"]
            clicks = sum(d["verdict"] != default for d in decisions)
            run.actions += clicks + 1
            run.seconds += THUMB_S * len(items) + CLICK_S * clicks + SUBMIT_S
        else:
            run.actions += len(items)
            run.seconds += SINGLE_S * len(items)
        run.decisions += len(items)
        answer = self.http.post(
            f"{self.base}/api/v1/decisions", json={"decisions": decisions}, headers=self.csrf, timeout=120
        ).json()
        assert all(e["code"] == "complete" for e in answer["errors"]), answer["errors"][:3]
        return True


def released(catalog: cat.Catalog, truth: dict) -> tuple[int, int]:
    """(true, all) pairs the consensus rule closed as accepted (its accepts need a human accept)."""
    with catalog.session() as s:
        rows = s.execute(
            select(cat.ReviewQueue.sha256, cat.ReviewQueue.wnid).where(cat.ReviewQueue.outcome == "accept")
        ).all()
    return sum(truth[(sha, w)] for sha, w in rows), len(rows)


def run_flow(url, data_dir, truth, accuracy, seed, *, order, consensus, mode, limit, reviewers) -> tuple[Run, dict]:
    run = Run()
    rng = random.Random(seed * 7919 + len(order))
    catalog = cat.open_catalog(url)
    with server(url, data_dir, order, consensus, 3) as base:
        people = [Reviewer(base, f"reviewer{i}", accuracy, rng) for i in range(reviewers)]
        busy = True
        while busy:  # rounds until nobody is served anything (votes of one may reopen pairs for another)
            busy = False
            for person in people:
                if person.turn(mode, limit, truth, run):
                    busy = True
                    run.timeline.append((run.seconds, released(catalog, truth)[0]))
    with catalog.session() as s:
        votes = s.execute(select(cat.ReviewQueue.votes)).scalars().all()
        facts = {
            (sha, w): (p, conf)
            for sha, w, p, conf in s.execute(
                select(cat.Prediction.sha256, cat.Prediction.wnid, cat.Prediction.class_prob, cat.Prediction.confidence)
            )
        }
    true_released, all_released = released(catalog, truth)
    catalog.engine.dispose()
    n_true = sum(truth.values())
    return run, {
        "votes_per_pair": sum(votes) / len(votes),
        "precision": true_released / all_released if all_released else 0.0,
        "recall": true_released / n_true,
        "facts": facts,
    }


def order_metrics(run: Run, truth: dict, facts: dict) -> dict[str, float]:
    n, n_true = len(truth), sum(truth.values())
    hits = np.cumsum([truth[p] for p in run.served])
    recall_at = {q: hits[max(0, round(q * n) - 1)] / n_true for q in (0.25, 0.5)}
    at95 = int(np.searchsorted(hits, 0.95 * n_true)) + 1
    early = [p for p in run.served[: round(0.25 * n)] if truth[p]]
    all_true = [p for p in truth if truth[p]]

    def med(pairs, k):
        return statistics.median(facts[p][k] for p in pairs if facts[p][k] is not None)

    return {
        "r25": recall_at[0.25],
        "r50": recall_at[0.5],
        "wss95": 1 - at95 / n - 0.05,
        "served_all": float(set(run.served) == set(truth)),
        "random_share_min": min(run.random_shares, default=float("nan")),
        "early_p_ratio": med(early, 0) / med(all_true, 0) if early else float("nan"),
        "early_conf_ratio": med(early, 1) / med(all_true, 1) if early else float("nan"),
    }


def within_budget(run: Run, budget_s: float, n_true: int) -> float:
    best = 0
    for seconds, true_released in run.timeline:
        if seconds <= budget_s:
            best = max(best, true_released)
    return best / n_true


def seed_run(seed: int, photos, pre, checkpoint: Path, work: Path, reviewers: int) -> dict[str, float]:
    root = work / f"seed{seed}"
    url, truth = build_queue(seed, photos, pre, checkpoint, root)
    rng = random.Random(seed)
    classes = sorted({w for _, w in truth})
    hard = set(rng.sample(classes, round(HARD_SHARE * len(classes))))
    accuracy = {w: HARD_ACCURACY if w in hard else ACCURACY for w in classes}
    n, n_true = len(truth), sum(truth.values())
    today_budget = BUDGET * 3 * n * SINGLE_S
    results: dict[str, float] = {"pairs": n, "true": n_true}
    flows = {
        "today": dict(order="hash", consensus="fixed", mode="single", limit=20),
        "new_single": dict(order="learned", consensus="dynamic", mode="single", limit=20),
        "new_grid": dict(order="learned", consensus="dynamic", mode="grid", limit=48),
    }
    for name, flow in flows.items():
        copy = root / f"{name}.sqlite"
        for stale in (copy.with_name(copy.name + "-wal"), copy.with_name(copy.name + "-shm")):
            stale.unlink(missing_ok=True)  # a killed run's WAL over a fresh copy reads as a malformed database
        shutil.copy(root / "catalog.sqlite", copy)
        run, outcome = run_flow(f"sqlite:///{copy}", root / "data", truth, accuracy, seed, reviewers=reviewers, **flow)
        metrics = order_metrics(run, truth, outcome["facts"])
        for key, value in metrics.items():
            results[f"{name}.{key}"] = value
        results[f"{name}.actions_per_decision"] = run.actions / run.decisions
        results[f"{name}.votes_per_pair"] = outcome["votes_per_pair"]
        results[f"{name}.precision"] = outcome["precision"]
        results[f"{name}.recall"] = outcome["recall"]
        results[f"{name}.budget_recall"] = within_budget(run, today_budget, n_true)
        results[f"{name}.seconds"] = run.seconds
        print(f"seed {seed} {name}: " + ", ".join(f"{k.split('.', 1)[1]} {v:.3f}" for k, v in results.items()
                                                    if k.startswith(name + ".")), file=sys.stderr)  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reviewers", type=int, default=5)
    parser.add_argument("--work", type=Path, help="keep the prepass and the seeds' catalogs here (reused)")
    args = parser.parse_args()
    from curation.wheel_weights import write_checkpoint

    photos = shared_photos()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        checkpoint = write_checkpoint(work / "lite0.pth")[1]
        pre = prepass(photos, checkpoint, work)
        runs = [seed_run(seed, photos, pre, checkpoint, work, args.reviewers) for seed in range(1, args.seeds + 1)]
    print(f"{len(runs)} seeds, {args.reviewers} simulated reviewers; median [min-max]")
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"{key:<34} {statistics.median(values):8.3f} [{min(values):.3f}-{max(values):.3f}]")


if __name__ == "__main__":
    main()
