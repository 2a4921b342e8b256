"""Optional per-image columns of results: read them when present, check their types, group by split.

Results from older outputs, or written by hand, may lack any of these; every reader here
returns None for a missing column, and the statistics built on it are left out (null in
the tables, no figure in the report) instead of failing.

    mse                   float: the success thresholds (tau_*) apply to it whatever loss was
                          optimized; without it, to ``error``
    converged             bool
    evaluations           int64: generator evaluations spent on the image (all restarts)
    evaluations_to_exact  int64, nullable: evaluations until mse first fell below the engine's
                          exact level; null when it never did
    latent_norm           float: |z| / sqrt(d) of the best latent (about 1 under a normal prior)
    format, orig_width, orig_height, channels: the source image before preprocessing (confounds)
    target_hash           string: hash of the image as audited (train/val content overlap)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stats.errors import StatsError

def numeric(results: pa.Table, name: str) -> np.ndarray | None:
    """A numeric column as float64 with NaN for nulls, or None when absent."""
    if name not in results.column_names:
        return None
    column = results.column(name)
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type) or pa.types.is_null(column.type)):
        raise StatsError(f"results: column {name!r} must be numeric, got {column.type}")
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def success_values(results: pa.Table, error: np.ndarray) -> tuple[np.ndarray, str]:
    """The values tau_* apply to, and their column: ``mse`` when present and complete, else ``error``.

    An mse that is null for some rows (a mixed output) falls back to ``error`` for those
    rows only, so every image is counted.
    """
    mse = numeric(results, "mse")
    if mse is None:
        return error, "error"
    missing = np.isnan(mse)
    if missing.all():
        return error, "error"
    return np.where(missing, error, mse), "mse"


def quantiles(values: np.ndarray | None, rows: np.ndarray, qs: tuple[float, ...]) -> list[float | None]:
    """Quantiles of the non-NaN values at rows; Nones when there are none (or no column)."""
    if values is None:
        return [None] * len(qs)
    x = values[rows]
    x = x[~np.isnan(x)]
    if not len(x):
        return [None] * len(qs)
    return [float(v) for v in np.quantile(x, qs)]


def search_extras(results: pa.Table, rows: dict[str, np.ndarray]) -> dict[str, dict[str, float | None]]:
    """Per split: evaluations_median, exact_rate and latent_norm_q05/median/q95 (None without their columns)."""
    evaluations = numeric(results, "evaluations")
    to_exact = numeric(results, "evaluations_to_exact")
    norm = numeric(results, "latent_norm")
    out = {}
    for split, r in rows.items():
        q05, median, q95 = quantiles(norm, r, (0.05, 0.5, 0.95))
        out[split] = {
            "evaluations_median": quantiles(evaluations, r, (0.5,))[0],
            "exact_rate": float(np.mean(~np.isnan(to_exact[r]))) if to_exact is not None and len(r) else None,
            "latent_norm_q05": q05,
            "latent_norm_median": median,
            "latent_norm_q95": q95,
        }
    return out
