"""reduce(): results (and rejects) in; summary, tests, histograms and verdict out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stats.columns import search_extras, success_values
from stats.compare import compare
from stats.confounds import confounds
from stats.errors import StatsError
from stats.histograms import histogram_table
from stats.ranking import RANKING_SCHEMA, rank_pair
from stats.settings import StatsSettings
from stats.summary import summarize
from stats.inputs import REJECTS_REQUIRED, SplitGroups, group_results, order_splits, require_table, string_column
from stats.verdict import Verdict, decide


@dataclass(frozen=True)
class Reduction:
    """Everything stats concludes from one set of results.

    summary, tests, histograms, ranking: the tables written as summary/tests/histograms/
    ranking.parquet (columns documented in stats.summary, stats.compare, stats.histograms,
    stats.ranking). verdict: the conclusion. settings: the settings that produced them.
    """

    summary: pa.Table
    tests: pa.Table
    histograms: pa.Table
    verdict: Verdict
    settings: StatsSettings = field(default_factory=StatsSettings)
    ranking: pa.Table = field(default_factory=RANKING_SCHEMA.empty_table)
    detectors: pa.Table | None = None  # detectors.parquet when companion detectors ran


def reduce(
    results: pa.Table,
    rejects: pa.Table | None = None,
    *,
    settings: StatsSettings = StatsSettings(),
    detectors: pa.Table | None = None,
) -> Reduction:
    """Summarize, compare and judge per-image recovery results.

    Args:
        results: one row per recovered image; needs ``image_id``, ``split`` and ``error``
            (DESIGN.md §5); uses ``mse``, ``converged``, the search columns and the source
            columns (stats.columns) when present. Any split name is allowed; the split
            named "generated" is the generator's own images.
        rejects: one row per input that could not be audited; needs ``split``.
        settings: thresholds and options, see StatsSettings.
        detectors: the companion detectors' rows (detectors.parquet, stats.detect.companions); their outcomes
            join the verdict's reasons.

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
    success, success_column = _success(results, groups)

    summary = summarize(groups.errors, rejected, converged, settings, success=success, success_column=success_column,
                        extras=search_extras(results, groups.rows))
    ranking, partial = rank_pairs(results, groups, settings)
    tests = compare(groups.errors, splits, settings, partial)
    histograms = histogram_table(groups.errors, settings.bins)
    warnings = tuple(confounds(results, groups.rows, settings.pairs))
    verdict = decide(summary, tests, settings, ranking=ranking, confounds=warnings, detectors=detectors)

    meta = {b"memaudit.stats": json.dumps({"settings": settings.as_dict(), "verdict": verdict_dict(verdict)}).encode()}
    return Reduction(
        summary=summary.replace_schema_metadata(meta),
        tests=tests.replace_schema_metadata(meta),
        histograms=histograms.replace_schema_metadata(meta),
        verdict=verdict,
        settings=settings,
        ranking=ranking.replace_schema_metadata(meta),
        detectors=detectors,
    )


def _success(results: pa.Table, groups: SplitGroups) -> tuple[dict[str, np.ndarray], str]:
    """Each split's sorted values that tau applies to (mse, else error), and their column."""
    if "mse" not in results.column_names:
        return groups.errors, "error"
    error = results.column("error").to_numpy().astype(np.float64, copy=False)
    values, column = success_values(results, error)
    return {s: np.sort(values[r]) for s, r in groups.rows.items()}, column


def rank_pairs(
    results: pa.Table, groups: SplitGroups, settings: StatsSettings
) -> tuple[pa.Table, dict[tuple[str, str], dict[str, object]]]:
    """ranking.parquet (every memorization pair with results on both sides) and each pair's partial-test fields."""
    ids = results.column("image_id")
    error = results.column("error").to_numpy().astype(np.float64, copy=False)
    tables, partial = [], {}
    for a, b in settings.pairs:
        if a not in groups.rows or b not in groups.rows:
            continue
        rows = groups.rows[a]
        table, fields = rank_pair(a, b, ids.take(pa.array(rows)).combine_chunks().cast(pa.string()), error[rows],
                                  groups.errors[b], fdr=settings.fdr, low_quantile=settings.low_quantile)
        tables.append(table)
        partial[(a, b)] = fields
    return (pa.concat_tables(tables) if tables else RANKING_SCHEMA.empty_table()), partial


def verdict_dict(verdict: Verdict) -> dict[str, object]:
    return {
        "label": verdict.label,
        "sentence": verdict.sentence,
        "rules_fired": list(verdict.rules_fired),
        "numbers": {k: _json_number(v) for k, v in verdict.numbers.items()},
        "reasons": list(verdict.reasons),
        "tests": [
            {"pair": list(t.pair), "rule": t.rule, "p_value": _json_number(t.p_value),
             "holm_p_value": _json_number(t.adjusted), "fired": t.fired}
            for t in verdict.tests
        ],
        "confounds": list(verdict.confounds),
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
