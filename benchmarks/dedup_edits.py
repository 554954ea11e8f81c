"""The edited copies a crawl meets, for benchmarks/dedup_thresholds.py.

Each edit takes an RGB photo and a seeded :class:`Context` (random choices, the other photos a collage
needs) and returns the edited image and the JPEG quality it is saved at. Overlays (the caption, the
sticker, the screenshot window and the phone frame) are drawn the same way on every photo, so two
different photos carrying one are the negatives that prove the verifier checks the photo, not the
overlay.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

Edit = Callable[[Image.Image, "Context"], tuple[Image.Image, int]]


@dataclass
class Context:
    """Random choices for one (photo, edit): ``rng`` seeded by (seed, photo, edit); ``others``: paths of
    other photos a collage may use."""

    rng: random.Random
    others: list[Path]


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def crop_sides(img: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = img.size
    return img.crop((round(w * left), round(h * top), w - round(w * right), h - round(h * bottom)))


def _crop(fraction: float) -> Edit:
    return lambda img, ctx: (crop_sides(img, fraction, fraction, fraction, fraction), 90)


def _crop_asym(img: Image.Image, ctx: Context) -> tuple[Image.Image, int]:
    return crop_sides(img, *(ctx.rng.uniform(0.0, 0.15) for _ in range(4))), 90


def _crop_one_side(img: Image.Image, ctx: Context) -> tuple[Image.Image, int]:
    sides = [0.0, 0.0, 0.0, 0.0]
    sides[ctx.rng.randrange(4)] = 0.3
    return crop_sides(img, *sides), 90


def rotate(img: Image.Image, degrees: float, inner: bool) -> Image.Image:
    """Turned by ``degrees`` with black corners, or cropped to the largest same-aspect rectangle inside."""
    turned = img.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False)
    if not inner:
        return turned
    w, h = img.size
    c, s = math.cos(math.radians(abs(degrees))), math.sin(math.radians(abs(degrees)))
    scale = min(w / (w * c + h * s), h / (w * s + h * c))
    dx, dy = (1 - scale) / 2, (1 - scale) / 2
    return crop_sides(turned, dx, dy, dx, dy)


def _rotate(degrees: float, inner: bool) -> Edit:
    return lambda img, ctx: (rotate(img, degrees if ctx.rng.random() < 0.5 else -degrees, inner), 90)


def pad(img: Image.Image, aspect: float, fill: tuple[int, int, int] | None) -> Image.Image:
    """Centred on a canvas of width/height ``aspect``: plain bars, or (``fill`` None) the photo blurred."""
    w, h = img.size
    cw, ch = (w, round(w / aspect)) if w / h > aspect else (round(h * aspect), h)
    if fill is not None:
        canvas = Image.new("RGB", (cw, ch), fill)
    else:
        scale = max(cw / w, ch / h)
        big = img.resize((math.ceil(w * scale), math.ceil(h * scale)), Image.Resampling.BILINEAR)
        big = big.crop(
            ((big.width - cw) // 2, (big.height - ch) // 2, (big.width - cw) // 2 + cw, (big.height - ch) // 2 + ch)
        )
        canvas = ImageEnhance.Brightness(big.filter(ImageFilter.GaussianBlur(max(cw, ch) / 30))).enhance(0.8)
    canvas.paste(img, ((cw - w) // 2, (ch - h) // 2))
    return canvas


def _other_aspect(img: Image.Image, aspect: float) -> float:
    """``aspect``, or 16:9 when the photo is already that shape (nothing to pad)."""
    return 16 / 9 if abs(img.width / img.height - aspect) < 0.05 else aspect


def _pad(aspect: float, fill: tuple[int, int, int] | None) -> Edit:
    return lambda img, ctx: (pad(img, _other_aspect(img, aspect), fill), 90)


def _stretch(sx: float, sy: float) -> Edit:
    return lambda img, ctx: (img.resize((round(img.width * sx), round(img.height * sy)), Image.Resampling.BICUBIC), 90)


def tilt(img: Image.Image, amount: float) -> Image.Image:
    """Perspective: the top edge shrunk by ``amount`` of the width on each side (a photo of a screen)."""
    w, h = img.size
    # PERSPECTIVE maps output (x, y) to input; solve for the 8 coefficients from 4 corner pairs.
    out = [(w * amount, 0), (w * (1 - amount), 0), (w, h), (0, h)]
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    rows, rhs = [], []
    for (x, y), (u, v) in zip(out, src, strict=True):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    import numpy as np

    coeffs = np.linalg.solve(np.array(rows, float), np.array(rhs, float))
    return img.transform((w, h), Image.Transform.PERSPECTIVE, tuple(coeffs), Image.Resampling.BICUBIC)


def _outlined(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int) -> None:
    draw.text(
        xy, text, font=_font(size), fill="white", stroke_width=max(1, size // 12), stroke_fill="black", anchor="mm"
    )


def caption(img: Image.Image) -> Image.Image:
    """A meme caption, the same words on every photo, big outlined text top and bottom."""
    out = img.copy()
    draw = ImageDraw.Draw(out)
    size = max(12, out.width // 11)
    _outlined(draw, (out.width / 2, size * 0.9), "WHEN YOU FIND IT", size)
    _outlined(draw, (out.width / 2, out.height - size * 0.9), "THE SAME PHOTO AGAIN", size)
    return out


@cache
def sticker_image() -> Image.Image:
    """One sticker (badge, star, word) pasted on every stickered photo."""
    side = 240
    sticker = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(sticker)
    draw.rounded_rectangle(
        (6, 6, side - 6, side - 6), radius=40, fill=(255, 255, 255, 255), outline=(230, 30, 90, 255), width=8
    )
    draw.ellipse((30, 30, 130, 130), fill=(255, 200, 0, 255), outline=(0, 0, 0, 255), width=4)
    star = [
        (175 + 45 * math.cos(a) * (1 if i % 2 == 0 else 0.45), 80 + 45 * math.sin(a) * (1 if i % 2 == 0 else 0.45))
        for i, a in enumerate(math.radians(-90 + 36 * k) for k in range(10))
    ]
    draw.polygon(star, fill=(40, 120, 255, 255), outline=(0, 0, 0, 255))
    draw.text(
        (side / 2, 180),
        "WOW!",
        font=_font(64),
        fill=(230, 30, 90, 255),
        stroke_width=3,
        stroke_fill="black",
        anchor="mm",
    )
    return sticker


def stick(img: Image.Image) -> Image.Image:
    """The sticker in the bottom-right corner, 30 % of the shorter side."""
    out = img.convert("RGBA")
    side = max(24, round(min(out.size) * 0.3))
    badge = sticker_image().resize((side, side), Image.Resampling.LANCZOS)
    out.alpha_composite(badge, (out.width - side - out.width // 30, out.height - side - out.height // 30))
    return out.convert("RGB")


def watermark(img: Image.Image) -> Image.Image:
    base = img.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.text(
        (base.width * 0.08, base.height * 0.62),
        "© stockphotos.example",
        font=_font(base.width // 12),
        fill=(255, 255, 255, 150),
    )
    logo = max(8, base.width // 10)
    draw.rectangle((base.width - logo - 4, 4, base.width - 4, 4 + logo // 2), fill=(20, 60, 200, 255))
    return Image.alpha_composite(base, layer).convert("RGB")


def screenshot(img: Image.Image) -> Image.Image:
    """A desktop window around the photo: title bar, grey margins of 4 %, a caption strip."""
    w, h = img.size
    margin, bar, strip = round(0.04 * w), max(18, h // 12), max(16, h // 10)
    canvas = Image.new("RGB", (w + 2 * margin, h + 2 * margin + bar + strip), (236, 236, 236))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, canvas.width, bar), fill=(52, 52, 60))
    for i, colour in enumerate(((255, 95, 86), (255, 189, 46), (39, 201, 63))):
        r = bar // 4
        draw.ellipse((bar // 2 + i * 3 * r - r, bar // 2 - r, bar // 2 + i * 3 * r + r, bar // 2 + r), fill=colour)
    draw.text(
        (canvas.width / 2, bar / 2), "Photo Viewer - IMG_2041.jpg", font=_font(bar // 2), fill="white", anchor="mm"
    )
    canvas.paste(img, (margin, bar + margin))
    y = bar + 2 * margin + h + strip // 2
    draw.text(
        (margin, y),
        "Shared via PhotoApp  ·  12 likes  ·  3 comments",
        font=_font(strip // 2),
        fill=(40, 40, 40),
        anchor="lm",
    )
    return canvas


def _icon_row(draw: ImageDraw.ImageDraw, y: int, width: int, size: int) -> None:
    for i in range(5):
        x = width * (i + 0.5) / 5
        shape = (x - size / 2, y - size / 2, x + size / 2, y + size / 2)
        [draw.ellipse, draw.rectangle, draw.rounded_rectangle][i % 3](shape, outline=(20, 20, 20), width=3)


def phone_frame(img: Image.Image) -> Image.Image:
    """A phone screenshot of a photo-sharing app: status bar, app header, profile row, the photo fitted in
    a square box, action icons, likes and caption text, navigation bar (540 × 960, the same UI each time)."""
    canvas = Image.new("RGB", (540, 960), "white")
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, 540, 34), fill=(0, 0, 0))
    draw.text((24, 17), "9:41", font=_font(20), fill="white", anchor="lm")
    draw.rounded_rectangle((470, 10, 510, 26), radius=4, outline="white", width=2)
    for i in range(4):
        draw.rectangle((420 + 9 * i, 26 - 4 * (i + 1), 426 + 9 * i, 26), fill="white")
    draw.text((24, 62), "Photogram", font=_font(30), fill=(10, 10, 10), anchor="lm")
    _icon_row(draw, 62, 1300, 26)
    draw.ellipse((16, 96, 60, 140), fill=(200, 80, 160))
    draw.text((72, 118), "travel.pics  ·  Follow", font=_font(20), fill=(10, 10, 10), anchor="lm")
    box = 540
    fitted = img.copy()
    fitted.thumbnail((box, box), Image.Resampling.LANCZOS)
    canvas.paste(fitted, ((540 - fitted.width) // 2, 150 + (box - fitted.height) // 2))
    _icon_row(draw, 720, 540, 30)
    draw.text((16, 765), "Liked by friend.name and 1,024 others", font=_font(20), fill=(10, 10, 10), anchor="lm")
    draw.text((16, 795), "travel.pics What a day! #nofilter #travel", font=_font(20), fill=(30, 30, 30), anchor="lm")
    draw.text((16, 825), "View all 48 comments", font=_font(18), fill=(140, 140, 140), anchor="lm")
    draw.line((0, 900, 540, 900), fill=(200, 200, 200), width=2)
    _icon_row(draw, 930, 540, 28)
    return canvas


def collage(img: Image.Image, ctx: Context) -> tuple[Image.Image, int]:
    """A 2×2 collage, each tile the photo's size: the photo in a random tile, three other photos."""
    w, h = img.size
    others = ctx.rng.sample(ctx.others, 3)
    tiles = []
    for path in others:
        with Image.open(path) as other:
            tiles.append(other.convert("RGB").resize((w, h), Image.Resampling.BICUBIC))
    tiles.insert(ctx.rng.randrange(4), img)
    canvas = Image.new("RGB", (2 * w, 2 * h))
    for i, tile in enumerate(tiles):
        canvas.paste(tile, ((i % 2) * w, (i // 2) * h))
    return canvas, 90


def _chain_geometric(img: Image.Image, ctx: Context) -> tuple[Image.Image, int]:
    """Asymmetric crop, a 4° turn cropped inside, white bars to a square, JPEG q50."""
    img = crop_sides(img, *(ctx.rng.uniform(0.02, 0.1) for _ in range(4)))
    return pad(rotate(img, 4 if ctx.rng.random() < 0.5 else -4, True), 1.0, (255, 255, 255)), 50


def _chain_social(img: Image.Image, ctx: Context) -> tuple[Image.Image, int]:
    """Halved, squeezed to 0.85 of its width, the caption, blurred bars to 9:16, JPEG q70."""
    img = img.resize((max(1, round(img.width * 0.425)), max(1, img.height // 2)), Image.Resampling.BICUBIC)
    return pad(caption(img), 9 / 16, None), 70


def _plain(edit: Callable[[Image.Image], Image.Image], quality: int = 90) -> Edit:
    return lambda img, ctx: (edit(img), quality)


# name -> edit, in table order. "collage" copies contain three other photos: not false against those.
EDITS: dict[str, Edit] = {
    "resize_half": _plain(
        lambda img: img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.LANCZOS)
    ),
    "jpeg_q15": _plain(lambda img: img, 15),
    "hflip": _plain(lambda img: img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    "crop_5": _crop(0.05),
    "crop_10": _crop(0.10),
    "crop_15": _crop(0.15),
    "crop_20": _crop(0.20),
    "crop_asym": _crop_asym,
    "crop_side_30": _crop_one_side,
    "rot_3_black": _rotate(3, False),
    "rot_5_black": _rotate(5, False),
    "rot_10_black": _rotate(10, False),
    "rot_5_inner": _rotate(5, True),
    "rot_10_inner": _rotate(10, True),
    "pad_black_1x1": _pad(1.0, (0, 0, 0)),
    "pad_white_4x5": _pad(0.8, (255, 255, 255)),
    "pad_blur_9x16": _pad(9 / 16, None),
    "stretch_w130": _stretch(1.3, 1.0),
    "squeeze_w75": _stretch(0.75, 1.0),
    "tilt_10": _plain(lambda img: tilt(img, 0.10)),
    "watermark": _plain(watermark),
    "caption": _plain(caption),
    "sticker": _plain(stick),
    "screenshot": _plain(screenshot),
    "phone_frame": _plain(phone_frame),
    "chain_geometric": _chain_geometric,
    "chain_social": _chain_social,
    "collage_2x2": collage,
}

# Edits whose overlay is the same on every photo: copies of two different photos carrying it are
# the shared-overlay negatives.
SHARED_OVERLAYS = ("caption", "sticker", "screenshot", "phone_frame", "watermark", "chain_social")


def edited(path: Path, name: str, seed: int, index: int, others: list[Path]) -> bytes:
    """The JPEG bytes of edit ``name`` of the photo at ``path`` (the ``index``-th photo) under ``seed``."""
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    rng = random.Random(f"{seed}:{index}:{name}")
    image, quality = EDITS[name](rgb, Context(rng, [p for p in others if p != path]))
    return jpeg(image, quality)
