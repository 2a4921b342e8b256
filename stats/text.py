"""Plain-text rendering of a reduction, shared by `memaudit report` and the job's log."""

from __future__ import annotations

import math
from typing import Any

SUMMARY_COLUMNS = (  # (column, heading) of the compact terminal table
    ("split", "split"),
    ("count", "n"),
    ("rejected", "rejected"),
    ("mre", "MRE"),
    ("mean", "mean"),
    ("q25", "q25"),
    ("q75", "q75"),
    ("success_rate", "success"),
)


def number(value: Any, digits: int = 3) -> str:
    """A compact number: integers as is, floats to `digits` significant digits, '-' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def percent(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def format_summary(reduction: Any) -> str:
    """The verdict sentence, a compact per-split table and the pairwise tests, as lines of text."""
    rows = reduction.summary.to_pylist()
    cells = [[heading for _, heading in SUMMARY_COLUMNS]]
    for row in rows:
        cells.append(
            [
                percent(row[c]) if c == "success_rate" else number(row[c])
                for c, _ in SUMMARY_COLUMNS
            ]
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(SUMMARY_COLUMNS))]
    table = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in cells
    ]
    lines = [f"verdict: {reduction.verdict.label}", reduction.verdict.sentence, "", *table]
    tests = reduction.tests.to_pylist()
    if tests:
        lines.append("")
    for t in tests:
        ci = (
            f" [{number(t['gap_ci_low'])}, {number(t['gap_ci_high'])}]"
            if t["gap_ci_low"] is not None
            else ""
        )
        lines.append(
            f"{t['split_a']} vs {t['split_b']}: KS D = {number(t['ks_statistic'])}, "
            f"p = {number(t['ks_pvalue'], 2)} (one-sided {number(t['ks_one_sided_pvalue'], 2)}), "
            f"MW p = {number(t['mw_pvalue'], 2)}, MRE-gap = {number(t['mre_gap'])}{ci}"
        )
        if t.get("flagged") is not None:
            lines.append(
                f"  {t['flagged']} of {t['n_a']} {t['split_a']} images flagged (q <= {reduction.settings.fdr:g}; "
                f"p-values beyond {t['split_b']} from {_tail(t['tail_model'])}); {t['low_count']} below the "
                f"{ordinal(t['low_rank'])} smallest {t['split_b']} error (expected {number(t['low_expected'])}, "
                f"p = {number(t['low_count_pvalue'], 2)})"
            )
    if reduction.verdict.confounds:
        lines += ["", *(f"warning: {w}" for w in reduction.verdict.confounds)]
    return "\n".join(lines)


def _tail(model: str | None) -> str:
    return "an exponential tail model" if model == "exponential" else "empirical ranks"
