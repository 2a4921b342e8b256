"""Figures of the report as PNG bytes.

Matplotlib through its object API on the Agg canvas: no pyplot, so no global backend or
figure state is touched in the caller's process. Every figure is drawn from summaries
(histogram counts, a grid of ECDF points, per-iteration quantiles), never from one point
per image, so drawing costs the same for 100 and for 10 million results.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from stats.report.curves import BudgetCurve, Curve, iterations

ECDF_POINTS = 2000  # points per split on the drawn ECDF


def split_colors(splits: Sequence[str]) -> dict[str, str]:
    palette = [  # matplotlib's tab10
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
        "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    ]
    return {s: palette[i % len(palette)] for i, s in enumerate(splits)}


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _log_x(axes, low: float, smallest_positive: float | None) -> None:
    """A log x axis; symlog when zeros are present, linear below the smallest positive value."""
    if low > 0:
        axes.set_xscale("log")
    elif smallest_positive is not None:
        axes.set_xscale("symlog", linthresh=smallest_positive)


def histogram_png(
    histograms: pa.Table,
    colors: Mapping[str, str],
    *,
    threshold: tuple[float, str] | None = None,
    flagged: tuple[np.ndarray, str] | None = None,
) -> bytes:
    """Overlaid step histograms (fraction of each split per shared bin) on a log x axis.

    threshold (value, label) draws the reference split's low quantile the verdict counts
    against; flagged (errors, split) marks each flagged image as a tick under the curves, so
    the figure shows where the evidence sits. Callers cap the flagged errors they pass.
    """
    figure = Figure(figsize=(6.2, 3.6))
    axes = figure.add_subplot()
    table = histograms.to_pydict()
    split = np.array(table["split"], dtype=object)
    lower, upper = np.array(table["lower"]), np.array(table["upper"])
    fraction = np.array(table["fraction"])
    for name in colors:
        mine = split == name
        if not mine.any():
            continue
        edges = np.append(lower[mine], upper[mine][-1])
        axes.stairs(fraction[mine], edges, label=name, color=colors[name], linewidth=1.5)
    if threshold is not None:
        axes.axvline(threshold[0], color="black", linestyle="--", linewidth=1, label=threshold[1])
    if flagged is not None and len(flagged[0]):
        errors, name = flagged
        axes.plot(errors, np.zeros(len(errors)), linestyle="none", marker="|", markersize=14, markeredgewidth=1.2,
                  color=colors.get(name, "#d62728"), label=f"flagged {name} ({len(errors)})", clip_on=False)
    positive = lower[lower > 0]
    _log_x(axes, float(lower.min()), float(positive.min()) if len(positive) else None)
    axes.set_xlabel("recovery error")
    axes.set_ylabel("fraction of split")
    axes.set_ylim(bottom=0)
    axes.legend(frameon=False, fontsize=8)
    axes.set_title("Error histograms on shared bins")
    return _png(figure)


def scores_png(scores: Mapping[str, np.ndarray], colors: Mapping[str, str]) -> bytes:
    """Histograms of the discriminator's score per split, on shared bins (fraction of each split)."""
    return distribution_png(scores, colors, "discriminator score (higher: more real)", "Discriminator scores")


def distribution_png(values: Mapping[str, np.ndarray], colors: Mapping[str, str], xlabel: str, title: str,
                     bins: int = 40) -> bytes:
    """Step histograms of one quantity per split on shared linear bins (fraction of each split)."""
    figure = Figure(figsize=(6.2, 3.4))
    axes = figure.add_subplot()
    finite = [x[np.isfinite(x)] for x in values.values()]
    pooled = np.concatenate(finite) if finite else np.zeros(0)
    edges = np.histogram_bin_edges(pooled if len(pooled) else np.zeros(1), bins=bins)
    for name, x in zip(values, finite):
        if len(x):
            counts, _ = np.histogram(x, bins=edges)
            axes.stairs(counts / len(x), edges, label=f"{name} ({len(x)})", color=colors[name], linewidth=1.5)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("fraction of split")
    axes.legend(frameon=False, fontsize=8)
    axes.set_title(title)
    return _png(figure)


