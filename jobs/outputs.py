"""The output layout (DESIGN.md §5), part files with their fingerprint, and the resume bookkeeping.

    <out>/results/split=<split>/part-<shard>.parquet   written by an actor, first, always (maybe empty)
    <out>/rejects/part-<shard>.parquet                 written by the actor last, always (maybe empty): the shard's
                                                       done marker
    <out>/samples.parquet  summary.parquet  tests.parquet  histograms.parquet  ranking.parquet  report.html  run.json

Each part is one atomic put and carries the run's fingerprint in its Parquet schema metadata
(b"memaudit.fingerprint"), so resume decides from footers alone: a shard is done when its results part and
its rejects part exist with the current fingerprint. A results part without its rejects part (an actor
died between the two puts), or a part that cannot be read, is simply rewritten when the shard runs again.
Before reducing, check_parts refuses any part that does not carry this run's fingerprint. Writing is
guarded by the run lease (jobs.lease): one live run per output.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from stats import storage
from .errors import ConfigError, JobError
from .redact import redact_value

log = logging.getLogger("memaudit")
FINGERPRINT_KEY = b"memaudit.fingerprint"
SHARD_KEY = b"memaudit.shard"
# Everything memaudit writes under <out>: --overwrite removes these and nothing else.
OWN_FILES = ("run.json", "samples.parquet", "summary.parquet", "tests.parquet", "histograms.parquet", "ranking.parquet",
             "report.html")
OWN_DIRS = ("results", "rejects", "features")  # features/: the companion detectors' parts
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
    return storage.parquet_bytes(table, {FINGERPRINT_KEY: fingerprint.encode(), SHARD_KEY: shard_id.encode()})


def read_fingerprint(url: str, endpoint_url: str | None) -> str | None:
    """The fingerprint in a part's footer (None if it has none); only the footer is read."""
    fs, path = storage.filesystem(url, endpoint_url)

    def footer() -> pa.Schema:
        with fs.open(path, "rb") as f:
            return pq.read_schema(f)

    meta = storage.retrying(footer, f"reading the footer of {url}").metadata or {}
    value = meta.get(FINGERPRINT_KEY)
    return value.decode() if value is not None else None


def run_info_bytes(info: dict) -> bytes:
    """run.json's bytes (jobs.lease writes them conditionally)."""
    return json.dumps(redact_value(info), indent=2, sort_keys=False, default=str).encode()  # no secrets in run.json


def prepare(out: str, *, fingerprint: str, config: dict, previous: dict | None, planned: dict[str, str],
            endpoint_url: str | None, expected: Callable[[str], list[str] | None] | None = None) -> set[str]:
    """Check an output against this run and find the shards already done (the caller holds the run lease).

    A shard is done when its results part (always written first, maybe empty) and then its rejects part
    both exist, both readable and both with `fingerprint`. A part that is missing or unreadable (a corrupt
    object, a crash between the two puts) makes its shard not done: it runs again, and the log names it.

    Args:
        previous: the output's run.json (None if there is none).
        planned: shard id -> split, for every shard of this run's plan.
        expected: shard id -> the image ids planned for it (Plan.image_ids); then a shard is done only when its
            two parts hold exactly those ids, one row each (ids, not counts).

    Returns:
        the ids of the done shards.

    Raises:
        ConfigError: the output holds an audit of a different config (or data listing).
    """
    if previous is not None and previous.get("fingerprint") != fingerprint:
        raise ConfigError(_conflict(out, previous, config))
    markers = storage.list_files(storage.join(out, "rejects"), endpoint_url, suffix=".parquet")
    pairs = [(_shard_of(m), m) for m in markers if m.rsplit("/", 1)[-1].startswith("part-")]
    pairs = [(sid, m, results_url(out, planned[sid], sid)) for sid, m in pairs if sid in planned]
    with ThreadPoolExecutor(max_workers=16) as pool:
        prints = list(pool.map(lambda p: (_footer(p[1], endpoint_url), _footer(p[2], endpoint_url)), pairs))
    done = set()
    for (sid, marker, part), (fp_marker, fp_part) in zip(pairs, prints):
        if _is_fingerprint(fp_marker) and fp_marker != fingerprint:
            raise ConfigError(_conflict(out, previous, config, part=marker))
        if fp_marker != fingerprint or fp_part != fingerprint:
            why = fp_marker if fp_marker != fingerprint else fp_part
            if _is_fingerprint(why):
                why = f"its results part {part} carries another fingerprint"
            log.warning("resume: shard %s is not done (%s); it runs again", sid, why)
            continue
        done.add(sid)
    if expected is not None:
        done -= _wrong_ids(out, sorted(done), planned, expected, endpoint_url)
    return done


