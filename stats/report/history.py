"""What `memaudit history URL` shows: a terminal table and an HTML page of trends.

Trends run against the checkpoint when every run of a model has a `checkpoint` tag with
a number in it (run.tags.checkpoint, its last number: "snapshot-025000" is step 25000; the
question "when in training does memorization start"), else against the run's date. Per model, three figures: MRE per split, the MRE-gap with its
confidence interval and the gap threshold, and the number of flagged training images.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure

from stats.report.html import escape, img, table
from stats.report.plots import _png, split_colors
from stats.report.page import fold, header, page, short, toc, version
from stats.text import number

COLUMNS = ("date", "checkpoint", "verdict", "n train/val", "MRE train", "MRE val", "MRE-gap [CI]", "KS p", "flagged",
           "data", "run")


def columns_for(runs: pa.Table) -> tuple[str, ...]:
    """COLUMNS with the runs' memorization pair in the headings (member/heldout rather than train/val when every
    run was configured so; "a/b" when the runs' pairs differ)."""
    pairs = {p or "train/val" for p in runs.column("pair").to_pylist()} if "pair" in runs.column_names else {"train/val"}
    a, b = pairs.pop().split("/", 1) if len(pairs) == 1 else ("a", "b")
    return (*COLUMNS[:3], f"n {a}/{b}", f"MRE {a}", f"MRE {b}", *COLUMNS[6:])


def history_lines(history: pa.Table) -> list[list[str]]:
    """One list of cells (COLUMNS) per run, as strings."""
    lines = []
    for row in history.to_pylist():
        splits = {s["split"]: s for s in row["splits"] or []}
        member, held_out = (row.get("pair") or "train/val").split("/", 1)  # the run's configured pair, e.g. member/heldout
        train, val = splits.get(member, {}), splits.get(held_out, {})
        ci = f" [{number(row['gap_ci_low'])}, {number(row['gap_ci_high'])}]" if row["gap_ci_low"] is not None else ""
        lines.append([
            _day(row["date"]), row["checkpoint"] or "-", row["verdict"] or "-",
            f"{number(train.get('n'))}/{number(val.get('n'))}", number(train.get("mre")), number(val.get("mre")),
            number(row["mre_gap"]) + ci, number(row["ks_pvalue"]), number(row["flagged"]),
            (row["data_snapshot"] or "-")[:8], row["run_id"],
        ])
    return lines


