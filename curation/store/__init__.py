"""Where images live: one small store interface over a local folder (``file://``, today's layout) and
object stores (``s3://``, ``gs://``, ``az://`` through obstore), addressed by one URL.

Keys keep today's content-addressed layout under the URL's prefix, ``ab/cd/<sha256>.<ext>``.
Stages use :class:`ImageStore` and never branch on the scheme.
"""

from curation.store.base import ImageStore, MissingObject, SizeMismatch, StoreError, image_key, sha_of_key
from curation.store.location import StorageOptions, open_images, open_store

__all__ = [
    "ImageStore",
    "MissingObject",
    "SizeMismatch",
    "StorageOptions",
    "StoreError",
    "image_key",
    "open_images",
    "open_store",
    "sha_of_key",
]
