"""reduce(): results (and rejects) in; summary, tests, histograms and verdict out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stats.compare import compare
from stats.errors import StatsError
from stats.histograms import histogram_table
from stats.settings import StatsSettings
from stats.summary import summarize
from stats.table import REJECTS_REQUIRED, group_results, order_splits, require_table, string_column
from stats.verdict import Verdict, decide


@dataclass(frozen=True)
class Reduction:
    """Everything stats concludes from one set of results.

    summary, tests, histograms: the tables written as summary/tests/histograms.parquet
    (columns documented in stats.summary, stats.compare, stats.histograms).
    verdict: the conclusion. settings: the settings that produced them.
    """

    summary: pa.Table
    tests: pa.Table
    histograms: pa.Table
    verdict: Verdict
    settings: StatsSettings = field(default_factory=StatsSettings)


def reduce(
    results: pa.Table,
    rejects: pa.Table | None = None,
    *,
    settings: StatsSettings = StatsSettings(),
) -> Reduction:
    """Summarize, compare and judge per-image recovery results.

    Args:
        results: one row per recovered image; needs ``image_id``, ``split`` and ``error``
            (DESIGN §5); uses ``converged`` when present. Any split name is allowed; the
            split named "generated" is the generator's own images.
        rejects: one row per input that could not be audited; needs ``split``.
        settings: thresholds and options, see StatsSettings.

    Returns:
        A Reduction. Its tables carry the settings and the verdict as JSON in the schema
        metadata (key ``memaudit.stats``) so a written table says how it was made.

    Raises:
        StatsError: the results are empty, or a column is missing, mistyped or invalid.
    """
    if not isinstance(settings, StatsSettings):
        raise StatsError(f"settings: expected StatsSettings, got {type(settings).__name__}")
    groups = group_results(results)
    rejected = count_rejects(rejects)
    converged = converged_rates(results, groups.rows)
    splits = order_splits([*groups.names, *rejected])

    summary = summarize(groups.errors, rejected, converged, settings)
    tests = compare(groups.errors, splits, settings)
    histograms = histogram_table(groups.errors, settings.bins)
    verdict = decide(summary, tests, settings)

    meta = {b"memaudit.stats": json.dumps({"settings": settings.as_dict(), "verdict": verdict_dict(verdict)}).encode()}
    return Reduction(
        summary=summary.replace_schema_metadata(meta),
        tests=tests.replace_schema_metadata(meta),
        histograms=histograms.replace_schema_metadata(meta),
        verdict=verdict,
        settings=settings,
    )


def verdict_dict(verdict: Verdict) -> dict[str, object]:
    return {
        "label": verdict.label,
        "sentence": verdict.sentence,
        "rules_fired": list(verdict.rules_fired),
        "numbers": {k: _json_number(v) for k, v in verdict.numbers.items()},
        "reasons": list(verdict.reasons),
    }


def _json_number(value: object) -> object:
    """NaN as null, so the metadata is standard JSON."""
    return None if isinstance(value, float) and value != value else value


def count_rejects(rejects: pa.Table | None) -> dict[str, int]:
    """Rejects rows per split."""
    if rejects is None:
        return {}
    require_table(rejects, "rejects", REJECTS_REQUIRED)
    if rejects.num_rows == 0:
        return {}
    split = string_column(rejects, "split", "rejects")
    counted = pc.value_counts(split)
    return dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()))


def converged_rates(results: pa.Table, rows: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Fraction of converged rows per split (nulls count as not converged); None without the column."""
    if "converged" not in results.column_names:
        return {}
    column = results.column("converged")
    if not pa.types.is_boolean(column.type):
        raise StatsError(f"results: column 'converged' must be boolean, got {column.type}")
    flags = column.fill_null(False).to_numpy(zero_copy_only=False)
    return {split: float(flags[r].mean()) for split, r in rows.items()}
