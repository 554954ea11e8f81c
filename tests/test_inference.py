"""The shared input pipeline: exact against timm's transform, draft decoding, precision re-checks."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLES, VAL
from PIL import Image

from curation import inference as inf
from curation.errors import CurationError


def _sample_paths() -> list[Path]:
    """The 24 largest samples (drafted), the 7 greyscale ones and 24 small ones."""
    paths = sorted(SAMPLES.glob("*.JPEG"))
    sizes = {p: Image.open(p).size for p in paths}
    modes = {p: Image.open(p).mode for p in paths}
    by_area = sorted(paths, key=lambda p: sizes[p][0] * sizes[p][1])
    chosen = by_area[-24:] + [p for p in paths if modes[p] == "L"] + by_area[:24]
    return list(dict.fromkeys(chosen))


def _val_paths(n: int) -> list[Path]:
    with open(VAL / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["in_imagenet_a_200"] in ("1", "True", "true")]
    return [VAL / r["file"] for r in rows[:n]]


@pytest.fixture(scope="module")
def lite0(lite0_checkpoint: Path) -> inf.LoadedModel:
    return inf.load_model("tf_efficientnet_lite0", lite0_checkpoint, device="cpu")


def _timm_uint8(path: Path, data_config: dict) -> np.ndarray:
    from timm.data import create_transform

    config = {k: v for k, v in data_config.items() if k not in ("mean", "std")}
    transform = create_transform(**config, use_prefetcher=True)
    return np.asarray(transform(Image.open(path).convert("RGB"))).transpose(1, 2, 0)


@pytest.mark.parametrize("model_name", ["resnet50.tv_in1k", "tf_efficientnet_lite0"])
def test_crops_equal_timm_transform_except_drafted_ones(model_name):
    import timm
    from timm.data import resolve_data_config

    config = resolve_data_config(model=timm.create_model(model_name, pretrained=False))
    exact, fast = inf.Preprocess(config, draft=False), inf.Preprocess(config, draft=True)
    drafted = 0
    for path in _sample_paths():
        reference = _timm_uint8(path, config)
        crop, approximate = exact(path)
        assert not approximate and np.array_equal(crop, reference), path.name
        crop, approximate = fast(path)
        width, height = Image.open(path).size
        assert approximate == (min(width, height) >= 2 * inf.DRAFT_FACTOR * exact.scale_size), path.name
        if approximate:
            drafted += 1
            assert np.abs(crop.astype(int) - reference).mean() < 1.0, path.name
        else:
            assert np.array_equal(crop, reference), path.name
    assert drafted >= 1


def test_generic_config_uses_timm_transform():
    config = {
        "input_size": (3, 224, 224),
        "interpolation": "bilinear",
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "crop_pct": 0.9,
        "crop_mode": "squash",
    }
    path = _sample_paths()[0]
    crop, approximate = inf.Preprocess(config)(path)
    assert not approximate and np.array_equal(crop, _timm_uint8(path, config))


def test_logits_equal_plain_timm_and_reduced_precision_keeps_decisions(lite0):
    from timm.data import create_transform

    paths = _sample_paths()[:24] + _val_paths(16)
    transform = create_transform(**lite0.data_config)
    with torch.inference_mode():
        reference = torch.cat(
            [
                lite0.model(torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i : i + 16]]))
                for i in range(0, len(paths), 16)
            ]
        ).numpy()
    exact = inf.predict_logits(lite0, paths, workers=0, draft=False).logits
    assert np.abs(exact - reference).max() < 1e-3
    assert np.array_equal(exact.argmax(1), reference.argmax(1))
    fast_modes = [{"precision": "bf16"}, {"precision": "bf16", "tensor_decode": True}]
    for options in [{"precision": "fp32"}, *fast_modes]:
        checked = inf.predict_logits(lite0, paths, workers=1, **options).logits
        assert np.array_equal(checked.argmax(1), reference.argmax(1)), options
    # The measured error bounds behind the re-check thresholds still hold on these photos.
    for options in fast_modes:
        raw = inf.predict_logits(lite0, paths, workers=1, margin_recheck=-1.0, **options).logits  # no re-check
        error = np.abs(raw - reference).max(axis=1)
        assert 2 * error.max() < inf.MARGIN_RECHECK, options
        assert 2 * (error / np.abs(reference).max(axis=1)).max() < inf.MARGIN_RECHECK_RELATIVE, options


def test_corrupt_and_missing_files_are_nan_rows_with_reasons(lite0, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((SAMPLES / "n01498041.JPEG").read_bytes()[:300])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    good = SAMPLES / "n01531178.JPEG"
    result = inf.predict_logits(lite0, [good, broken, text, tmp_path / "gone.jpg"], workers=0)
    assert set(result.errors) == {1, 2, 3}
    assert all(r.startswith("unreadable image:") and "\n" not in r for r in result.errors.values())
    assert np.isfinite(result.logits[0]).all() and np.isnan(result.logits[1:]).all()


def test_decoded_elsewhere_scores_as_iter_logits(lite0, tmp_path):
    """A cluster's two stages (decode_chunk on a CPU worker, score_decoded in the model's actor) give
    iter_logits' logits, errors and re-checks, at the caller's positions."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((SAMPLES / "n01498041.JPEG").read_bytes()[:300])
    paths = _sample_paths()[12:24] + [broken] + _sample_paths()[-8:]  # the largest (drafted), small ones
    options = {"precision": "bf16", "batch_size": 8, "workers": 0}
    [local] = inf.iter_logits(lite0, paths, chunk_size=len(paths), **options)
    decoded = inf.decode_chunk(inf.Preprocess(lite0.data_config), [str(p) for p in paths], start=40)
    assert len(decoded.indices) == len(paths) - 1 and decoded.crops.shape == (len(paths) - 1, 224, 224, 3)
    assert decoded.approximate and set(decoded.errors) == {12}
    scored = inf.score_decoded(lite0, decoded, **options)
    assert scored.start == 40 and list(scored.errors) == [52] and scored.errors[52] == local.errors[12]
    assert scored.rechecked == local.rechecked > 0
    assert np.array_equal(np.isnan(scored.logits), np.isnan(local.logits))
    assert np.abs(np.nan_to_num(scored.logits - local.logits)).max() < 1e-4


