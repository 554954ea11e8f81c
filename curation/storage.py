"""Validated, content-addressed image storage.

Bytes are judged by what they are, not by what a server says they are: the format is sniffed
from the first bytes, then Pillow decodes the whole image under a pixel cap. Accepted images are
stored once, unchanged, at ``<data_dir>/images/ab/cd/<sha256>.<ext>`` (temp file + rename, so a
killed process never leaves a partial image under its final name).

Deliberate handling of awkward images: CMYK, palette, alpha and 16-bit images are accepted and
stored as they are (their mode is recorded); EXIF orientation is applied before measuring the
size; animated GIF/WebP are accepted and judged by their first frame. :func:`open_rgb` gives
later stages the one agreed RGB view of a stored image.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

# Formats worth keeping for a classification dataset, with the extension they are stored under.
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp"}
# EXIF orientations that swap width and height.
TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
TEMP_SUFFIX = ".part"
OWNER_FILE = ".catalog-id"


class Rejected(Exception):
    """Bytes that are not an acceptable image; ``reason`` is a short code for the catalog."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ValidImage:
    """What validation learnt about an accepted image."""

    sha256: str
    format: str
    ext: str
    width: int  # after EXIF orientation
    height: int
    mode: str
    frames: int
    size: int

    @property
    def relative_path(self) -> str:
        """Where the image lives, relative to the data directory."""
        return f"images/{self.sha256[:2]}/{self.sha256[2:4]}/{self.sha256}.{self.ext}"


def sniff(data: bytes) -> str:
    """Name the kind of ``data`` from its first bytes: a format name, ``html``, ``svg`` or ``unknown``."""
    head = data[:512]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text:
        return "html"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "svg"
    if text.startswith((b"<?xml", b"<!doctype", b"<")):
        return "html"
    return "unknown"


def validate(data: bytes, *, min_side: int = 64, max_pixels: int = 40_000_000) -> ValidImage:
    """Check that ``data`` is a whole, decodable, big-enough bitmap image; raise :class:`Rejected` if not."""
    if not data:
        raise Rejected("empty")
    kind = sniff(data)
    if kind == "html":
        raise Rejected("html_not_image")
    if kind == "svg":
        raise Rejected("svg_not_bitmap")
    if kind not in EXTENSIONS:
        raise Rejected("not_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise Rejected("decompression_bomb", f"{width}x{height}")
                if im.format != kind:
                    raise Rejected("not_image", f"sniffed {kind}, decoded {im.format}")
                im.load()
                orientation = im.getexif().get(0x0112, 1)
                mode = im.mode
                frames = getattr(im, "n_frames", 1)
    except Rejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected("decompression_bomb", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        message = str(exc)
        reason = "truncated" if "truncated" in message or isinstance(exc, EOFError) else "corrupt"
        raise Rejected(reason, message) from None
    if orientation in TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    if min(width, height) < min_side:
        raise Rejected("too_small", f"{width}x{height}")
    sha = hashlib.sha256(data).hexdigest()
    return ValidImage(sha, kind, EXTENSIONS[kind], width, height, mode, frames, len(data))


def store(data_dir: Path, image: ValidImage, data: bytes) -> Path:
    """Write ``data`` under its content address (once; atomically); returns the absolute path."""
    final = os.path.join(data_dir, image.relative_path)
    try:
        if os.stat(final).st_size == len(data):
            return Path(final)
    except FileNotFoundError:
        pass
    folder = os.path.dirname(final)
    temp = os.path.join(folder, f".{image.sha256}.{os.getpid()}.{threading.get_ident():x}{TEMP_SUFFIX}")
    try:
        try:
            out = open(temp, "wb")  # noqa: SIM115 - closed just below
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            out = open(temp, "wb")  # noqa: SIM115
        with out:
            out.write(data)
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return Path(final)


def claim(data_dir: Path, catalog_id: str) -> bool:
    """Mark ``data_dir/images`` as the image store of catalog ``catalog_id``; False if another
    catalog already owns it (then files it does not know must not be treated as leftovers)."""
    marker = Path(data_dir) / "images" / OWNER_FILE
    if marker.is_file():
        return marker.read_text().strip() == catalog_id
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(catalog_id + "\n")
    return True


def sweep(data_dir: Path, known_relative_paths: set[str], remove_unknown: bool = True) -> tuple[int, int]:
    """Remove leftovers of a killed run: temp files and, with ``remove_unknown``, images the catalog
    does not know (written but not yet recorded when the process died).

    Returns (temp files removed, unknown images removed)."""
    root = Path(data_dir) / "images"
    temps = orphans = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if name.endswith(TEMP_SUFFIX):
                path.unlink(missing_ok=True)
                temps += 1
            elif name.startswith("."):
                continue
            elif remove_unknown and path.relative_to(data_dir).as_posix() not in known_relative_paths:
                path.unlink(missing_ok=True)
                orphans += 1
    return temps, orphans


def open_rgb(path: Path, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """The agreed RGB view of a stored image: first frame, EXIF orientation applied, alpha composited
    on ``background``, CMYK/palette/16-bit converted to 8-bit RGB."""
    with Image.open(path) as im:
        im.seek(0)
        im.load()
        frame = ImageOps.exif_transpose(im)
    if frame.mode in ("I;16", "I;16B", "I;16L", "I"):
        frame = frame.point(lambda v: v / 256).convert("L")
    if frame.mode == "P":
        frame = frame.convert("RGBA")
    if frame.mode in ("RGBA", "LA", "PA") or "transparency" in frame.info:
        rgba = frame.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return frame.convert("RGB")