def format_history(history: pa.Table) -> str:
    """Per model, an aligned text table of its runs, oldest first."""
    blocks = []
    for model, runs in by_model(history):
        rows = [list(columns_for(runs)), *history_lines(runs)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
        text = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        blocks.append(f"model {model}: {runs.num_rows} run{'s' if runs.num_rows != 1 else ''}\n" + "\n".join(text))
    return "\n\n".join(blocks)


def render_history(history: pa.Table, *, title: str = "memaudit history", gap_threshold: float = 0.10) -> str:
    """A self-contained HTML page in the report's look: per model, the trend figures and the table of runs.

    The header names what the latest run audited (its generator sha256 and data snapshot), so a page
    read later says which model file and which images its newest point stands for.
    """
    sections = []
    for index, (model, runs) in enumerate(by_model(history)):
        x, label = trend_axis(runs)
        figures = "".join(img(png, alt) for png, alt in (
            (mre_png(runs, x, label), "MRE per split"),
            (gap_png(runs, x, label, gap_threshold), "MRE-gap with its confidence interval"),
            (flagged_png(runs, x, label), "flagged training images"),
        ))
        sections.append(f'<section id="model-{index}"><h2>model {escape(model)}</h2>\n'
                        f'<div class="figures history">{figures}</div>\n'
                        f"{table(columns_for(runs), history_lines(runs), text_columns=(1, 2, 9, 10), table_id=f'runs-{index}', searchable=True, tall=True)}"
                        "</section>")
    body = "\n".join([toc(sections) if len(sections) > 1 else "", *(fold(s, open_=True) for s in sections)])
    return page(title, header(title, history_fields(history)), body)


def history_fields(history: pa.Table) -> list[tuple[str, object]]:
    """The header: models and runs, and what the latest run audited."""
    models = sorted(set(history.column("model").to_pylist())) if history.num_rows else []
    latest = max(history.to_pylist(), key=lambda r: (r["date"] is not None, r["date"] or 0), default={})
    return [
        ("model", ", ".join(models) or "none"),
        ("runs", history.num_rows),
        ("latest generator sha256", short(latest.get("generator_sha256")) or "not recorded"),
        ("latest data snapshot", short(latest.get("data_snapshot"))),
        ("latest run", _day(latest.get("date"))),
        ("memaudit", latest.get("memaudit_version") or version()),
    ]


def by_model(history: pa.Table) -> list[tuple[str, pa.Table]]:
    models = sorted(set(history.column("model").to_pylist()))
    return [(m, history.filter(pc.equal(history.column("model"), m))) for m in models]


def checkpoint_step(name: str | None) -> float | None:
    """The training step a checkpoint name carries: its last number ("network-snapshot-025000" -> 25000.0)."""
    numbers = re.findall(r"\d+(?:\.\d+)?", name or "")
    return float(numbers[-1]) if numbers else None


def trend_axis(runs: pa.Table) -> tuple[list[Any], str]:
    """The x values of a model's runs: the checkpoints' steps when every run has one, else the dates."""
    steps = [checkpoint_step(c) for c in runs.column("checkpoint").to_pylist()]
    if all(s is not None for s in steps):
        return steps, "checkpoint"
    return runs.column("date").to_pylist(), "date"


def mre_png(runs: pa.Table, x: Sequence[Any], label: str) -> bytes:
    """MRE of each split against x, log y."""
    figure, axes = _axes(f"MRE per split against {label}", label, "median recovery error")
    per_split: dict[str, list[tuple[Any, float]]] = {}
    for xi, splits in zip(x, runs.column("splits").to_pylist()):
        for s in splits or []:
            if s["mre"] is not None:
                per_split.setdefault(s["split"], []).append((xi, s["mre"]))
    colors = split_colors(list(per_split))
    for split, points in per_split.items():
        points.sort(key=lambda p: p[0])
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=split, color=colors[split])
    if any(v > 0 for points in per_split.values() for _, v in points):
        axes.set_yscale("log")
    axes.legend(frameon=False)
    return _png(figure)


def gap_png(runs: pa.Table, x: Sequence[Any], label: str, threshold: float) -> bytes:
    """MRE-gap against x with its CI as error bars, and the threshold the verdict's gap rule uses."""
    figure, axes = _axes(f"MRE-gap against {label}", label, "MRE-gap (val - train) / val")
    gap = _floats(runs, "mre_gap")
    low, high = _floats(runs, "gap_ci_low"), _floats(runs, "gap_ci_high")
    order = np.argsort(np.arange(len(x)) if label == "date" else np.asarray(x, dtype=float), kind="stable")
    xs = [x[i] for i in order]
    g, lo, hi = gap[order], low[order], high[order]
    errors = np.vstack([np.where(np.isnan(lo), 0, g - lo), np.where(np.isnan(hi), 0, hi - g)])
    axes.errorbar(xs, g, yerr=np.nan_to_num(errors), marker="o", capsize=3, color="#1f77b4", label="gap, CI")
    axes.axhline(threshold, color="#d62728", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    axes.axhline(0, color="#888", linewidth=0.8)
    axes.legend(frameon=False)
    return _png(figure)


def flagged_png(runs: pa.Table, x: Sequence[Any], label: str) -> bytes:
    """Training images flagged as memorized (q <= fdr) against x."""
    figure, axes = _axes(f"Flagged training images against {label}", label, "images flagged")
    flagged = _floats(runs, "flagged")
    order = np.argsort(np.arange(len(x)) if label == "date" else np.asarray(x, dtype=float), kind="stable")
    axes.plot([x[i] for i in order], flagged[order], marker="o", color="#9467bd")
    axes.set_ylim(bottom=0)
    return _png(figure)


def _axes(title: str, xlabel: str, ylabel: str):
    figure = Figure(figsize=(5.5, 3.4))
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if xlabel == "date":
        figure.autofmt_xdate()
    return figure, axes


def _floats(runs: pa.Table, column: str) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in runs.column(column).to_pylist()])


def _day(when: dt.datetime | None) -> str:
    return "-" if when is None else when.strftime("%Y-%m-%d %H:%M")