def _wrong_ids(out: str, shards: list[str], planned: dict[str, str], expected: Callable[[str], list[str] | None],
               endpoint_url: str | None) -> set[str]:
    """The shards whose results and rejects parts do not hold exactly their planned ids (logged, each)."""
    def written(sid: str) -> list[str]:
        ids: list[str] = []
        for url in (results_url(out, planned[sid], sid), rejects_url(out, sid)):
            fs, path = storage.filesystem(url, endpoint_url)
            table = storage.retrying(lambda: pq.read_table(path, columns=["image_id"], filesystem=fs), f"reading {url}")
            ids.extend(table.column("image_id").cast(pa.string()).to_pylist())
        return ids

    with ThreadPoolExecutor(max_workers=16) as pool:
        found = list(pool.map(written, shards))
    wrong = set()
    for sid, ids in zip(shards, found):
        want = expected(sid)
        if want is not None and sorted(ids) != sorted(want):
            missing, extra = sorted(set(want) - set(ids)), sorted(set(ids) - set(want))
            log.warning("resume: shard %s is not done (its parts hold %d rows for %d planned images; missing e.g. %s, "
                        "not planned e.g. %s); it runs again", sid, len(ids), len(want), missing[:2], extra[:2])
            wrong.add(sid)
    return wrong


def _shard_of(url: str) -> str:
    return url.rsplit("/", 1)[-1][len("part-"):-len(".parquet")]


def _is_fingerprint(value: str | None) -> bool:
    return isinstance(value, str) and len(value) == 64 and " " not in value


def _footer(url: str, endpoint_url: str | None) -> str:
    """A part's fingerprint; else why there is none: 'missing <url>' or 'unreadable <url> (...)'."""
    try:
        fp = read_fingerprint(url, endpoint_url)
    except FileNotFoundError:
        return f"missing {url}"
    except storage.StorageError:
        raise  # the store is down: not a verdict on the part
    except (OSError, ValueError, pa.ArrowException) as exc:
        return f"unreadable {url} ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
    return fp if fp is not None else f"unreadable {url} (no memaudit.fingerprint in its metadata)"


def results_files(out: str, endpoint_url: str | None) -> list[str]:
    """The results parts under <out>/results (paths inside the output's filesystem), found by pyarrow.dataset
    (which skips the '.tmp-' files of writes in progress)."""
    import pyarrow.dataset as ds

    fs, path = storage.filesystem(storage.join(out, "results"), endpoint_url)
    fs.invalidate_cache(path)
    if not storage.retrying(lambda: fs.exists(path), f"checking {out}/results"):
        return []
    found = storage.retrying(lambda: ds.dataset(path, filesystem=fs, format="parquet").files, f"listing {out}/results")
    return sorted(f for f in found if f.rsplit("/", 1)[-1].startswith("part-"))


def check_parts(out: str, *, fingerprint: str, planned: dict[str, str], endpoint_url: str | None) -> None:
    """Before reducing: every results and rejects part under <out> carries this run's fingerprint and a planned
    shard id, so rows of another run (or of another config) are never mixed into the tables.

    Raises:
        JobError: naming the first part that does not belong to this run.
    """
    markers = storage.list_files(storage.join(out, "rejects"), endpoint_url, suffix=".parquet")
    results = [storage.with_protocol(out, p) for p in results_files(out, endpoint_url)]
    parts = [p for p in markers + results if p.rsplit("/", 1)[-1].startswith("part-")]
    with ThreadPoolExecutor(max_workers=16) as pool:
        prints = list(pool.map(lambda p: _footer(p, endpoint_url), parts))
    for url, fp in zip(parts, prints):
        if fp == fingerprint and _shard_of(url) in planned:
            continue
        why = ("another run's fingerprint" if _is_fingerprint(fp) else fp) if fp != fingerprint else "a shard not in the plan"
        raise JobError(f"output: {url} does not belong to this run ({why}), so the output cannot be reduced; "
                       "re-run the same command to rewrite its shard, or use --overwrite")


PART_DIRS = ("results", "rejects")  # their files are recognised one by one: name pattern and fingerprint metadata


def clear(out: str, endpoint_url: str | None, *, keep: tuple[str, ...] = ("run.json",)) -> None:
    """Remove what memaudit wrote under `out` and nothing else (--overwrite): in results/ and rejects/ the
    `part-*.parquet` files that carry memaudit's fingerprint metadata (and the `.tmp-` files of interrupted
    local writes), the other OWN_DIRS whole, and OWN_FILES but `keep` (run.json: it holds this run's lease).
    A file of anyone else's, even inside results/, is left alone."""
    for name in PART_DIRS:
        for url in own_parts(storage.join(out, name), endpoint_url):
            storage.remove(url, endpoint_url)
    for name in OWN_DIRS:
        if name not in PART_DIRS:
            storage.remove(storage.join(out, name), endpoint_url, recursive=True)
    for name in OWN_FILES:
        if name not in keep:
            storage.remove(file_url(out, name), endpoint_url)


def own_parts(folder: str, endpoint_url: str | None) -> list[str]:
    """The files under `folder` that memaudit wrote: part-*.parquet with a memaudit.fingerprint in their footer."""
    urls = storage.find_files(folder, endpoint_url)
    temps = [u for u in urls if u.rsplit("/", 1)[-1].startswith(".tmp-") and u.endswith(".parquet")]
    parts = [u for u in urls if u.rsplit("/", 1)[-1].startswith("part-") and u.endswith(".parquet")]
    with ThreadPoolExecutor(max_workers=16) as pool:
        prints = list(pool.map(lambda u: _footer(u, endpoint_url), parts))
    return temps + [u for u, fp in zip(parts, prints) if _is_fingerprint(fp)]


def _conflict(out: str, previous: dict | None, config: dict, part: str | None = None) -> str:
    what = f"a part ({part}) of" if part else ""
    differs = _differences(previous.get("config") if previous else None, redact_value(config))  # run.json's is redacted
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
