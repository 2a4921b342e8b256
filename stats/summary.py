"""Per-split summary of recovery errors (DESIGN.md §2): count, MRE, moments, quantiles, success.

Success counts images whose ``mse`` is below tau (tau_real, or tau_generated for the
generated split) whatever loss was optimized; results without an mse column use
``error`` (stats.columns.success_values). With the search engine's columns, the summary
also has the median number of generator evaluations per image and quantiles of the
recovered latents' norm |z| / sqrt(d), so recoveries far outside the prior are visible.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from stats.settings import StatsSettings
from stats.inputs import order_splits, split_kind

QUANTILES = (0.05, 0.25, 0.75, 0.95)

SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("split", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # "real" | "generated"
        pa.field("count", pa.int64(), nullable=False),  # results rows
        pa.field("rejected", pa.int64(), nullable=False),  # rejects rows
        pa.field("mre", pa.float64()),  # median recovery error
        pa.field("mean", pa.float64()),
        pa.field("std", pa.float64()),  # sample standard deviation (ddof=1); null for one image
        pa.field("min", pa.float64()),
        pa.field("q05", pa.float64()),
        pa.field("q25", pa.float64()),
        pa.field("q75", pa.float64()),
        pa.field("q95", pa.float64()),
        pa.field("max", pa.float64()),
        pa.field("tau", pa.float64(), nullable=False),  # success threshold used for this split
        pa.field("tau_column", pa.string(), nullable=False),  # "mse" | "error": what tau applies to
        pa.field("success_rate", pa.float64()),  # fraction of tau_column values < tau
        pa.field("converged_rate", pa.float64()),  # fraction converged; null without the column
        pa.field("evaluations_median", pa.float64()),  # generator evaluations per image; null without the column
        pa.field("exact_rate", pa.float64()),  # fraction with evaluations_to_exact set (mse reached the exact level)
        pa.field("latent_norm_q05", pa.float64()),  # |z| / sqrt(d) of the best latent; null without the column
        pa.field("latent_norm_median", pa.float64()),
        pa.field("latent_norm_q95", pa.float64()),
    ]
)


def median_sorted(x: np.ndarray) -> float:
    """The median of sorted values; the mean of the two middle ones for an even count."""
    n = len(x)
    return float(0.5 * (x[(n - 1) // 2] + x[n // 2]))


def describe(x: np.ndarray, tau: float, success: np.ndarray | None = None) -> dict[str, float]:
    """Statistics of one split's sorted errors (x ascending, len >= 1); success: the sorted values tau applies to."""
    n = len(x)
    # Scale very large values first so that the mean and the squares cannot overflow.
    scale = float(x[-1]) if x[-1] > 1e150 else 1.0
    y = x / scale if scale != 1.0 else x
    mean = float(np.mean(y)) * scale
    std = float(np.std(y, ddof=1)) * scale if n > 1 else None
    q05, q25, q75, q95 = (float(v) for v in np.quantile(x, QUANTILES))  # linear interpolation
    return {
        "mre": median_sorted(x),
        "mean": mean,
        "std": std,
        "min": float(x[0]),
        "q05": q05,
        "q25": q25,
        "q75": q75,
        "q95": q95,
        "max": float(x[-1]),
        "success_rate": float(np.searchsorted(x if success is None else success, tau, side="left")) / n,
    }


def tau_for(split: str, settings: StatsSettings) -> float:
    return settings.tau_generated if split_kind(split) == "generated" else settings.tau_real


def summarize(
    errors: Mapping[str, np.ndarray],
    rejected: Mapping[str, int],
    converged: Mapping[str, float | None],
    settings: StatsSettings,
    *,
    success: Mapping[str, np.ndarray] | None = None,
    success_column: str = "error",
    extras: Mapping[str, Mapping[str, object]] | None = None,
) -> pa.Table:
    """One row per split present in the results or the rejects, in report order.

    Args:
        errors: each split's sorted errors.
        rejected: number of rejects rows per split (splits may have rejects only).
        converged: fraction of converged rows per split, or None when unknown.
        success: each split's sorted values that tau applies to (default: the errors).
        success_column: the column those values come from ("mse" or "error").
        extras: per split, values of the search columns (evaluations_median, exact_rate,
            latent_norm_*); missing ones are null.
    """
    rows = []
    for split in order_splits([*errors, *rejected]):
        x = errors.get(split, np.empty(0))
        tau = tau_for(split, settings)
        row: dict[str, object] = {
            "split": split,
            "kind": split_kind(split),
            "count": len(x),
            "rejected": int(rejected.get(split, 0)),
            "tau": tau,
            "tau_column": success_column,
            "converged_rate": converged.get(split),
            **dict((extras or {}).get(split, {})),
        }
        if len(x):
            row.update(describe(x, tau, None if success is None else success.get(split)))
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA)
