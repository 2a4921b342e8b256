"""The output layout (DESIGN §5), part files with their fingerprint, and the resume bookkeeping.

    <out>/results/split=<split>/part-<shard>.parquet   written by an actor, first (absent if every image was rejected)
    <out>/rejects/part-<shard>.parquet                 written by the actor last, always (maybe empty): the shard's
                                                       done marker
    <out>/samples.parquet  summary.parquet  tests.parquet  histograms.parquet  ranking.parquet  report.html  run.json

Each part is one atomic put and carries the run's fingerprint in its Parquet schema metadata
(b"memaudit.fingerprint"), so resume decides from footers alone: a shard is done when its rejects part
exists with the current fingerprint. A results part without its rejects part (an actor died between the
two puts) is simply rewritten, with the same rows, when the shard runs again.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .errors import ConfigError

FINGERPRINT_KEY = b"memaudit.fingerprint"
SHARD_KEY = b"memaudit.shard"
# Everything memaudit writes under <out>: --overwrite removes these and nothing else.
OWN_FILES = ("run.json", "samples.parquet", "summary.parquet", "tests.parquet", "histograms.parquet", "ranking.parquet",
             "report.html")
OWN_DIRS = ("results", "rejects", "features")  # features/: the companion detectors' parts (issue 12)
OWN_FILES += ("neighbours.parquet", "detectors.parquet", "ct_cells.parquet", "birthday.parquet", "pairs.parquet")

REJECTS_SCHEMA = pa.schema([
    ("image_id", pa.string()),
    ("split", pa.string()),
    ("source", pa.string()),
    ("row", pa.int64()),
    ("stage", pa.string()),  # read (unreadable) | decode (recovery.to_target refused it) | recover (no finite loss)
    ("reason", pa.string()),
])


def results_url(out: str, split: str, shard_id: str) -> str:
    return storage.join(out, "results", f"split={split}", f"part-{shard_id}.parquet")


def rejects_url(out: str, shard_id: str) -> str:
    return storage.join(out, "rejects", f"part-{shard_id}.parquet")


def file_url(out: str, name: str) -> str:
    """One of OWN_FILES under <out>."""
    return storage.join(out, name)


def part_bytes(table: pa.Table, *, fingerprint: str, shard_id: str) -> bytes:
    """A part as Parquet bytes with the fingerprint and shard id in its schema metadata."""
    meta = dict(table.schema.metadata or {})
    meta[FINGERPRINT_KEY] = fingerprint.encode()
    meta[SHARD_KEY] = shard_id.encode()
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf)
    return buf.getvalue()


def read_fingerprint(url: str, endpoint_url: str | None) -> str | None:
    """The fingerprint in a part's footer (None if it has none); only the footer is read."""
    fs, path = storage.filesystem(url, endpoint_url)

    def footer() -> pa.Schema:
        with fs.open(path, "rb") as f:
            return pq.read_schema(f)

    meta = storage.retrying(footer, f"reading the footer of {url}").metadata or {}
    value = meta.get(FINGERPRINT_KEY)
    return value.decode() if value is not None else None


def read_run_info(out: str, endpoint_url: str | None) -> dict[str, Any] | None:
    url = file_url(out, "run.json")
    if not storage.exists(url, endpoint_url):
        return None
    try:
        info = json.loads(storage.read_bytes(url, endpoint_url))
    except ValueError as exc:
        raise ConfigError(f"output: {url} is not valid JSON ({exc}); use --overwrite to replace this output") from None
    return info if isinstance(info, dict) else None


def write_run_info(out: str, info: dict, endpoint_url: str | None) -> None:
    data = json.dumps(info, indent=2, sort_keys=False, default=str).encode()
    storage.put_atomic(file_url(out, "run.json"), data, endpoint_url)


def prepare(out: str, *, fingerprint: str, config: dict, overwrite: bool, endpoint_url: str | None) -> tuple[set[str], dict | None]:
    """Check an output against this run and find the shards already done.

    Returns:
        (ids of shards whose rejects part carries `fingerprint`, the previous run.json or None).

    Raises:
        ConfigError: the output holds an audit of a different config (or data listing) and not `overwrite`.
    """
    if overwrite:
        clear(out, endpoint_url)
        return set(), None
    previous = read_run_info(out, endpoint_url)
    if previous is not None and previous.get("fingerprint") != fingerprint:
        raise ConfigError(_conflict(out, previous, config))
    parts = storage.list_files(storage.join(out, "rejects"), endpoint_url, suffix=".parquet")
    parts = [p for p in parts if p.rsplit("/", 1)[-1].startswith("part-")]
    with ThreadPoolExecutor(max_workers=16) as pool:
        prints = list(pool.map(lambda p: read_fingerprint(p, endpoint_url), parts))
    done = set()
    for url, fp in zip(parts, prints):
        if fp != fingerprint:
            raise ConfigError(_conflict(out, previous, config, part=url))
        done.add(url.rsplit("/", 1)[-1][len("part-"):-len(".parquet")])
    return done, previous


def clear(out: str, endpoint_url: str | None) -> None:
    """Remove what memaudit wrote under `out` (OWN_FILES, OWN_DIRS); anything else there is left alone."""
    for name in OWN_DIRS:
        storage.remove(storage.join(out, name), endpoint_url, recursive=True)
    for name in OWN_FILES:
        storage.remove(file_url(out, name), endpoint_url)


def _conflict(out: str, previous: dict | None, config: dict, part: str | None = None) -> str:
    what = f"a part ({part}) of" if part else ""
    differs = _differences(previous.get("config") if previous else None, config)
    detail = f" (differs in {', '.join(differs)})" if differs else " (the config or the source files differ)"
    return (f"output: {out} already holds {what or 'results of'} an audit with another fingerprint{detail}; "
            "re-run with --overwrite to replace it, or choose another --out")


def _differences(old: Any, new: Any, at: str = "", limit: int = 4) -> list[str]:
    """Dotted names of the fingerprinted sections where two resolved configs differ (a few)."""
    if old is None:
        return []
    found: list[str] = []
    sections = ("generator", "targets", "recovery") if not at else None
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sections or sorted(set(old) | set(new))
        for k in keys:
            if old.get(k) != new.get(k):
                sub = f"{at}.{k}" if at else k
                deeper = _differences(old.get(k), new.get(k), sub, limit) if isinstance(old.get(k), dict) else []
                found.extend(deeper or [sub])
            if len(found) >= limit:
                break
    return found[:limit]
