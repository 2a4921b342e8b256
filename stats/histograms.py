"""Histograms of errors on bins shared by all splits (DESIGN.md §2).

The bins run from the smallest to the largest error over all splits, so no value falls
off either end; they are log-spaced when the values span more than a decade (errors of
generated and real images typically differ by orders of magnitude). A zero error gets a
first bin [0, smallest positive error) in front of the log-spaced ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

HISTOGRAMS_SCHEMA = pa.schema(
    [
        pa.field("split", pa.string(), nullable=False),
        pa.field("bin", pa.int32(), nullable=False),
        pa.field("lower", pa.float64(), nullable=False),  # bins are [lower, upper) ...
        pa.field("upper", pa.float64(), nullable=False),  # ... the last is [lower, upper]
        pa.field("count", pa.int64(), nullable=False),
        pa.field("fraction", pa.float64(), nullable=False),  # count / split size
        pa.field("scale", pa.string(), nullable=False),  # "log" | "linear": how the edges are spaced
    ]
)


def shared_edges(errors: Mapping[str, np.ndarray], bins: int) -> tuple[np.ndarray, str]:
    """Bin edges covering every error of every split, and their spacing ("log" | "linear")."""
    nonempty = [x for x in errors.values() if len(x)]
    low = min(float(x[0]) for x in nonempty)
    high = max(float(x[-1]) for x in nonempty)
    positive = [x[np.searchsorted(x, 0.0, side="right")] for x in nonempty if x[-1] > 0]
    smallest_positive = min((float(v) for v in positive), default=None)

    if high == low:  # one distinct value: a small range around it
        lo, hi = (low * 0.9, low * 1.1) if low > 0 else (0.0, 1.0)
        return _pin(np.linspace(lo, hi, bins + 1), lo, hi), "linear"
    if low > 0 and high / low > 10:
        return _pin(np.geomspace(low, high, bins + 1), low, high), "log"
    if low == 0 and smallest_positive is not None and high / smallest_positive > 10 and bins > 1:
        logs = _pin(np.geomspace(smallest_positive, high, bins), smallest_positive, high)
        return np.concatenate([[0.0], logs]), "log"
    return _pin(np.linspace(low, high, bins + 1), low, high), "linear"


def _pin(edges: np.ndarray, low: float, high: float) -> np.ndarray:
    edges[0], edges[-1] = low, high  # exact ends: geomspace may round them
    return edges


def counts(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of sorted values x per bin; bins [e_i, e_i+1), the last closed."""
    inner = np.searchsorted(x, edges[1:-1], side="left")
    return np.diff(np.concatenate([[0], inner, [len(x)]])).astype(np.int64)


def histogram_table(errors: Mapping[str, np.ndarray], bins: int) -> pa.Table:
    """Long table: one row per split (with results) and bin."""
    edges, scale = shared_edges(errors, bins)
    nbins = len(edges) - 1
    parts = []
    for split, x in errors.items():
        if not len(x):
            continue
        c = counts(x, edges)
        parts.append(
            pa.table(
                {
                    "split": pa.array([split] * nbins, pa.string()),
                    "bin": pa.array(np.arange(nbins, dtype=np.int32)),
                    "lower": pa.array(edges[:-1]),
                    "upper": pa.array(edges[1:]),
                    "count": pa.array(c),
                    "fraction": pa.array(c / len(x)),
                    "scale": pa.array([scale] * nbins, pa.string()),
                },
                schema=HISTOGRAMS_SCHEMA,
            )
        )
    return pa.concat_tables(parts) if parts else HISTOGRAMS_SCHEMA.empty_table()
