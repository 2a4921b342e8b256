"""Run history: one row per finished audit in a Parquet dataset partitioned by model.

    row = history_row("s3://bucket/audits/2026-12-01/")        # from the run's output alone
    append(row, "s3://bucket/audits/history/")                 # atomic, idempotent
    read_history("s3://bucket/audits/history/", model="ffhq")   # every run of a model, oldest first

Layout of a history URL (any fsspec URL):

    <history>/model=<model>/run-<run_id>.parquet      one file, one row, per run

Why one file per run, named by its run id: an append is then a single put of a whole object,
which is atomic on every store (S3, GCS, memory://; a temporary plus rename on a local disk),
and two appends of the same run write the same key, so the dataset holds one row per run id
however often (or however concurrently) a run is appended; the last put wins. No append ever
reads, rewrites or locks a shared file, so concurrent jobs appending different runs cannot
lose each other's rows, which a read-modify-write of one Parquet file would on S3 (no
compare-and-swap there). Readers list the prefix with pyarrow.dataset; files whose names
start with "." or "_" (the local temporaries) are ignored.

The run id is derived, not drawn: the first 16 hex digits of sha256(output URL, plan
fingerprint). Resuming or re-reducing a run keeps its id (its row is replaced with the
newer state); another output or another config is another run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import posixpath
import warnings
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from stats.snapshot import data_snapshot, split_digests
from stats import storage
from stats import io as stats_io
from stats.errors import StatsError

SPLIT_TYPE = pa.struct([
    pa.field("split", pa.string()),
    pa.field("kind", pa.string()),  # "real" | "generated"
    pa.field("n", pa.int64()),  # results rows
    pa.field("rejected", pa.int64()),
    pa.field("mre", pa.float64()),
    pa.field("success_rate", pa.float64()),
    pa.field("ids_sha256", pa.string()),  # the split's data snapshot: sha256 of its sorted image ids (results and rejects)
])

# The columns of every history file; `model` is not among them: it is the partition (model=<name>/).
HISTORY_SCHEMA = pa.schema([
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("date", pa.timestamp("s", tz="UTC")),  # when the run first finished (run.json invocations)
    pa.field("checkpoint", pa.string()),  # run.tags.checkpoint, the trend plots' other x axis
    pa.field("tags", pa.map_(pa.string(), pa.string())),  # run.tags
    pa.field("output", pa.string()),
    pa.field("status", pa.string()),  # run.json status: done
    pa.field("generator", pa.string()),  # the generator's URL as configured
    pa.field("generator_sha256", pa.string()),  # of the generator's file; null when not recorded
    pa.field("data_snapshot", pa.string()),  # sha256 over every split's ids_sha256: same value, same images
    pa.field("config_fingerprint", pa.string()),
    pa.field("fingerprint", pa.string()),  # the plan's: config and source listing
    pa.field("verdict", pa.string()),  # memorization | no evidence | inconclusive
    pa.field("sentence", pa.string()),
    pa.field("rules_fired", pa.list_(pa.string())),
    pa.field("detectors_fired", pa.list_(pa.string())),  # companion detectors (detectors.parquet) that fired
    pa.field("splits", pa.list_(SPLIT_TYPE)),
    pa.field("pair", pa.string()),  # the first memorization pair, "train/val"
    pa.field("ks_pvalue", pa.float64()),
    pa.field("ks_one_sided_pvalue", pa.float64()),
    pa.field("mre_gap", pa.float64()),
    pa.field("gap_ci_low", pa.float64()),
    pa.field("gap_ci_high", pa.float64()),
    pa.field("flagged", pa.int64()),  # images flagged in ranking.parquet (q <= fdr)
    pa.field("memaudit_version", pa.string()),
])
REQUIRED = ("run_id", "date", "verdict")  # in every history file since the first version
MODEL = pa.field("model", pa.string(), nullable=False)
PARTITIONING = ds.partitioning(pa.schema([MODEL]), flavor="hive")
GENERATOR_KEYS = ("torchscript", "pickle", "checkpoint", "diffusers", "factory", "builtin")


def run_id(out_url: str, fingerprint: str) -> str:
    """The run's id: the same output and plan fingerprint, the same id (so an append is idempotent)."""
    return hashlib.sha256(f"{out_url.rstrip('/')}\x00{fingerprint}".encode()).hexdigest()[:16]


