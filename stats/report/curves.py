"""Curves of the search: the error per iteration of the best restart, and success against budget, by split.

Traces (list<float32>, one per image) may differ in length, since an image's optimizer
can stop early; a trace is padded by carrying its last value forward, so an image that
stopped counts with its final error at later iterations. trace[0] is the error at the
start point, before any iteration.

The budget curves are the paper supplement's §5 figure: the share of a split's images
whose mse fell below the engine's exact level within b generator evaluations, against b
(from ``evaluations_to_exact``, null for images that never got there).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stats.columns import numeric
from stats.errors import StatsError


@dataclass(frozen=True)
class Curve:
    """Quartiles of the error at each iteration (index 0 is the start, iteration 0) over `images` traces."""

    median: np.ndarray
    q25: np.ndarray
    q75: np.ndarray
    images: int  # traces used (a seeded subsample when the split has more than the cap)
    total: int  # non-empty traces in the split


def iterations(curve: Curve) -> np.ndarray:
    """The iteration number of each point of a curve: 0 (the start point, trace[0]) to len - 1."""
    return np.arange(len(curve.median))


def padded_traces(traces: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Non-empty traces as a [N, max length] float64 array, each padded with its last value."""
    if isinstance(traces, pa.ChunkedArray):
        traces = traces.combine_chunks()
    traces = traces.filter(pc.greater(pc.fill_null(pc.list_value_length(traces), 0), 0))
    if len(traces) == 0:
        return np.empty((0, 0))
    values = traces.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    lengths = pc.list_value_length(traces).to_numpy()
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    columns = np.arange(int(lengths.max()))
    index = starts[:, None] + np.minimum(columns[None, :], lengths[:, None] - 1)  # [N, L]
    return values[index]


def convergence_curves(
    results: pa.Table,
    rows: Mapping[str, np.ndarray],
    *,
    cap: int,
    seed: int,
) -> dict[str, Curve]:
    """Curves per split from the ``trace`` column; {} without it. Splits without traces are left out."""
    if "trace" not in results.column_names:
        return {}
    column = results.column("trace")
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)) or not (
        pa.types.is_floating(column.type.value_type) or pa.types.is_integer(column.type.value_type)
    ):
        raise StatsError(f"results: column 'trace' must be a list of floats, got {column.type}")
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    curves = {}
    for split, positions in rows.items():
        with_trace = positions[lengths[positions] > 0]
        if not len(with_trace):
            continue
        chosen = with_trace
        if len(with_trace) > cap:
            rng = np.random.default_rng([seed, len(with_trace)])
            chosen = np.sort(rng.choice(with_trace, size=cap, replace=False))
        matrix = padded_traces(column.take(pa.array(chosen)))
        with np.errstate(all="ignore"):  # an all-NaN iteration gives NaN, drawn as a gap
            q25, median, q75 = np.nanquantile(matrix, [0.25, 0.5, 0.75], axis=0)
        curves[split] = Curve(median=median, q25=q25, q75=q75, images=len(chosen), total=len(with_trace))
    return curves


@dataclass(frozen=True)
class BudgetCurve:
    """Share of a split's images recovered exactly within each budget: a step at each budget value."""

    budgets: np.ndarray  # sorted evaluations_to_exact of the images that got there
    share: np.ndarray  # share of the split's images (all of them) with evaluations_to_exact <= budgets[i]
    images: int  # images in the split
    max_evaluations: float | None  # largest evaluations spent on one image (the x axis' end), if known


def budget_curves(results: pa.Table, rows: Mapping[str, np.ndarray]) -> dict[str, BudgetCurve]:
    """Budget curves per split from ``evaluations_to_exact``; {} without the column."""
    to_exact = numeric(results, "evaluations_to_exact")
    if to_exact is None:
        return {}
    evaluations = numeric(results, "evaluations")
    curves = {}
    for split, positions in rows.items():
        if not len(positions):
            continue
        values = to_exact[positions]
        reached = np.sort(values[~np.isnan(values)])
        spent = evaluations[positions] if evaluations is not None else values
        top = float(np.nanmax(spent)) if np.any(~np.isnan(spent)) else None
        curves[split] = BudgetCurve(reached, np.arange(1, len(reached) + 1) / len(positions), len(positions), top)
    return curves
