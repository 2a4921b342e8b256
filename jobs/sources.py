"""Target images from their sources: list files, count rows, read a set of rows, derive and check ids.

Formats sit in a registry keyed by the config's `format` choices (inferred from the extension):

    parquet                  one image per row: an encoded image column (PNG/JPEG bytes) or a raw uint8
                             array column with a fixed `shape` or a per-row `shape_column`
    png jpg jpeg webp bmp    one image per file, listed by glob

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
them (issue 10).
"""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stats import storage

from .redact import strip_secrets

if TYPE_CHECKING:
    from .config import SourceConfig

IMAGE_READ_ERRORS = (FileNotFoundError, IsADirectoryError)  # an image file's own fault: a rejects row (read_items)
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp")


class SourceError(ValueError):
    """A source that cannot be used (no files, a missing column); raised as the config's ConfigError by plan."""


@dataclass(frozen=True)
class Item:
    """One input image as read: `data` is encoded bytes or a uint8 [H, W] / [H, W, C] array, or None with `error`."""

    image_id: str
    source: str  # the file's URL
    row: int  # the row inside that file (0 for an image file)
    data: bytes | np.ndarray | None
    error: str | None = None
    label: object = None  # the source's label_column value (a class of a conditional generator), when it has one


# ---------------------------------------------------------------------------------------------------------
# Formats


class ParquetFormat:
    extensions = ("parquet", "pq")

    def check_schema(self, schema: pa.Schema, src: "SourceConfig", url: str) -> None:
        """Raise SourceError if the columns `src` names are missing or of the wrong type."""
        wanted = {"image_column": src.image_column, "array_column": src.array_column,
                  "shape_column": src.shape_column, "id_column": src.id_column, "label_column": src.label_column}
        for key, column in wanted.items():
            if column is None:
                continue
            if column not in schema.names:
                raise SourceError(f"{key}: {url} has no column {column!r} (columns: {', '.join(schema.names)})")
            t = schema.field(column).type
            ok = {
                "image_column": pa.types.is_binary(t) or pa.types.is_large_binary(t),
                "array_column": pa.types.is_binary(t) or pa.types.is_large_binary(t) or _is_list_of(t, pa.types.is_integer),
                "shape_column": _is_list_of(t, pa.types.is_integer),
                "id_column": pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t),
                "label_column": pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t),
            }[key]
            if not ok:
                expect = {"image_column": "binary (encoded image bytes)", "array_column": "list<uint8> or binary",
                          "shape_column": "list<int>", "id_column": "string or integer", "label_column": "string or integer"}[key]
                raise SourceError(f"{key}: column {column!r} of {url} is {t}, expected {expect}")

    def count_rows(self, url: str, src: "SourceConfig", endpoint_url: str | None) -> int:
        def footer() -> pq.FileMetaData:
            fs, path = storage.filesystem(url, endpoint_url)
            with fs.open(path, "rb") as f:
                return pq.ParquetFile(f).metadata

        try:
            meta = storage.retrying(footer, f"reading the footer of {url}")
        except pa.ArrowInvalid as exc:  # zero bytes, truncated, not Parquet: the file's fault, named
            raise SourceError(f"uri: {url} is not a readable Parquet file ({exc}); replace or remove it") from None
        self.check_schema(meta.schema.to_arrow_schema(), src, url)
        return meta.num_rows

    def read_ids(self, url: str, src: "SourceConfig", base_dir: str, endpoint_url: str | None) -> list[str]:
        if src.id_column is None:
            n = self.count_rows(url, src, endpoint_url)
            return [derived_id(url, base_dir, row) for row in range(n)]
        fs, path = storage.filesystem(url, endpoint_url)
        with fs.open(path, "rb") as f:
            column = pq.ParquetFile(f).read(columns=[src.id_column]).column(0)
        return [None if v is None else str(v) for v in column.to_pylist()]

    def read_rows(self, url: str, rows: Sequence[int], src: "SourceConfig", base_dir: str,
                  endpoint_url: str | None) -> list[Item]:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return []
        if np.any(np.diff(rows) <= 0):
            raise ValueError("rows must be strictly increasing")
        data_column = src.image_column or src.array_column
        columns = [c for c in dict.fromkeys((data_column, src.id_column, src.shape_column, src.label_column)) if c]
        fs, path = storage.filesystem(url, endpoint_url)
        items: list[Item] = []
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            self.check_schema(pf.schema_arrow, src, url)
            if rows[-1] >= pf.metadata.num_rows:
                raise SourceError(f"{url} has {pf.metadata.num_rows} rows, row {int(rows[-1])} was asked for (did it change?)")
            start = 0
            for g in range(pf.metadata.num_row_groups):
                stop = start + pf.metadata.row_group(g).num_rows
                lo, hi = np.searchsorted(rows, [start, stop])
                if hi > lo:
                    # Batches keep memory bounded when a row group holds many images.
                    offset = start
                    for batch in pf.iter_batches(batch_size=1024, row_groups=[g], columns=columns):
                        end = offset + batch.num_rows
                        a, b = np.searchsorted(rows, [offset, end])
                        if b > a:
                            table = pa.Table.from_batches([batch]).take(pa.array(rows[a:b] - offset))
                            items.extend(self._items(table, rows[a:b], src, url, base_dir))
                        offset = end
                start = stop
        return items

    def _items(self, table: pa.Table, rows: np.ndarray, src: "SourceConfig", url: str, base_dir: str) -> list[Item]:
        data = table.column(src.image_column or src.array_column).to_pylist()
        ids = table.column(src.id_column).to_pylist() if src.id_column else [None] * len(rows)
        shapes = table.column(src.shape_column).to_pylist() if src.shape_column else [src.shape] * len(rows)
        items = []
        for row, value, image_id, shape in zip(rows.tolist(), data, ids, shapes):
            image_id = str(image_id) if src.id_column else derived_id(url, base_dir, row)
            if value is None:
                items.append(Item(image_id, url, row, None, "no image (null)"))
            elif src.image_column:
                items.append(Item(image_id, url, row, value))
            else:
                array = np.frombuffer(value, dtype=np.uint8) if isinstance(value, bytes) else np.asarray(value)
                if array.dtype != np.uint8 and (array.size and (array.min() < 0 or array.max() > 255)):
                    items.append(Item(image_id, url, row, None, "array values outside 0..255"))
                    continue
                if shape is None or int(np.prod(shape)) != array.size:
                    items.append(Item(image_id, url, row, None, f"{array.size} values do not fit shape {shape}"))
                    continue
                items.append(Item(image_id, url, row, array.astype(np.uint8).reshape(tuple(shape))))
        if src.label_column:  # issue 13: each image's class, for a conditional generator
            items = [replace(item, label=label) for item, label in zip(items, table.column(src.label_column).to_pylist())]
        return items