def test_tensor_decode_path_on_cpu_handles_png_cmyk_and_corrupt_files(lite0, tmp_path):
    """The GPU path's code (batched torchvision decode + tensor resize), run on the CPU."""
    source = SAMPLES / "n01531178.JPEG"
    Image.open(source).save(tmp_path / "photo.png")
    Image.open(source).convert("CMYK").save(tmp_path / "cmyk.jpg")
    (tmp_path / "broken.jpg").write_bytes(source.read_bytes()[:400])
    paths = [source, tmp_path / "photo.png", tmp_path / "cmyk.jpg", tmp_path / "broken.jpg"]
    result = inf.predict_logits(lite0, paths, workers=0, tensor_decode=True)
    exact = inf.predict_logits(lite0, paths[:3], workers=0, draft=False)
    assert list(result.errors) == [3] and np.isnan(result.logits[3]).all()
    assert np.array_equal(result.logits[:3].argmax(1), exact.logits.argmax(1))
    assert np.abs(result.logits[1] - exact.logits[1]).max() < 1e-3  # PNG: Pillow path, exact


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_tensor_resize_matches_pillow_closely():
    import timm
    from timm.data import resolve_data_config
    from torchvision.io import ImageReadMode, decode_jpeg

    for name in ("resnet50.tv_in1k", "tf_efficientnet_lite0"):
        preprocess = inf.Preprocess(resolve_data_config(model=timm.create_model(name, pretrained=False)), draft=False)
        for path in _sample_paths()[::6]:
            data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
            crop = inf.resize_crop_tensor(decode_jpeg(data, mode=ImageReadMode.RGB), preprocess)
            reference = preprocess(path)[0]
            assert crop.shape == (3, 224, 224)
            assert np.abs(crop.permute(1, 2, 0).numpy().astype(int) - reference).mean() < 1.0, (name, path.name)


def test_class_indices_and_refusal(lite0):
    assert lite0.label_wnids[:2] == ["n01440764", "n01443537"] and len(lite0.label_wnids) == 1000
    assert inf.class_indices(lite0, ["n01498041", "n01531178"]) == [6, 11]
    with pytest.raises(CurationError, match="cannot predict class n00007846: not in its label space"):
        inf.class_indices(lite0, ["n01498041", "n00007846"])


def test_weights_hash_follows_the_weights(lite0, lite0_checkpoint):
    again = inf.load_model("tf_efficientnet_lite0", lite0_checkpoint, device="cpu")
    random = inf.load_model("tf_efficientnet_lite0", pretrained=False, device="cpu")
    assert again.weights_hash == lite0.weights_hash != random.weights_hash
    assert len(lite0.weights_hash) == 16


def test_bad_checkpoints_are_one_line_errors(tmp_path, lite0_checkpoint):
    with pytest.raises(CurationError, match="checkpoint not found"):
        inf.load_model("tf_efficientnet_lite0", tmp_path / "none.pth", device="cpu")
    (tmp_path / "junk.pth").write_text("junk")
    with pytest.raises(CurationError, match="cannot read checkpoint"):
        inf.load_model("tf_efficientnet_lite0", tmp_path / "junk.pth", device="cpu")
    with pytest.raises(CurationError, match="does not fit resnet50.tv_in1k"):
        inf.load_model("resnet50.tv_in1k", lite0_checkpoint, device="cpu")
    with pytest.raises(CurationError, match="unknown model"):
        inf.load_model("no_such_net", device="cpu")


def test_precision_and_device_resolution():
    cpu = torch.device("cpu")
    assert inf.resolve_precision("fp32", cpu) == "fp32"
    native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert inf.resolve_precision("auto", cpu) == ("bf16" if native_bf16 else "fp32")
    assert inf.resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(CurationError):
        inf.resolve_precision("int8", cpu)
    if not torch.cuda.is_available():
        with pytest.raises(CurationError, match="no CUDA GPU"):
            inf.resolve_device("cuda")


def test_top2_margin():
    logits = np.array([[1.0, 5.0, 4.5, 0.0], [3.0, -1.0, 2.0, 2.5]], dtype=np.float32)
    assert np.allclose(inf.top2_margin(logits), [0.5, 0.5])
    assert np.allclose(inf.top2_margin(logits, [0, 3]), [1.0, 0.5])


def test_fp32_runs_turn_tf32_off_and_restore_it():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with inf.strict_fp32(True):
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with inf.strict_fp32(False):
            assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
