"""Checks on the input tables, and the grouping of results by split.

Stats works on results from any source (the Ray job, the in-process API, a table written
by hand), so it checks what it uses instead of trusting the writer: the columns it needs,
their types, no missing or negative errors, and one row per image and split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stats.errors import StatsError

TRAIN = "train"
VAL = "val"
GENERATED = "generated"  # the split sampled from the generator itself (DESIGN.md §1)

RESULTS_REQUIRED = ("image_id", "split", "error")
REJECTS_REQUIRED = ("split",)
SAMPLES_REQUIRED = ("image_id", "split", "rank", "error", "target", "recovery")
RANKS = ("best", "median", "worst")
TOP = "top-"  # samples of the memorization ranking: rank "top-<n>", n the image's rank in ranking.parquet


def is_sample_rank(rank: object) -> bool:
    """best, median, worst, or top-<n> with n >= 1."""
    if rank in RANKS:
        return True
    return isinstance(rank, str) and rank.startswith(TOP) and rank[len(TOP):].isdigit() and int(rank[len(TOP):]) >= 1


def order_splits(names: Iterable[str]) -> list[str]:
    """Report order: train, val, the other real splits by name, then generated."""
    unique = set(names)
    head = [s for s in (TRAIN, VAL) if s in unique]
    rest = sorted(unique - {TRAIN, VAL, GENERATED})
    tail = [GENERATED] if GENERATED in unique else []
    return head + rest + tail


def split_kind(name: str) -> str:
    return "generated" if name == GENERATED else "real"


@dataclass(frozen=True)
class SplitGroups:
    """The results grouped by split, splits in report order.

    rows: positions (int64) of each split's rows in the results table.
    errors: each split's errors as float64, sorted ascending; every statistic reads these.
    """

    rows: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]

    @property
    def names(self) -> list[str]:
        return list(self.errors)


def require_table(table: object, what: str, required: Sequence[str]) -> pa.Table:
    if not isinstance(table, pa.Table):
        raise StatsError(f"{what}: expected a pyarrow.Table, got {type(table).__name__}")
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise StatsError(
            f"{what}: missing column {missing[0]!r} (required: {', '.join(required)}; "
            f"present: {', '.join(table.column_names) or 'none'})"
        )
    return table


def is_string_like(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        return is_string_like(dtype.value_type)
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)


def string_column(table: pa.Table, name: str, what: str) -> pa.ChunkedArray:
    """A string column as plain ``string``, with no nulls."""
    column = table.column(name)
    if not is_string_like(column.type):
        raise StatsError(f"{what}: column {name!r} must hold strings, got {column.type}")
    if column.null_count:
        raise StatsError(f"{what}: column {name!r} has {column.null_count} missing values")
    return column.cast(pa.string()) if column.type != pa.string() else column


def split_codes(split: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """Integer code per row and the split name of each code."""
    encoded = pc.dictionary_encode(split).combine_chunks()  # one dictionary for all chunks
    names = encoded.dictionary.to_pylist()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    return codes, names


def group_results(results: pa.Table, *, check_ids: bool = True) -> SplitGroups:
    """Validate the results table and group its errors by split.

    Raises StatsError, naming the column, when the table is empty, a required column is
    missing or mistyped, an error is missing, negative or not finite, or (with check_ids)
    an image id is missing or appears twice in one split.
    """
    what = "results"
    require_table(results, what, RESULTS_REQUIRED)
    if results.num_rows == 0:
        raise StatsError(
            "results: the table is empty; there is nothing to summarize "
            "(every input was rejected, or the run wrote no results parts)"
        )
    split = string_column(results, "split", what)
    codes, names = split_codes(split)
    error = _error_values(results)
    if check_ids:
        _check_ids(results, codes, names)

    # One stable sort of small integer codes groups the rows; numpy sorts int16 by radix.
    small = codes.astype(np.int16) if len(names) < 2**15 else codes
    order = np.argsort(small, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(names)))])
    rows = {names[k]: order[bounds[k] : bounds[k + 1]] for k in range(len(names))}
    ordered = order_splits(names)
    return SplitGroups(
        rows={s: rows[s] for s in ordered},
        errors={s: np.sort(error[rows[s]]) for s in ordered},
    )


def _error_values(results: pa.Table) -> np.ndarray:
    column = results.column("error")
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        raise StatsError(f"results: column 'error' must be numeric, got {column.type}")
    if column.null_count:
        raise StatsError(
            f"results: column 'error' has {column.null_count} missing values "
            f"(e.g. image_id {_example_id(results, pc.is_null(column))!r})"
        )
    values = column.to_numpy().astype(np.float64, copy=False)
    bad = ~np.isfinite(values)
    if bad.any():
        raise StatsError(
            f"results: column 'error' has {int(bad.sum())} values that are NaN or infinite "
            f"(e.g. image_id {_example_id(results, bad)!r}); failed recoveries belong in the rejects table"
        )
    negative = values < 0
    if negative.any():
        raise StatsError(
            f"results: column 'error' has {int(negative.sum())} negative values; a recovery "
            f"error is a loss >= 0 (e.g. image_id {_example_id(results, negative)!r})"
        )
    return values


def _example_id(results: pa.Table, mask: np.ndarray | pa.ChunkedArray) -> object:
    mask = np.asarray(mask.to_numpy(zero_copy_only=False) if isinstance(mask, pa.ChunkedArray) else mask)
    position = int(np.flatnonzero(mask)[0])
    return results.column("image_id")[position].as_py() if "image_id" in results.column_names else position


def _check_ids(results: pa.Table, codes: np.ndarray, names: list[str]) -> None:
    """One results row per image and split (DESIGN.md §5), checked through 64-bit hashes."""
    ids = results.column("image_id")
    if ids.null_count:
        raise StatsError(f"results: column 'image_id' has {ids.null_count} missing values")
    if pa.types.is_integer(ids.type):
        hashes = ids.to_numpy().astype(np.uint64)
    elif is_string_like(ids.type):
        hashes = string_hashes(ids)
    else:
        raise StatsError(f"results: column 'image_id' must hold strings, got {ids.type}")
    # Equal (split, hash) pairs are candidates; compare the candidates' ids themselves.
    keyed = hashes ^ (codes.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    ordered = np.sort(keyed)
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return
    candidates = np.flatnonzero(np.isin(keyed, ordered[1:][same]))
    pairs = zip(codes[candidates].tolist(), ids.take(pa.array(candidates)).to_pylist())
    seen: dict[tuple[int, object], int] = {}
    for key in pairs:
        seen[key] = seen.get(key, 0) + 1
    duplicates = [(key, n) for key, n in seen.items() if n > 1]
    if duplicates:
        (code, image_id), n = duplicates[0]
        raise StatsError(
            f"results: image_id {image_id!r} appears {n} times in split {names[code]!r} "
            f"({len(duplicates)} duplicated ids in all); each image must have exactly one results row"
        )


_BYTES_PER_STEP = 1 << 22  # bounds the temporary arrays of string_hashes to ~200 MB


def string_hashes(column: pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each string, vectorized over the Arrow buffers.

    A random linear form of the bytes modulo 2**64 (plus the length): two different
    strings collide with probability about 2**-56, and collisions are checked exactly by
    the caller. Hashing with Arrow's own hash table costs ~5 s and ~700 MB per 10M ids.
    """
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.string())
    offset_type = np.int64 if pa.types.is_large_string(column.type) else np.int32
    out = np.empty(len(column), dtype=np.uint64)
    weights = _weights(64)
    start = 0
    for chunk in column.chunks:
        n = len(chunk)
        offsets = np.frombuffer(chunk.buffers()[1], dtype=offset_type)[chunk.offset : chunk.offset + n + 1]
        offsets = offsets.astype(np.int64)
        data_buffer = chunk.buffers()[2]
        data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
        lengths = np.diff(offsets)
        if n and lengths.max(initial=0) > len(weights):
            weights = _weights(int(lengths.max()))
        row = 0
        while row < n:
            end = int(np.searchsorted(offsets, offsets[row] + _BYTES_PER_STEP, side="right")) - 1
            end = min(max(end, row + 1), n)
            o = offsets[row : end + 1] - offsets[row]
            raw = data[offsets[row] : offsets[end]].astype(np.uint64) + np.uint64(1)
            position = np.arange(len(raw), dtype=np.int64) - np.repeat(o[:-1], np.diff(o))
            terms = raw * weights[position]
            cumulative = np.concatenate([np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)])
            h = cumulative[o[1:]] - cumulative[o[:-1]]
            out[start + row : start + end] = h + np.diff(o).astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)
            row = end
        start += n
    return out


def _weights(length: int) -> np.ndarray:
    rng = np.random.default_rng(0x5EED)
    return rng.integers(0, 2**63, size=max(length, 64), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
