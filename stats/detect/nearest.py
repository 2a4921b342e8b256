"""Nearest-neighbour helpers of the companion detectors on numpy features, and the merge of the job's kNN parts.

The job computes the big kNN (queries against every training image) on the actors, in blocks
(recovery.neighbours); here are only the small computations the statistics need on top of it: distances
inside one C_T cell, within one birthday batch, and merging the actors' partial top-k tables.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stats.errors import StatsError

METRICS = ("l2", "l1", "cosine")
BLOCK = 2048  # rows of `a` per distance block: bounds memory at BLOCK x len(b) floats

NEIGHBOURS_SCHEMA = pa.schema([
    ("query_id", pa.string()),
    ("query_split", pa.string()),
    ("rank", pa.int32()),  # 1 = nearest
    ("train_id", pa.string()),
    ("distance", pa.float64()),
    ("space", pa.string()),  # the feature space, e.g. pixel, pixel-crop48, net
])


def pairwise(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Distances [len(a), len(b)] between rows of a [n, D] and b [m, D] (float64)."""
    if metric not in METRICS:
        raise StatsError(f"metric: {metric!r} is not one of {', '.join(METRICS)}")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if metric == "l1":
        return np.abs(a[:, None, :] - b[None, :, :]).sum(axis=2)
    if metric == "cosine":
        an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return np.clip(1.0 - an @ bn.T, 0.0, 2.0)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(sq, 0.0))


def nearest(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """For each row of a, its distance to the nearest row of b ([len(a)] float64), in blocks of a's rows.

    L2 is recomputed directly for the chosen row (the matmul form cancels near zero, where copies lie)."""
    if len(b) == 0:
        return np.full(len(a), np.inf)
    out = np.empty(len(a))
    step = BLOCK if metric != "l1" else max(1, BLOCK // 16)
    for start in range(0, len(a), step):
        block = a[start:start + step]
        d = pairwise(block, b, metric)
        j = d.argmin(axis=1)
        if metric == "l2":
            out[start:start + len(block)] = np.linalg.norm(np.asarray(block, np.float64) - b[j], axis=1)
        else:
            out[start:start + len(block)] = d[np.arange(len(block)), j]
    return out


def merge_neighbours(parts: pa.Table, *, k: int, space: str) -> tuple[pa.Table, pa.Table]:
    """The actors' partial top-k tables (one per train block) -> neighbours.parquet and per-query MiFID distances.

    Args:
        parts: query_id, query_split, train_id, distance, mifid_distance (the query's min 1 - |cos| over that
            block, repeated on its rows); rows with a null train_id (a block smaller than k) are ignored.
        k: neighbours kept per query.
        space: the feature space's name for the `space` column.

    Returns:
        (neighbours: NEIGHBOURS_SCHEMA sorted by query_split, query_id, rank; ties in distance broken by
         train_id, so the result does not depend on the order of the parts;
         mifid: query_id, query_split, mifid_distance, the min over all blocks).
    """
    mifid = (parts.group_by(["query_split", "query_id"], use_threads=False)
             .aggregate([("mifid_distance", "min")]).rename_columns(["query_split", "query_id", "mifid_distance"]))
    rows = parts.filter(pc.is_valid(parts.column("train_id")))
    rows = rows.sort_by([("query_split", "ascending"), ("query_id", "ascending"), ("distance", "ascending"),
                         ("train_id", "ascending")])
    split = rows.column("query_split").to_numpy(zero_copy_only=False)
    query = rows.column("query_id").to_numpy(zero_copy_only=False)
    n = rows.num_rows
    new = np.ones(n, bool)
    if n > 1:
        new[1:] = (split[1:] != split[:-1]) | (query[1:] != query[:-1])
    starts = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    rank = np.arange(n) - starts + 1
    keep = rank <= k
    table = pa.table({
        "query_id": rows.column("query_id").filter(pa.array(keep)).cast(pa.string()),
        "query_split": rows.column("query_split").filter(pa.array(keep)).cast(pa.string()),
        "rank": pa.array(rank[keep], pa.int32()),
        "train_id": rows.column("train_id").filter(pa.array(keep)).cast(pa.string()),
        "distance": rows.column("distance").filter(pa.array(keep)).cast(pa.float64()),
        "space": pa.array([space] * int(keep.sum()), pa.string()),
    }, schema=NEIGHBOURS_SCHEMA)
    return table, mifid


def first_and_second(neighbours: pa.Table, split: str) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """For one query split: (query ids, d1, d2 (NaN without a second neighbour), nearest train ids)."""
    mine = neighbours.filter(pc.equal(neighbours.column("query_split"), split))
    first = mine.filter(pc.equal(mine.column("rank"), 1)).sort_by("query_id")
    second = mine.filter(pc.equal(mine.column("rank"), 2)).sort_by("query_id")
    ids = first.column("query_id").to_pylist()
    d1 = first.column("distance").to_numpy(zero_copy_only=False).astype(np.float64)
    d2 = np.full(len(ids), np.nan)
    where = pc.index_in(second.column("query_id"), value_set=first.column("query_id")).to_numpy(zero_copy_only=False)
    d2[where.astype(int)] = second.column("distance").to_numpy(zero_copy_only=False)
    return ids, d1, d2, first.column("train_id").to_pylist()
