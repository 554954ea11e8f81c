"""The geometric verifier (curation.dedup.verify) on real shared photos: copies proved with their score,
different photos kept apart even when they share a burst's scene, a sticker or a phone frame, and
images that cannot prove anything sent to the review band with one line."""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path

import pytest
from PIL import Image

from curation.dedup.keypoints import extract
from curation.dedup.verify import DEFAULT_OPTIONS, verify

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from dedup_edits import crop_sides, jpeg, pad, phone_frame, screenshot, stick  # noqa: E402

SHARED = REPO.parent / "shared" / "images"
PHOTO = SHARED / "imagenet_samples" / "n01531178.JPEG"  # a goldfinch on a feeder
OTHERS = [SHARED / "imagenet_samples" / "n01614925.JPEG", SHARED / "imagenet_val" / "ILSVRC2012_val_00000355.JPEG"]
# A burst: the same Japanese spaniel running in the same snow, two frames (notes/semantic_dedup.md).
BURST = [
    SHARED / "imagenet_val" / "ILSVRC2012_val_00003953.JPEG",
    SHARED / "imagenet_val" / "ILSVRC2012_val_00046629.JPEG",
]


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


@pytest.fixture(scope="module")
def photo():
    return extract(PHOTO)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda img: crop_sides(img, 0.2, 0.05, 0.0, 0.15), id="asymmetric-crop"),
        pytest.param(lambda img: pad(img, 9 / 16, None), id="blurred-bars-9x16"),
        pytest.param(screenshot, id="screenshot"),
    ],
)
def test_edited_copy_verifies_as_copy_with_its_score(photo, edit) -> None:
    copy = extract(jpeg(edit(_rgb(PHOTO)), 85))
    for result in (verify(copy, photo), verify(photo, copy)):
        assert result.kind == "copy", result.reason
        assert result.score == result.inliers >= DEFAULT_OPTIONS.min_inliers
        assert result.coverage >= DEFAULT_OPTIONS.min_coverage
        assert result.transform is not None and "inliers" in result.reason


def test_collage_tile_is_found_through_the_tiles(photo) -> None:
    tile = _rgb(PHOTO)
    canvas = Image.new("RGB", (tile.width * 2, tile.height * 2))
    for i, path in enumerate([PHOTO, *OTHERS, BURST[0]]):
        canvas.paste(tile if i == 3 else _rgb(path).resize(tile.size), ((i % 2) * tile.width, (i // 2) * tile.height))
    result = verify(extract(jpeg(canvas)), photo)
    assert result.kind == "copy", result.reason


def test_a_burst_of_one_scene_stays_apart() -> None:
    first, second = (extract(p) for p in BURST)
    result = verify(first, second)
    assert result.kind != "copy", result.reason
    assert result.inliers < DEFAULT_OPTIONS.min_inliers


@pytest.mark.parametrize("overlay", [stick, phone_frame], ids=["sticker", "phone-frame"])
def test_different_photos_with_the_same_overlay_stay_apart(overlay) -> None:
    a, b = (extract(jpeg(overlay(_rgb(p)))) for p in (PHOTO, OTHERS[0]))
    result = verify(a, b)
    assert result.kind == "distinct", result.reason
    # ...while the overlay copy of the photo itself is still proved.
    assert verify(a, extract(PHOTO)).kind == "copy"


def test_images_that_cannot_prove_anything_go_to_the_band(photo, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(PHOTO.read_bytes()[:400])
    flat = io.BytesIO()
    Image.new("RGB", (400, 300), (30, 30, 30)).save(flat, "PNG")
    for features, words in ((extract(broken), "did not decode"), (extract(flat.getvalue()), "ORB keypoints")):
        result = verify(photo, features)
        assert result.kind == "band"
        assert words in result.reason and "\n" not in result.reason
        assert verify(features, photo).kind == "band"


def test_features_are_picklable_and_verify_the_same(photo) -> None:
    copy = extract(jpeg(crop_sides(_rgb(PHOTO), 0.1, 0.1, 0.1, 0.1)))
    again = pickle.loads(pickle.dumps(copy))
    assert verify(again, photo) == verify(copy, photo)