def ecdf_points(x: np.ndarray, points: int = ECDF_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most `points` (value, ECDF) pairs of sorted x, exact at each value (ties included)."""
    index = np.unique(np.linspace(0, len(x) - 1, min(points, len(x))).round().astype(np.int64))
    values = x[index]
    return values, np.searchsorted(x, values, side="right") / len(x)


def ecdf_png(
    errors: Mapping[str, np.ndarray],
    colors: Mapping[str, str],
    ks_pair: tuple[str, str, float, float] | None,
) -> bytes:
    """ECDFs of all splits; ks_pair (a, b, statistic, location) marks the KS distance."""
    figure = Figure(figsize=(6.2, 3.6))
    axes = figure.add_subplot()
    low = min(float(x[0]) for x in errors.values())
    positive = [float(x[x > 0][0]) for x in errors.values() if x[-1] > 0]
    for name, x in errors.items():
        values, cdf = ecdf_points(x)
        # Start each curve at 0 just left of its smallest value.
        xs, ys = np.concatenate([[values[0]], values]), np.concatenate([[0.0], cdf])
        axes.step(xs, ys, where="post", label=name, color=colors[name])
    if ks_pair is not None:
        a, b, statistic, location = ks_pair
        fa = np.searchsorted(errors[a], location, side="right") / len(errors[a])
        fb = np.searchsorted(errors[b], location, side="right") / len(errors[b])
        axes.vlines(location, min(fa, fb), max(fa, fb), color="black", linewidth=2)
        axes.annotate(
            f"KS D = {statistic:.3g} ({a} vs {b})",
            (location, (fa + fb) / 2),
            xytext=(8, 0),
            textcoords="offset points",
            va="center",
        )
    _log_x(axes, low, min(positive) if positive else None)
    axes.set_xlabel("recovery error")
    axes.set_ylabel("fraction of split with error ≤ x")
    axes.set_ylim(0, 1.02)
    axes.legend(frameon=False, loc="best", fontsize=8)
    axes.set_title("Empirical CDFs")
    return _png(figure)


def convergence_png(curves: Mapping[str, Curve], colors: Mapping[str, str]) -> bytes:
    """Median error per iteration with the interquartile band, per split."""
    figure = Figure(figsize=(8, 4))
    axes = figure.add_subplot()
    positive = True
    for name, curve in curves.items():
        steps = iterations(curve)  # trace[0] is the start point: iteration 0
        axes.plot(steps, curve.median, color=colors[name], label=f"{name} (median of {curve.images})")
        axes.fill_between(steps, curve.q25, curve.q75, color=colors[name], alpha=0.2, linewidth=0)
        positive = positive and bool(np.nanmin(curve.q25) > 0)
    if positive:
        axes.set_yscale("log")
    axes.set_xlabel("iteration of the best restart (0 = start)")
    axes.set_ylabel("recovery error")
    axes.legend(frameon=False)
    axes.set_title("Convergence: median and interquartile band")
    return _png(figure)


def budget_png(curves: Mapping[str, BudgetCurve], colors: Mapping[str, str]) -> bytes:
    """Share of each split recovered exactly against generator evaluations, on a log x axis."""
    figure = Figure(figsize=(8, 4))
    axes = figure.add_subplot()
    low, high = math.inf, 1.0
    for name, curve in curves.items():
        end = max([curve.max_evaluations or 0.0, float(curve.budgets[-1]) if len(curve.budgets) else 0.0, 1.0])
        xs = np.concatenate([[max(1.0, float(curve.budgets[0]) if len(curve.budgets) else 1.0)], curve.budgets, [end]])
        ys = np.concatenate([[0.0], curve.share, [curve.share[-1] if len(curve.share) else 0.0]])
        axes.step(xs, ys, where="post", color=colors[name], label=f"{name} ({curve.images} images)")
        low, high = min(low, xs[0]), max(high, end)
    axes.set_xscale("log")
    axes.set_xlim(max(1.0, low if math.isfinite(low) else 1.0), high)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("generator evaluations per image")
    axes.set_ylabel("share recovered exactly")
    axes.legend(frameon=False, loc="lower right")
    axes.set_title("Success against search budget")
    return _png(figure)