def history_row(
    out_url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    model: str | None = None,
    tags: dict[str, Any] | None = None,
    generator_sha256: str | None = None,
) -> pa.Table:
    """One history row (HISTORY_SCHEMA plus ``model``) for a finished run, read from its output.

    Args:
        out_url: the run's output URL; needs run.json, summary.parquet and tests.parquet
            (what the job or `memaudit report` writes), and reads the results' image ids.
        model, tags: override run.json's config.run.model / config.run.tags. The model
            defaults to the generator file's name without extension.
        generator_sha256: the generator file's hash when the caller knows it (the job does),
            else run.json's ``generator_sha256``, else null.

    Raises:
        StatsError: a missing or unreadable run.json or table, or a run that has no verdict.
    """
    fs, root = stats_io.open_output(out_url, storage_options)
    info = _run_json(fs, root)
    verdict = info.get("verdict")
    if not isinstance(verdict, dict) or "label" not in verdict:
        raise StatsError(f"{out_url}: run.json has no verdict (status {info.get('status')!r}): only a finished run "
                         "enters the history")
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    run = config.get("run") if isinstance(config.get("run"), dict) else {}
    tags = {str(k): str(v) for k, v in (tags if tags is not None else run.get("tags") or {}).items()}
    generator = generator_url(config.get("generator"))
    model = model or run.get("model") or model_stem(generator) or "unnamed"
    fingerprint = str(info.get("fingerprint") or info.get("config_fingerprint") or "")

    summary = _table(fs, root, "summary.parquet").to_pylist()
    tests = _table(fs, root, "tests.parquet").to_pylist()
    snapshots = split_snapshots(out_url, storage_options)
    splits = [{"split": r["split"], "kind": r["kind"], "n": r["count"], "rejected": r["rejected"], "mre": r["mre"],
               "success_rate": r["success_rate"], "ids_sha256": snapshots.get(r["split"])} for r in summary]
    pair = _first_pair(tests, info)
    row = {
        "run_id": run_id(out_url, fingerprint),
        "date": _date(_first_done(info)),
        "checkpoint": tags.get("checkpoint"),
        "tags": list(tags.items()),
        "output": out_url,
        "status": info.get("status"),
        "generator": generator,
        "generator_sha256": generator_sha256 or info.get("generator_sha256"),
        "data_snapshot": data_snapshot(snapshots),
        "config_fingerprint": info.get("config_fingerprint"),
        "fingerprint": info.get("fingerprint"),
        "verdict": verdict["label"],
        "sentence": verdict.get("sentence"),
        "rules_fired": list(verdict.get("rules_fired") or []),
        "detectors_fired": _detectors_fired(fs, root),
        "splits": splits,
        "pair": f"{pair['split_a']}/{pair['split_b']}" if pair else None,
        "flagged": _flagged(fs, root, pair),
        "memaudit_version": (info.get("versions") or {}).get("memaudit"),
        **{k: (pair or {}).get(k) for k in ("ks_pvalue", "ks_one_sided_pvalue", "mre_gap", "gap_ci_low", "gap_ci_high")},
    }
    table = pa.Table.from_pylist([row], schema=HISTORY_SCHEMA)
    return table.append_column(MODEL, pa.array([model], pa.string()))


def append(row: pa.Table, history_url: str, *, storage_options: dict[str, Any] | None = None) -> str:
    """Add history_row()'s row to the dataset at history_url; returns the file written.

    Atomic (one whole-object put) and idempotent (the file is named by the run id, so the
    same run appended twice is one row). A copy of the same run id under another model
    (the run's model was renamed) is removed after the put, so it stays one row.
    """
    if row.num_rows != 1 or "model" not in row.column_names or "run_id" not in row.column_names:
        raise StatsError("history: append() takes the one-row table of history_row()")
    model, rid = row.column("model")[0].as_py(), row.column("run_id")[0].as_py()
    fs, root = stats_io.open_output(history_url, storage_options)
    name = f"run-{rid}.parquet"
    path = posixpath.join(root, f"model={quote(model, safe='')}", name)
    body = row.drop_columns(["model"]).cast(HISTORY_SCHEMA)
    storage.write_atomic(fs, path, storage.parquet_bytes(body))
    for other in fs.glob(posixpath.join(root, "model=*", name)):
        if other.rstrip("/") != path and posixpath.basename(other) == name:
            fs.rm(other)
    return path


