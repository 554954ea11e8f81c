"""Validated images, and the write journal of the image store.

Bytes are judged by what they are, not by what a server says they are: the format is sniffed
from the first bytes, then Pillow decodes the whole image under a pixel cap. Accepted images are
stored once, unchanged, under their content address ``ab/cd/<sha256>.<ext>`` in the image store
(:mod:`curation.store`; by default the folder ``<data_dir>/images``, so ``Image.path`` is
``images/ab/cd/<sha256>.<ext>``). A :class:`WriteJournal` in ``<data_dir>/.staging`` lists the keys
written but not yet catalogued, so a rerun after kill -9 removes exactly those leftovers
(:mod:`curation.store.recovery`); :func:`recover` still reads the journals and temp files of runs
from before the image store.

Deliberate handling of awkward images: CMYK, palette, alpha and 16-bit images are accepted and
stored as they are (their mode is recorded); EXIF orientation is applied before measuring the
size; animated GIF/WebP are accepted and judged by their first frame. :func:`open_rgb` gives
later stages the one agreed RGB view of a stored image.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

# Formats worth keeping for a classification dataset, with the extension they are stored under.
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp"}
# EXIF orientations that swap width and height.
TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
TEMP_SUFFIX = ".part"
OWNER_FILE = ".catalog-id"  # the object naming the catalog that owns an image store
STAGING = ".staging"  # beside images/, same file system, so a rename into the store is atomic


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


class WriteJournal:
    """Store paths written but not yet recorded in the catalog, mirrored line by line in
    ``<data_dir>/.staging/<name>.journal`` so that a rerun after kill -9 knows exactly which files
    may be unrecorded. The file is rewritten with what is still open whenever paths are recorded,
    so it holds the in-flight writes only (a few hundred at most), never the store. It is created
    by the first write: a journal that wrote nothing leaves no file.

    A cluster's batches are journaled in ``<name>.<batch>.journal``; a recovery reads every journal
    of the catalog."""

    def __init__(self, data_dir: Path, name: str) -> None:
        self.name = name
        self.path = Path(data_dir) / STAGING / f"{name}.journal"
        self._lock = threading.Lock()
        self._open: set[str] = set()
        self._handle: io.TextIOWrapper | None = None

    def begin(self, relative_path: str) -> None:
        """``relative_path`` is about to appear in the store (written to the file before it does)."""
        with self._lock:
            if relative_path not in self._open:
                self._open.add(relative_path)
                if self._handle is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
                self._handle.write(relative_path + "\n")
                self._handle.flush()

    def recorded(self, relative_paths: Iterable[str]) -> None:
        """These paths are committed to the catalog: drop them from the journal."""
        with self._lock:
            before = len(self._open)
            self._open.difference_update(relative_paths)
            if len(self._open) == before:
                return
            assert self._handle is not None  # something was begun
            self._handle.close()
            temp = self.path.with_name(self.path.name + ".new")
            temp.write_text("".join(p + "\n" for p in sorted(self._open)), encoding="utf-8")
            os.replace(temp, self.path)
            self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()


def recover(
    data_dir: Path, name: str, recorded: Callable[[list[str]], set[str]], remove_unknown: bool = True
) -> tuple[int, int]:
    """Remove leftovers of a killed run from the staging folder and the journals of ``name`` (the
    driver's ``name.journal`` and cluster workers' ``name.*.journal``): every temp file, and (with
    ``remove_unknown``) each journaled path that ``recorded`` says the catalog does not know.
    Touches only what was in flight, never the whole store.

    Returns (temp files removed, unrecorded images removed)."""
    folder = Path(data_dir) / STAGING
    if not folder.is_dir():
        return 0, 0
    temps = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(TEMP_SUFFIX):
                Path(entry.path).unlink(missing_ok=True)
                temps += 1
    journals = [*folder.glob(f"{name}.journal"), *folder.glob(f"{name}.*.journal")]
    paths = sorted({p for journal in journals for p in journal.read_text(encoding="utf-8").split()})
    known = recorded(paths) if remove_unknown and paths else set(paths)
    orphans = 0
    for relative in paths:
        path = Path(data_dir) / relative
        inside = relative.startswith("images/") and ".." not in relative.split("/")
        if inside and relative not in known and path.is_file():
            path.unlink()
            orphans += 1
    for journal in journals:
        journal.unlink()
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
