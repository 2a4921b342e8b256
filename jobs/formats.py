"""Source formats: how a source's files become rows, ids, shard segments and images.

FORMATS is the registry, keyed by the config's `format` choices (inferred from a URI's extension by
infer_format). Each entry is a SourceFormat: it counts a source's rows (Parquet footers, never the images),
gives the ids of row positions, cuts positions into (file, rows) segments and reads segments into Items. The
planner (jobs.plan) and the actors (jobs.sources.read_items) ask only these questions, so a new format is one
class and one line in FORMATS:

    parquet                  one image per row: an encoded image column (PNG/JPEG bytes) or a raw uint8
                             array column with a fixed `shape` or a per-row `shape_column`
    png jpg jpeg webp bmp    one image per file, listed by glob

Ids come from `id_column`, or are derived: `<file>#<row>` for Parquet and `<file>` for an image file, where
<file> is the path relative to the config's directory for local files and the URL without its secrets
otherwise.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stats import storage

from .redact import strip_secrets


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


class SourceSpec(Protocol):
    """What a format reads of a source's config (jobs.sections.SourceConfig has these fields)."""

    uri: str
    format: str | None
    image_column: str | None
    array_column: str | None
    shape_column: str | None
    id_column: str | None
    label_column: str | None
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class SourceListing:
    """One configured source, expanded: its files (sorted URLs) and their row counts."""

    split: str
    index: int
    source: SourceSpec
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
        so cutting a source into shards costs O(n log n) in all (it was O(n) per shard).
        """
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size == 0:
            return []
        which = np.searchsorted(self.bounds, positions, side="right") - 1  # [k] file of each position
        cuts = np.flatnonzero(np.diff(which)) + 1
        starts, stops = [0, *cuts.tolist()], [*cuts.tolist(), len(positions)]
        return [(int(which[a]), positions[a:b] - self.bounds[which[a]]) for a, b in zip(starts, stops)]


class SourceFormat(Protocol):
    """What the planner and the actors ask of a format; nothing outside it looks at which format it is."""

    extensions: tuple[str, ...]

    def count_all(self, files: Sequence[str], src: "SourceSpec", endpoint_url: str | None) -> list[int]:
        """Rows of each listed file, in order (footers or the like; never the images)."""

    def ids(self, listing: SourceListing, positions: np.ndarray, base_dir: str, endpoint_url: str | None) -> list[str | None]:
        """The ids of the source row positions (sorted)."""

    def segments(self, listing: SourceListing, positions: np.ndarray) -> tuple[tuple[str, Sequence[int]], ...]:
        """The positions as (file URL, rows in that file) segments, the unit a shard stores and reads."""

    def read(self, src: "SourceSpec", segments: list[tuple[str, Sequence[int]]], base_dir: str,
             endpoint_url: str | None) -> list[Item]:
        """The images of the segments, in order; an image's own fault is an Item with an error."""


