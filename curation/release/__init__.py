"""`curation release OUT_DIR`: write the dataset in the original ImageNet-A layout.

Selected are the (image, class) pairs the filter kept, that dedup left as representatives (not
duplicates, not leaked against a reference set, no label conflict) and that annotation accepted;
an image accepted for more than one class is left out (ImageNet-A images show a single class).

``OUT_DIR/<name>/<wnid>/<sha256>.jpg`` holds the images. JPEG originals are copied byte for byte;
other formats (PNG, GIF, WebP) and JPEGs whose EXIF orientation is not upright (loaders such as
``ImageFolder`` ignore EXIF) are re-encoded once as JPEG (quality 95) from the catalog's agreed
RGB view, so every file is a ``.jpg`` that shows what the filter model saw. Beside the images:
``README.txt`` ("wnid name" lines), ``manifest.csv``, ``ATTRIBUTION.md``, ``DATASHEET.md``, the dataset
card ``README.md`` and ``croissant.json`` (see ``release_card`` and ``croissant``: the release loads
in torchvision, timm, Hugging Face ``datasets`` and mlcroissant) and ``SHA256SUMS``; nothing else at
its top level but the wnid folders. Beside the folder, a deterministic ``<name>.tar.gz`` (sorted entries, fixed
mtime/owners, gzip mtime 0) and its ``.sha256``. Everything is written to a hidden temporary
folder beside OUT_DIR and renamed at the end, so a killed release leaves nothing half-made.

The catalog's dataset kind chooses the folder: ImageNet-A releases an image under its crawled class;
ImageNet-O under the 1k target the filter model confused it with (``<target_wnid>/<sha256>.jpg``), with
README.txt listing the 200 targets, the source synset and MSP in the manifest, and the MSP threshold
and pool rule in the DATASHEET.
"""

from curation.release.command import register, run
from curation.release.datasheet import needs_attribution
from curation.release.selection import Item, attach_provenance, select_items
from curation.release.writing import released_bytes, write_archive

__all__ = [
    "Item",
    "attach_provenance",
    "needs_attribution",
    "register",
    "released_bytes",
    "run",
    "select_items",
    "write_archive",
]
