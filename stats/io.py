"""Reading a run's output and writing the stats outputs, through fsspec (DESIGN.md §5).

Layout under one output URL (local path, s3://, memory://, ...):
    results/split=<split>/part-<shard>.parquet    read
    rejects/part-<shard>.parquet                  read (optional)
    samples.parquet, run.json                     read (optional)
    summary.parquet, tests.parquet, histograms.parquet, ranking.parquet, report.html    written
Files whose names start with "." or "_" are skipped: they are temporaries of atomic writes.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stats import storage
from stats.errors import StatsError
from stats.inputs import is_string_like

# The columns of results that stats uses; reading only these keeps 10 million rows in
# memory (the URIs of `source` and the latents alone would take gigabytes). Missing ones
# are fine: stats.columns treats every column but image_id, split and error as optional.
STATS_COLUMNS = (
    "image_id", "split", "error", "mse", "converged", "trace",
    "evaluations", "evaluations_to_exact", "latent_norm",  # the search engine's
    "format", "orig_width", "orig_height", "channels",  # the source image, for confounds
    "target_hash",  # the overlap check
)
REQUIRED_IN_PARTS = ("image_id", "error")


def open_output(out_url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and root path of an output URL."""
    if not isinstance(out_url, str) or not out_url:
        raise StatsError(f"output URL: expected a non-empty string, got {out_url!r}")
    try:
        fs, root = fsspec.core.url_to_fs(out_url, **(storage_options or {}))
    except (ValueError, ImportError) as exc:
        raise StatsError(f"output URL {out_url!r}: {exc}") from None
    return fs, root.rstrip("/") or "/"


def read_output(
    out_url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    columns: Sequence[str] | None = STATS_COLUMNS,
) -> tuple[pa.Table, pa.Table | None, pa.Table | None, dict[str, Any] | None]:
    """Read a run's results, rejects, samples and run.json from its output URL.

    Args:
        out_url: the run's output URL.
        storage_options: passed to fsspec (e.g. {"endpoint_url": ...} for S3).
        columns: the results columns to read when present (default: those stats uses);
            None reads every column.

    Returns:
        (results, rejects or None, samples or None, run_info or None). ``split`` in results
        is a plain string column taken from each part's own column, or from its
        ``split=<name>`` directory when the part has none.

    Raises:
        StatsError: no results parts, a part without image_id or error, a part whose
            split column disagrees with its directory, or an unreadable run.json.
    """
    fs, root = open_output(out_url, storage_options)
    results_dir = posixpath.join(root, "results")
    files = _parquet_files(fs, results_dir)
    if not files:
        raise StatsError(
            f"{out_url}: no results parts under {results_dir} "
            "(expected results/split=<split>/part-<shard>.parquet)"
        )
    with ThreadPoolExecutor(max_workers=min(4, len(files))) as pool:
        parts = list(pool.map(lambda f: _read_results_part(fs, f, results_dir, columns), files))
    results = pa.concat_tables(parts, promote_options="permissive")

    rejects = None
    reject_files = _parquet_files(fs, posixpath.join(root, "rejects"))
    if reject_files:
        rejects = pa.concat_tables(
            [_read_table(fs, f) for f in reject_files],
            promote_options="permissive",
        )

    samples_path = posixpath.join(root, "samples.parquet")
    samples = _read_table(fs, samples_path) if fs.exists(samples_path) else None

    run_info = None
    run_path = posixpath.join(root, "run.json")
    if fs.exists(run_path):
        run_info = read_json_object(fs, run_path)
    return results, rejects, samples, run_info


def read_json_object(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any]:
    """A JSON file holding one object (run.json); StatsError naming the file when it is not one."""
    try:
        info = json.loads(fs.cat_file(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise StatsError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise StatsError(f"{path}: expected a JSON object, got {type(info).__name__}")
    return info


def write_outputs(
    out_url: str,
    reduction: Any,
    html: str,
    *,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Write summary/tests/histograms/ranking.parquet and report.html under out_url, each atomically."""
    fs, root = open_output(out_url, storage_options)
    for name, table in (
        ("summary.parquet", reduction.summary),
        ("tests.parquet", reduction.tests),
        ("histograms.parquet", reduction.histograms),
        ("ranking.parquet", reduction.ranking),
    ):
        storage.write_atomic(fs, posixpath.join(root, name), storage.parquet_bytes(table))
    storage.write_atomic(fs, posixpath.join(root, "report.html"), html.encode("utf-8"))


def _parquet_files(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    if not fs.isdir(directory):
        return []
    found = []
    for path in fs.find(directory):
        relative = posixpath.relpath(path, directory)
        hidden = any(part.startswith((".", "_")) for part in relative.split("/"))
        if path.endswith(".parquet") and not hidden:
            found.append(path)
    return sorted(found)


def _read_table(fs: fsspec.AbstractFileSystem, path: str, columns: Sequence[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, filesystem=fs, columns=columns)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StatsError(f"{path}: cannot read as Parquet ({exc})") from None


def _read_results_part(
    fs: fsspec.AbstractFileSystem,
    path: str,
    results_dir: str,
    columns: Sequence[str] | None,
) -> pa.Table:
    try:
        names = pq.read_schema(path, filesystem=fs).names
    except (OSError, pa.ArrowInvalid) as exc:
        raise StatsError(f"{path}: cannot read as Parquet ({exc})") from None
    for required in REQUIRED_IN_PARTS:
        if required not in names:
            raise StatsError(f"{path}: results part has no column {required!r}")
    wanted = [c for c in names if columns is None or c in columns]
    table = _read_table(fs, path, wanted)

    partition = _partition_split(posixpath.relpath(path, results_dir))
    if "split" in table.column_names:
        split = table.column("split")
        if not is_string_like(split.type):
            raise StatsError(f"{path}: column 'split' must hold strings, got {split.type}")
        split = split.cast(pa.string())
        if partition is not None and table.num_rows and not pc.all(pc.equal(split, partition)).as_py():
            raise StatsError(f"{path}: column 'split' disagrees with the directory split={partition}")
        return table.set_column(table.column_names.index("split"), "split", split)
    if partition is None:
        raise StatsError(f"{path}: results part has no column 'split' and is not under a split=<name> directory")
    return table.append_column("split", pa.repeat(pa.scalar(partition, pa.string()), table.num_rows))


def _partition_split(relative: str) -> str | None:
    for part in relative.split("/")[:-1]:
        if part.startswith("split="):
            return unquote(part[len("split=") :])
    return None