class ImageFiles:
    """One encoded image per file; decoding is recovery.to_target's (PIL)."""

    def __init__(self, extension: str) -> None:
        self.extensions = (extension,)

    def count_rows(self, url: str, src: "SourceConfig", endpoint_url: str | None) -> int:
        return 1

    def read_ids(self, url: str, src: "SourceConfig", base_dir: str, endpoint_url: str | None) -> list[str]:
        return [derived_id(url, base_dir, None)]

    def read_rows(self, url: str, rows: Sequence[int], src: "SourceConfig", base_dir: str,
                  endpoint_url: str | None) -> list[Item]:
        raise NotImplementedError("image files are read together: see read_files")


FORMATS: dict[str, ParquetFormat | ImageFiles] = {"parquet": ParquetFormat(), **{e: ImageFiles(e) for e in IMAGE_EXTENSIONS}}


def infer_format(uri: str) -> str | None:
    """The format a uri's extension names (`*.PNG` -> png, `x.pq` -> parquet), or None."""
    if uri.split("://", 1)[0].lower() in ("http", "https"):  # a pre-signed URL: the extension is before the query
        uri = uri.split("#", 1)[0].split("?", 1)[0]
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    if "." not in name:
        return None
    ext = name.rsplit(".", 1)[-1].lower()
    for key, fmt in FORMATS.items():
        if ext in fmt.extensions:
            return key
    return None


def _is_list_of(t: pa.DataType, pred) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and pred(t.value_type)


# ---------------------------------------------------------------------------------------------------------
# Listing and reading


