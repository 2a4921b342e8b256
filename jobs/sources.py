"""Target images from their sources: list files, count rows, read a set of rows, derive and check ids.

Each source has a format from jobs.formats' registry (Parquet rows or image files), which answers every
format-specific question; this module lists, counts and reads through it.

Rows of a source are numbered over its files in sorted order (a Parquet file's rows in file order; an
image file is one row). Row counts come from Parquet footers, never from reading data. `select_rows`
draws the seeded per-split subsample of `targets.limit`. Ids come from `id_column`, or are derived:
`<file>#<row>` for Parquet and `<file>` for an image file, where <file> is the path relative to the
config's directory for local files and the full URL otherwise.

The plan checks ids before any work (cheap: the id column only; jobs.plan.check_ids): duplicates within a
split and ids shared by a memorization pair's splits are refused. Equal image *content* under different ids is checked after the run
from the `target_hash` column that actors add to every results row (hashing every image in the driver
would read the whole data set twice at 10^6 scale). `describe_image` reads an image's header (format,
original size, channels) for the results rows, so that stats can warn when train and val differ in
them.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from stats import storage

from .formats import FORMATS, Item, SourceError, SourceListing

if TYPE_CHECKING:
    from .sections import SourceConfig

# ---------------------------------------------------------------------------------------------------------
# Listing and reading


def list_files(src: "SourceConfig", endpoint_url: str | None) -> list[str]:
    """The files a source names: a glob, a directory (files with the format's extensions) or one file; sorted URLs."""
    return sorted(list_versions(src, endpoint_url))


def list_versions(src: "SourceConfig", endpoint_url: str | None) -> dict[str, str]:
    """list_files' URLs -> each file's version token (size and ETag or mtime), from the same one listing.

    The token goes into the fingerprint, so a file replaced by another of the same name and row count
    makes a different run instead of a resume that mixes the two files' rows.
    """
    fmt = FORMATS[src.format]
    fs, path = storage.filesystem(src.uri, endpoint_url)
    fs.invalidate_cache()
    if storage.is_glob(src.uri):
        found = storage.retrying(lambda: fs.glob(path, detail=True), f"listing {src.uri}")  # one listing, no HEAD per file
        infos = [info for info in found.values() if info.get("type") == "file"]
    elif storage.retrying(lambda: fs.isdir(path), f"checking {src.uri}"):
        entries = storage.retrying(lambda: fs.ls(path, detail=True), f"listing {src.uri}")
        infos = [e for e in entries if e.get("type") == "file" and e["name"].rsplit(".", 1)[-1].lower() in fmt.extensions]
    elif storage.retrying(lambda: fs.exists(path), f"checking {src.uri}"):
        infos = [{**storage.retrying(lambda: fs.info(path), f"checking {src.uri}"), "name": path}]
    else:
        infos = []
    found = {storage.with_protocol(src.uri, i["name"]): storage.version_token(i) for i in infos}
    for url in found:
        if not url.isprintable() or url != url.encode("utf-8", "surrogateescape").decode("utf-8", "replace"):
            raise SourceError(f"uri: the file name {ascii(url)} is not valid UTF-8 text (or holds control characters); "
                              "image ids and tables need text names: rename it")
    return found


def list_source(split: str, index: int, src: "SourceConfig", endpoint_url: str | None) -> SourceListing:
    """List a source's files and count their rows (Parquet footers only). Raises SourceError if it is empty."""
    versions = list_versions(src, endpoint_url)
    files = sorted(versions)
    if not files:
        raise SourceError(f"uri: no {src.format} files match {src.uri!r}")
    rows = FORMATS[src.format].count_all(files, src, endpoint_url)
    if sum(rows) == 0:
        raise SourceError(f"uri: {src.uri!r} holds no rows ({len(files)} {src.format} file(s), all empty); "
                          "an empty source would silently drop its images from the split")
    return SourceListing(split, index, src, tuple(files), tuple(rows), tuple(versions[f] for f in files))


def read_ids(listing: SourceListing, positions: np.ndarray, base_dir: str, endpoint_url: str | None) -> list[str | None]:
    """The ids of the given source row positions (the id column only, or derived from paths)."""
    return FORMATS[listing.source.format].ids(listing, positions, base_dir, endpoint_url)


def read_items(src: "SourceConfig", segments: Iterable[tuple[str, Sequence[int]]], base_dir: str,
               endpoint_url: str | None) -> list[Item]:
    """Read the images of (file URL, rows in that file) segments, in order.

    An image file that is gone (listed at planning, missing now) or is a directory becomes an Item with an
    error (a rejects row). Anything else fails the call, and with it the shard, which is retried and never
    marked done: a store outage that outlasts the retries (StorageError), a denied read, a connection error
    are the infrastructure's, not the image's. A Parquet file that cannot be read fails the call.
    """
    return FORMATS[src.format].read(src, list(segments), base_dir, endpoint_url)


# ---------------------------------------------------------------------------------------------------------
# Ids, subsampling and checks


def select_rows(total: int, limit: int | None, seed: int, split: str) -> np.ndarray:
    """The sorted positions of a split's rows to audit: all, or `limit` of them drawn at random.

    The draw depends only on (total, limit, seed, split name), so it is the same in every run.
    """
    if limit is None or limit >= total:
        return np.arange(total, dtype=np.int64)
    split_key = int.from_bytes(hashlib.sha256(split.encode()).digest()[:8], "little")
    rng = np.random.default_rng([seed, split_key])
    return np.sort(rng.choice(total, size=limit, replace=False)).astype(np.int64)


def content_hash(array: np.ndarray) -> str:
    """A short hash of an image as audited (its target tensor's bytes): equal images, equal hashes."""
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=8).hexdigest()


# Channels of a decoded image by PIL mode; a palette image is audited as RGB(A).
_MODE_CHANNELS = {"1": 1, "L": 1, "I": 1, "F": 1, "I;16": 1, "I;16B": 1, "I;16L": 1, "LA": 2, "La": 2, "P": 3,
                  "PA": 4, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4}


@dataclass(frozen=True)
class SourceImage:
    """What an image was before preprocessing: its encoding and original size (null fields when unknown)."""

    format: str | None  # PNG, JPEG, ... as PIL names it; "array" for raw uint8 arrays
    width: int | None
    height: int | None
    channels: int | None


def describe_image(data: bytes | np.ndarray | None) -> SourceImage:
    """The format, original size and channel count of an input image, from its header only (PIL is lazy).

    Called on images that recovery.to_target already decoded, so a header PIL cannot read is not expected;
    it gives nulls rather than a second reject reason for the same image.
    """
    if isinstance(data, np.ndarray):
        channels = 1 if data.ndim == 2 else int(data.shape[2])
        return SourceImage("array", int(data.shape[1]), int(data.shape[0]), channels)
    if not isinstance(data, (bytes, bytearray)):
        return SourceImage(None, None, None, None)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return SourceImage(image.format, image.size[0], image.size[1], _MODE_CHANNELS.get(image.mode))
    except (UnidentifiedImageError, OSError, ValueError):
        return SourceImage(None, None, None, None)