def read_history(history_url: str, *, model: str | None = None,
                 storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Every run in the history (one row per run id), or one model's, sorted by model and date.

    Raises:
        StatsError: nothing at history_url, or no run of ``model`` there.
    """
    fs, root = stats_io.open_output(history_url, storage_options)
    fs.invalidate_cache(root)  # s3fs caches listings; another process may have appended since
    files = run_files(fs, root)
    if not files:
        raise StatsError(f"history: no runs at {history_url} (expected model=<model>/run-<id>.parquet)")
    files = readable_runs(fs, files)
    if not files:
        raise StatsError(f"history: no readable runs at {history_url} (every run file was skipped, see the warnings)")
    dataset = ds.dataset(files, filesystem=fs, format="parquet", partitioning=PARTITIONING, partition_base_dir=root,
                         schema=HISTORY_SCHEMA.append(MODEL))
    table = dataset.to_table(filter=None if model is None else pc.field("model") == model)
    if table.num_rows == 0:
        known = sorted(set(dataset.to_table(columns=["model"]).column("model").to_pylist()))
        which = f"no run of model {model!r} (models: {', '.join(known) or 'none'})" if model else "no runs"
        raise StatsError(f"history: {which} at {history_url}")
    table = table.sort_by([("model", "ascending"), ("date", "ascending"), ("run_id", "ascending")])
    return _one_per_run(table)


def run_files(fs, root: str) -> list[str]:
    """The history's run files: model=<m>/run-<id>.parquet; temporaries, pages and other files are not runs."""
    if not fs.isdir(root):
        return []
    found = []
    for path in fs.find(root):
        parts = posixpath.relpath(path, root).split("/")
        if len(parts) == 2 and parts[0].startswith("model=") and parts[1].startswith("run-") and path.endswith(".parquet"):
            found.append(path)
    return sorted(found)


def readable_runs(fs, files: list[str]) -> list[str]:
    """The run files whose Parquet footer holds a history row; each other one is named in a warning and skipped.

    One bad file (a zero-byte or truncated put, a file of another schema copied into the
    folder) must not hide every other run, so it is a warning naming the file, not an error.
    Only the footer is read: a file's schema is checked before any data is.
    """
    good = []
    for path in files:
        try:
            schema = pq.read_schema(path, filesystem=fs)
        except (OSError, pa.ArrowInvalid) as exc:
            problem = f"not a readable Parquet file ({type(exc).__name__}: {str(exc)[:200]})"
        else:
            problem = _schema_problem(schema)
        if problem is None:
            good.append(path)
        else:
            warnings.warn(f"history: {path} skipped: {problem}", UserWarning, stacklevel=3)
    return good


def _schema_problem(schema: pa.Schema) -> str | None:
    """Why a file's schema is not a history row's, or None. Columns added in later versions may be missing."""
    missing = [name for name in REQUIRED if name not in schema.names]
    if missing:
        return f"not a history row (no column {', '.join(missing)})"
    for field in HISTORY_SCHEMA:
        if field.name in schema.names and not _same_kind(schema.field(field.name).type, field.type):
            return f"not a history row (column {field.name} is {schema.field(field.name).type}, expected {field.type})"
    return None


def _same_kind(found: pa.DataType, expected: pa.DataType) -> bool:
    """Types equal up to what a Parquet round trip changes (timestamp units, list and map field names)."""
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(found)
    if pa.types.is_list(expected):
        return pa.types.is_list(found) and _same_kind(found.value_type, expected.value_type)
    if pa.types.is_map(expected):
        return (pa.types.is_map(found) and _same_kind(found.key_type, expected.key_type)
                and _same_kind(found.item_type, expected.item_type))
    if pa.types.is_struct(expected):
        return pa.types.is_struct(found) and all(
            found.get_field_index(f.name) < 0 or _same_kind(found.field(f.name).type, f.type) for f in expected)
    return found.equals(expected)


def split_snapshots(out_url: str, storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """Each split's data snapshot (stats.snapshot.split_digests) of the output at out_url."""
    results, rejects, _, _ = stats_io.read_output(out_url, storage_options=storage_options,
                                                  columns=("image_id", "split"))
    return split_digests(results, rejects)


def _one_per_run(table: pa.Table) -> pa.Table:
    """The latest row per run id (two files of one run id can only coexist under two models, briefly)."""
    ids = table.column("run_id").to_pylist()
    last = {rid: i for i, rid in enumerate(ids)}
    if len(last) == len(ids):
        return table
    return table.take(sorted(last.values()))


def _run_json(fs, root: str) -> dict[str, Any]:
    path = posixpath.join(root, "run.json")
    if not fs.exists(path):
        raise StatsError(f"{path}: missing; the history needs a run written by `memaudit audit` or `memaudit report`")
    return stats_io.read_json_object(fs, path)


def _table(fs, root: str, name: str, columns: list[str] | None = None) -> pa.Table:
    path = posixpath.join(root, name)
    if not fs.exists(path):
        raise StatsError(f"{path}: missing; run `memaudit report {posixpath.dirname(path)}` to write it")
    try:
        return pq.read_table(path, filesystem=fs, columns=columns)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StatsError(f"{path}: cannot read as Parquet ({exc})") from None


def _first_pair(tests: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any] | None:
    """The tests row of the first memorization pair of the run's settings ((train, val) by default)."""
    stats_section = (info.get("config") or {}).get("stats") or {}
    wanted = [tuple(p) for p in stats_section.get("pairs") or [("train", "val")]]
    for a, b in wanted:
        for row in tests:
            if (row["split_a"], row["split_b"]) == (a, b):
                return row
    return None


def _flagged(fs, root: str, pair: dict[str, Any] | None) -> int | None:
    path = posixpath.join(root, "ranking.parquet")
    if not fs.exists(path):
        return None
    ranking = _table(fs, root, "ranking.parquet", ["split", "reference", "flagged"])
    if pair is not None:
        ranking = ranking.filter(pc.and_(pc.equal(ranking.column("split"), pair["split_a"]),
                                         pc.equal(ranking.column("reference"), pair["split_b"])))
    return int(pc.sum(ranking.column("flagged").cast(pa.int64())).as_py() or 0)


def _detectors_fired(fs, root: str) -> list[str]:
    """Names of the companion detectors that fired (detectors.parquet: a name column and `fired`), if any ran."""
    path = posixpath.join(root, "detectors.parquet")
    if not fs.exists(path):
        return []
    table = _table(fs, root, "detectors.parquet")
    name = next((c for c in ("detector", "name") if c in table.column_names), None)
    if name is None or "fired" not in table.column_names:
        raise StatsError(f"{path}: expected columns 'detector' and 'fired'")
    fired = table.filter(pc.fill_null(table.column("fired"), False))
    return [str(v) for v in fired.column(name).to_pylist()]


def generator_url(section: Any) -> str | None:
    """Where run.json's generator section says the model came from (file, folder, factory or builtin name)."""
    if not isinstance(section, dict):
        return None
    for key in GENERATOR_KEYS:
        if section.get(key):
            return str(section[key])
    return None


def model_stem(url: str | None) -> str | None:
    """A model's name from its location when run.model is unset: the file or folder name without extension."""
    if not url:
        return None
    base = posixpath.basename(url.rstrip("/"))
    return base.split(".", 1)[0] or None


def _first_done(info: dict[str, Any]) -> Any:
    """When the run first finished: a resubmitted run reduces again, but its point in a trend stays put."""
    done = [i.get("finished") for i in info.get("invocations") or [] if isinstance(i, dict) and i.get("status") == "done"]
    return next((d for d in done if d), None) or info.get("finished") or info.get("started")


def _date(text: Any) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)