@dataclass(frozen=True)
class SourceListing:
    """One configured source, expanded: its files (sorted URLs) and their row counts."""

    split: str
    index: int
    source: "SourceConfig"
    files: tuple[str, ...]
    rows: tuple[int, ...]
    versions: tuple[str, ...] = ()  # per file: size and ETag / version id / mtime (storage.version_token)
    bounds: np.ndarray = field(init=False, repr=False, compare=False)  # [files + 1] int64: first row of each file

    def __post_init__(self) -> None:
        object.__setattr__(self, "bounds", np.concatenate(([0], np.cumsum(self.rows, dtype=np.int64))))

    @property
    def total(self) -> int:
        return int(self.bounds[-1])

    def locate(self, positions: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Source row positions (sorted) -> [(file index, rows inside that file)], in order.

        One binary search per position over the files' first rows: O(k log n) for k positions in n files,
        so cutting a source into shards costs O(n log n) in all (issue 11: it was O(n) per shard).
        """
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return []
        which = np.searchsorted(self.bounds, positions, side="right") - 1  # [k] file of each position
        cuts = np.flatnonzero(np.diff(which)) + 1
        starts, stops = [0, *cuts.tolist()], [*cuts.tolist(), len(positions)]
        return [(int(which[a]), positions[a:b] - self.bounds[which[a]]) for a, b in zip(starts, stops)]


def list_files(src: "SourceConfig", endpoint_url: str | None) -> list[str]:
    """The files a source names: a glob, a directory (files with the format's extensions) or one file; sorted URLs."""
    return sorted(list_versions(src, endpoint_url))


def list_versions(src: "SourceConfig", endpoint_url: str | None) -> dict[str, str]:
    """list_files' URLs -> each file's version token (size and ETag or mtime), from the same one listing.

    The token goes into the fingerprint, so a file replaced by another of the same name and row count
    makes a different run instead of a resume that mixes the two files' rows (issue 15).
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
    fmt = FORMATS[src.format]
    if isinstance(fmt, ImageFiles):
        rows = [1] * len(files)
    else:
        with ThreadPoolExecutor(max_workers=16) as pool:  # one footer request per file; object stores like parallel
            rows = list(pool.map(lambda u: fmt.count_rows(u, src, endpoint_url), files))
    if sum(rows) == 0:
        raise SourceError(f"uri: {src.uri!r} holds no rows ({len(files)} {src.format} file(s), all empty); "
                          "an empty source would silently drop its images from the split")
    return SourceListing(split, index, src, tuple(files), tuple(rows), tuple(versions[f] for f in files))


def read_ids(listing: SourceListing, positions: np.ndarray, base_dir: str, endpoint_url: str | None) -> list[str | None]:
    """The ids of the given source row positions (the id column only, or derived from paths)."""
    fmt = FORMATS[listing.source.format]
    if isinstance(fmt, ImageFiles):  # one row per file: position p is file p (no per-file arrays at 10^6 files)
        return [_public(i) for i in storage.identities([listing.files[p] for p in positions.tolist()], base_dir)]
    ids: list[str | None] = []
    for f, rows in listing.locate(positions):
        url = listing.files[f]
        if listing.source.id_column is None:
            ids.extend(derived_id(url, base_dir, int(r)) for r in rows)
        else:
            every = storage.retrying(lambda: fmt.read_ids(url, listing.source, base_dir, endpoint_url), f"reading ids of {url}")
            ids.extend(every[int(r)] for r in rows)
    return ids


def read_items(src: "SourceConfig", segments: Iterable[tuple[str, Sequence[int]]], base_dir: str,
               endpoint_url: str | None) -> list[Item]:
    """Read the images of (file URL, rows in that file) segments, in order.

    An image file that is gone (listed at planning, missing now) or is a directory becomes an Item with an
    error (a rejects row). Anything else fails the call, and with it the shard, which is retried and never
    marked done: a store outage that outlasts the retries (StorageError), a denied read, a connection error
    are the infrastructure's, not the image's (issue 11). A Parquet file that cannot be read fails the call.
    """
    fmt = FORMATS[src.format]
    segments = list(segments)
    if isinstance(fmt, ImageFiles):
        def one(url: str) -> Item:
            image_id = derived_id(url, base_dir, None)
            try:
                return Item(image_id, url, 0, storage.read_bytes(url, endpoint_url))
            except IMAGE_READ_ERRORS as exc:  # this image's reject, not the shard's failure
                return Item(image_id, url, 0, None, f"cannot read file: {type(exc).__name__}: {exc}")

        with ThreadPoolExecutor(max_workers=16) as pool:  # many small objects: fetch them concurrently
            return list(pool.map(one, [url for url, _ in segments]))
    items = []
    for url, rows in segments:
        items.extend(storage.retrying(lambda url=url, rows=rows: fmt.read_rows(url, rows, src, base_dir, endpoint_url),
                                      f"reading {url}"))
    return items


# ---------------------------------------------------------------------------------------------------------
# Ids, subsampling and checks


def derived_id(url: str, base_dir: str, row: int | None) -> str:
    """An id from where an image lives: `<file>#<row>` for a Parquet row, `<file>` for an image file. A URL's
    credentials (userinfo, a pre-signed URL's X-Amz-Signature, a token) are no part of it (redact.strip_secrets):
    ids reach the results, ranking.parquet, samples.parquet and report.html, and stay the same when the URL is
    signed again."""
    name = _public(storage.identity(url, base_dir))
    return name if row is None else f"{name}#{row}"


def _public(name: str) -> str:
    return strip_secrets(name) if any(c in name for c in "?#@") else name


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