class ParquetFormat:
    """One image per row of Parquet files: an encoded image column, or a raw array with a shape."""

    extensions = ("parquet", "pq")

    def count_all(self, files: Sequence[str], src: "SourceSpec", endpoint_url: str | None) -> list[int]:
        with ThreadPoolExecutor(max_workers=16) as pool:  # one footer request per file; object stores like parallel
            return list(pool.map(lambda u: self.count_rows(u, src, endpoint_url), files))

    def ids(self, listing: SourceListing, positions: np.ndarray, base_dir: str, endpoint_url: str | None) -> list[str | None]:
        ids: list[str | None] = []
        for f, rows in listing.locate(positions):
            url = listing.files[f]
            if listing.source.id_column is None:
                ids.extend(derived_id(url, base_dir, int(r)) for r in rows)
            else:
                every = storage.retrying(lambda: self.read_ids(url, listing.source, base_dir, endpoint_url),
                                         f"reading ids of {url}")
                ids.extend(every[int(r)] for r in rows)
        return ids

    def segments(self, listing: SourceListing, positions: np.ndarray) -> tuple[tuple[str, Sequence[int]], ...]:
        return tuple((listing.files[f], _compact(rows)) for f, rows in listing.locate(positions))

    def read(self, src: "SourceSpec", segments: list[tuple[str, Sequence[int]]], base_dir: str,
             endpoint_url: str | None) -> list[Item]:
        items = []
        for url, rows in segments:
            items.extend(storage.retrying(lambda url=url, rows=rows: self.read_rows(url, rows, src, base_dir, endpoint_url),
                                          f"reading {url}"))
        return items

    def check_schema(self, schema: pa.Schema, src: "SourceSpec", url: str) -> None:
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

    def count_rows(self, url: str, src: "SourceSpec", endpoint_url: str | None) -> int:
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

    def read_ids(self, url: str, src: "SourceSpec", base_dir: str, endpoint_url: str | None) -> list[str]:
        if src.id_column is None:
            n = self.count_rows(url, src, endpoint_url)
            return [derived_id(url, base_dir, row) for row in range(n)]
        fs, path = storage.filesystem(url, endpoint_url)
        with fs.open(path, "rb") as f:
            column = pq.ParquetFile(f).read(columns=[src.id_column]).column(0)
        return [None if v is None else str(v) for v in column.to_pylist()]

    def read_rows(self, url: str, rows: Sequence[int], src: "SourceSpec", base_dir: str,
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

    def _items(self, table: pa.Table, rows: np.ndarray, src: "SourceSpec", url: str, base_dir: str) -> list[Item]:
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
        if src.label_column:  # each image's class, for a conditional generator
            items = [replace(item, label=label) for item, label in zip(items, table.column(src.label_column).to_pylist())]
        return items


class ImageFiles:
    """One encoded image per file (position p is file p, row 0); decoding is recovery.to_target's (PIL)."""

    def __init__(self, extension: str) -> None:
        self.extensions = (extension,)

    def count_all(self, files: Sequence[str], src: "SourceSpec", endpoint_url: str | None) -> list[int]:
        return [1] * len(files)

    def ids(self, listing: SourceListing, positions: np.ndarray, base_dir: str, endpoint_url: str | None) -> list[str | None]:
        # no per-file arrays at 10^6 files: position p is file p
        return [_public(i) for i in storage.identities([listing.files[p] for p in positions.tolist()], base_dir)]

    def segments(self, listing: SourceListing, positions: np.ndarray) -> tuple[tuple[str, Sequence[int]], ...]:
        return tuple((listing.files[p], range(0, 1)) for p in positions.tolist())

    def read(self, src: "SourceSpec", segments: list[tuple[str, Sequence[int]]], base_dir: str,
             endpoint_url: str | None) -> list[Item]:
        def one(url: str) -> Item:
            image_id = derived_id(url, base_dir, None)
            try:
                return Item(image_id, url, 0, storage.read_bytes(url, endpoint_url))
            except IMAGE_READ_ERRORS as exc:  # this image's reject, not the shard's failure
                return Item(image_id, url, 0, None, f"cannot read file: {type(exc).__name__}: {exc}")

        with ThreadPoolExecutor(max_workers=16) as pool:  # many small objects: fetch them concurrently
            return list(pool.map(one, [url for url, _ in segments]))


FORMATS: dict[str, SourceFormat] = {"parquet": ParquetFormat(), **{e: ImageFiles(e) for e in IMAGE_EXTENSIONS}}


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


def _compact(rows: np.ndarray) -> range | tuple[int, ...]:
    """Rows inside one file (sorted, unique): a range when contiguous (the usual case, no limit), else a tuple."""
    if len(rows) and int(rows[-1]) - int(rows[0]) + 1 == len(rows):
        return range(int(rows[0]), int(rows[-1]) + 1)
    return tuple(rows.tolist())


def derived_id(url: str, base_dir: str, row: int | None) -> str:
    """An id from where an image lives: `<file>#<row>` for a Parquet row, `<file>` for an image file. A URL's
    credentials (userinfo, a pre-signed URL's X-Amz-Signature, a token) are no part of it (redact.strip_secrets):
    ids reach the results, ranking.parquet, samples.parquet and report.html, and stay the same when the URL is
    signed again."""
    name = _public(storage.identity(url, base_dir))
    return name if row is None else f"{name}#{row}"


def _public(name: str) -> str:
    return strip_secrets(name) if any(c in name for c in "?#@") else name
