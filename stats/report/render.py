"""The self-contained HTML report, and `report_from_output` behind `memaudit report OUT`.

The report shows before it tells. Its first screen is the verdict sentence, the figure that
justifies it (train / val / generated error histograms on shared log bins, the reference's
low quantile and the flagged images marked, the ECDFs beside it), a grid of the most
memorized training images and the one-line reasons. Everything else (statistics, rules, the
flagged-image table, convergence, search budget, recoveries, companion detectors,
discriminator, rejects, provenance) follows folded, under a table of contents.

Its size does not grow with the audit: every figure is drawn from summaries and every table
and grid holds at most a fixed number of rows or images, saying how many it leaves out and
where they are (ranking.parquet, the results). Images are embedded as base64 data URIs so
the file stands alone; the only script is inline. Every piece of text that comes from the
data (split names, image ids, reasons, the config) is HTML-escaped.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import matplotlib
import numpy as np
import pyarrow as pa
import scipy

from stats import io as stats_io
from stats.report.curves import convergence_curves
from stats.report.plots import convergence_png, ecdf_png, histogram_png, split_colors
from stats.checks import check_output
from stats.reduction import Reduction, reduce
from stats.detect.extraction import extraction_section
from stats.report.companions import CompanionFiles, detectors_section, read_companions
from stats.report.models import discriminator_section, read_discriminator, space_section
from stats.report.page import audit_fields, fold, header, page, toc
from stats.report.sections import (confounds_box, flagged_marks, memorized_grid, memorized_section, rules_section,
                                   search_section)
from stats.report.samples import SampleImages, check_samples, prepare
from stats.settings import StatsSettings, field_names
from stats.snapshot import data_snapshot, split_digests
from stats.inputs import RANKS, group_results
from stats.report.html import escape as _e
from stats.report.html import img as _img
from stats.report.html import table as _table
from stats.text import number, percent

MAX_REJECT_GROUPS = 20
MAX_REJECT_EXAMPLES = 10
MAX_RUN_JSON = 60_000  # characters of run.json shown; the file itself is beside the report

def render_report(
    reduction: Reduction,
    *,
    results: pa.Table,
    rejects: pa.Table | None = None,
    samples: pa.Table | None = None,
    run_info: dict[str, Any] | None = None,
    companions: CompanionFiles | None = None,
    discriminator: pa.Table | None = None,
) -> str:
    """The report as one self-contained HTML document.

    Args:
        reduction: what reduce() returned for these results.
        results: the results table (for the ECDFs and, with a ``trace`` column, the
            convergence curves).
        rejects: the rejects table, shown as reason counts and a few examples.
        samples: recoveries (samples.parquet), drawn as target, recovery and |difference|:
            best/median/worst per split, and top-<n> for the most memorized images.
        run_info: run.json's content, shown under provenance.
        companions: the companion detectors' tables, drawn after the recoveries.
        discriminator: discriminator.parquet: D's score per image, summarized per split.
    """
    # The ids were checked by reduce(); the report needs the grouped errors only.
    groups = group_results(results, check_ids=False)
    colors = split_colors(reduction.summary.column("split").to_pylist())
    settings = reduction.settings
    first = [
        _verdict_section(reduction),
        _distributions_section(reduction, groups.errors, colors),
        memorized_grid(reduction, samples),
        _reasons_section(reduction),
    ]
    folded = [s for s in (
        _statistics_section(reduction),
        space_section(run_info),
        rules_section(reduction),
        memorized_section(reduction),
        _convergence_section(results, groups.rows, colors, settings),
        search_section(reduction, results, groups.rows, colors, run_info),
        _samples_section(samples),
        detectors_section(companions),
        extraction_section(companions, settings),
        discriminator_section(discriminator, colors, a=settings.pairs[0][0], b=settings.pairs[0][1]) if settings.pairs
        else discriminator_section(discriminator, colors),
        _rejects_section(rejects),
        _provenance_section(settings, run_info),
    ) if s]
    body = "\n".join([*(s for s in first if s), toc(folded), *(fold(s) for s in folded)])
    top = header("memaudit report", audit_fields(run_info, data_snapshot(split_digests(results, rejects))))
    return page(f"memaudit report: {reduction.verdict.label}", top, body)


def report_from_output(
    out_url: str,
    *,
    settings: StatsSettings | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Reduction:
    """Rebuild summary, tests, histograms, ranking and report.html of a run from its output alone.

    Reads OUT/results (and rejects, samples.parquet, run.json when present), checks them as
    the job does (every image planned in run.json is one results or rejects row; no
    held-out image is also a training image, by id or target_hash), reduces, renders and
    writes, each file atomically. Settings default to run.json's ``config.stats`` (its keys
    that name StatsSettings fields), else to the defaults.

    Raises:
        StatsError: an unreadable output, or one that fails the checks (nothing is written).
    """
    results, rejects, samples, run_info = stats_io.read_output(out_url, storage_options=storage_options)
    if settings is None:
        settings = settings_from_run_info(run_info)
    check_output(results, rejects, run_info, settings.pairs)
    companions = read_companions(out_url, storage_options=storage_options)
    reduction = reduce(results, rejects, settings=settings, detectors=companions.detectors)
    html_text = render_report(reduction, results=results, rejects=rejects, samples=samples, run_info=run_info,
                              companions=companions, discriminator=read_discriminator(out_url, storage_options=storage_options))
    stats_io.write_outputs(out_url, reduction, html_text, storage_options=storage_options)
    return reduction


def settings_from_run_info(run_info: dict[str, Any] | None) -> StatsSettings:
    """StatsSettings from run.json's config.stats; keys that are not settings are left to the job."""
    section = _stats_section(run_info)
    if section is None:
        return StatsSettings()
    chosen = {k: v for k, v in section.items() if k in field_names()}
    return StatsSettings.from_mapping(chosen, where="run.json config.stats")


def _stats_section(run_info: dict[str, Any] | None) -> dict[str, Any] | None:
    config = run_info.get("config") if isinstance(run_info, dict) else None
    section = config.get("stats") if isinstance(config, dict) else None
    return section if isinstance(section, dict) else None


# --- sections -------------------------------------------------------------------------


def _verdict_section(reduction: Reduction) -> str:
    verdict = reduction.verdict
    css = verdict.label.replace(" ", "-")
    return (f'<section id="verdict"><p class="verdict {_e(css)}">{_e(verdict.sentence)}</p>\n'
            f"{confounds_box(reduction)}</section>")


def _reasons_section(reduction: Reduction) -> str:
    reasons = "".join(f"<li>{_e(r)}</li>" for r in reduction.verdict.reasons)
    return f'<section id="reasons"><h2>Why</h2><ul class="reasons">{reasons}</ul></section>' if reasons else ""


SUMMARY_SHOWN = ("split", "kind", "n", "rejected", "MRE", "q05", "q95", "tau", "success (below tau)", "converged")
TESTS_SHOWN = ("pair (a vs b)", "n a", "n b", "KS D", "KS p (a smaller)", "MRE-gap", "gap CI")


def _statistics_section(reduction: Reduction) -> str:
    """Per split and per pair: the columns a reader compares first, every column one click further."""
    summary_headers = ["split", "kind", "n", "rejected", "MRE", "mean", "std", "min", "q05", "q25", "q75", "q95",
                       "max", "tau", "success (below tau)", "converged"]
    summary_rows = [
        [
            r["split"], r["kind"], r["count"], r["rejected"], r["mre"], r["mean"], r["std"], r["min"],
            r["q05"], r["q25"], r["q75"], r["q95"], r["max"], f"{number(r['tau'])} ({r['tau_column']})",
            percent(r["success_rate"]),
            percent(r["converged_rate"]),
        ]
        for r in reduction.summary.to_pylist()
    ]
    level = f"{reduction.settings.confidence:.0%}"
    test_headers = ["pair (a vs b)", "n a", "n b", "KS D", "KS p", "KS p (a smaller)", "Mann-Whitney p", "MRE a",
                    "MRE b", "MRE-gap", "gap CI", "note"]
    test_rows = [
        [
            f"{t['split_a']} vs {t['split_b']}", t["n_a"], t["n_b"], t["ks_statistic"],
            number(t["ks_pvalue"], 2), number(t["ks_one_sided_pvalue"], 2), number(t["mw_pvalue"], 2),
            t["mre_a"], t["mre_b"], t["mre_gap"],
            "-" if t["gap_ci_low"] is None else f"[{number(t['gap_ci_low'])}, {number(t['gap_ci_high'])}]",
            t["note"] or "",
        ]
        for t in reduction.tests.to_pylist()
    ]
    tests = (
        _narrow(test_headers, test_rows, TESTS_SHOWN, text_columns=("gap CI", "note"))
        if test_rows
        else "<p>No pair of splits to test (needs train and val, or generated and a real split).</p>"
    )
    return (
        '<section id="statistics"><h2>Statistics</h2>\n'
        "<p>Per split: MRE is the median recovery error; quantiles interpolate linearly; std is the "
        "sample standard deviation.</p>\n"
        f"{_narrow(summary_headers, summary_rows, SUMMARY_SHOWN, text_columns=('tau',))}\n"
        "<p>Tests: a is the split expected to be recovered better; MRE-gap = "
        "(MRE b &minus; MRE a) / MRE b; KS p is two-sided; the bootstrap CI is a percentile "
        f"interval of {reduction.settings.bootstrap} resamples at {level}.</p>\n{tests}</section>"
    )


def _narrow(headers: list[str], rows: list[list], shown: tuple[str, ...], text_columns: tuple[str, ...]) -> str:
    """The table with the `shown` columns, and the whole of it folded beneath."""
    keep = [i for i, h in enumerate(headers) if h in shown]
    text = {i for i, h in enumerate(headers) if h in text_columns}
    narrow = _table([headers[i] for i in keep], [[row[i] for i in keep] for row in rows],
                    text_columns=[j for j, i in enumerate(keep) if i in text])
    whole = _table(headers, rows, text_columns=text)
    return f"{narrow}<details><summary>all {len(headers)} columns</summary>{whole}</details>"


def _distributions_section(reduction: Reduction, errors: dict[str, np.ndarray], colors: dict[str, str]) -> str:
    """The figure the verdict rests on: histograms with the evidence marked, and the ECDFs beside them."""
    present = {s: x for s, x in errors.items() if len(x)}
    first = reduction.tests.to_pylist()[0] if reduction.tests.num_rows else None
    ks_pair = None
    if first is not None and first["ks_statistic"] is not None:
        ks_pair = (first["split_a"], first["split_b"], first["ks_statistic"], first["ks_location"])
    threshold, flagged, legend = flagged_marks(reduction, present)
    histogram = histogram_png(reduction.histograms, {s: colors[s] for s in present}, threshold=threshold,
                              flagged=flagged)
    ecdf = ecdf_png(present, {s: colors[s] for s in present}, ks_pair)
    scale = reduction.histograms.column("scale")[0].as_py() if reduction.histograms.num_rows else "linear"
    bins = len(set(reduction.histograms.column("bin").to_pylist()))
    return (
        '<section id="distributions"><div class="figures">'
        f"{_img(histogram, 'error histograms per split')}"
        f"{_img(ecdf, 'empirical CDFs per split with the KS distance')}</div>\n"
        f'<p class="note">Recovery error per split: histograms on {bins} shared {_e(scale)}-spaced bins that cover '
        f"every value (log x axis){legend}; right, the empirical CDFs.</p></section>"
    )


def _convergence_section(
    results: pa.Table,
    rows: dict[str, np.ndarray],
    colors: dict[str, str],
    settings: StatsSettings,
) -> str:
    curves = convergence_curves(results, rows, cap=settings.curve_sample, seed=settings.seed)
    if not curves:
        return ""
    counts = "; ".join(f"{_e(s)}: {c.images} of {c.total} traces" for s, c in curves.items())
    return (
        '<section id="convergence"><h2>Convergence</h2>\n'
        "<p>Error after each iteration of the best restart; shorter traces carry their last value "
        f"forward. Traces used ({counts}).</p>\n"
        f"{_img(convergence_png(curves, {s: colors[s] for s in curves}), 'convergence curves')}</section>"
    )


def _samples_section(samples: pa.Table | None) -> str:
    if samples is None or samples.num_rows == 0:
        return ""
    check_samples(samples)
    rows = [r for r in samples.to_pylist() if r["rank"] in RANKS]  # top-<n> are drawn under "Most memorized"
    if not rows:
        return ""
    rank_order = {r: i for i, r in enumerate(RANKS)}
    splits = list(dict.fromkeys(r["split"] for r in rows))
    parts = ['<section id="samples"><h2>Recoveries: best, median, worst</h2>\n<p>Per split, the best, median and '
             "worst recoveries: target, recovery and |target &minus; recovery| on the pixel scale.</p>"]
    for split in splits:
        mine = sorted((r for r in rows if r["split"] == split), key=lambda r: rank_order[r["rank"]])
        parts.append(f'<h3>{_e(split)}</h3><div class="grid wide">')
        parts.extend(_sample_html(prepare(r)) for r in mine)
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _sample_html(item: SampleImages) -> str:
    images = "".join(_img(png, f"{label} of {item.image_id}") for label, png in (
        ("target", item.target), ("recovery", item.recovery), ("|difference|", item.difference)) if png is not None)
    problem = f'<div class="problem">{_e(item.problem)}</div>' if item.problem else ""
    return (f'<div class="tile wide" title="target, recovery, |difference|"><div class="pair">{images}</div>'
            f'<div>{_e(item.rank)}: error {_e(number(item.error))}</div><div class="id">{_e(item.image_id)}</div>'
            f"{problem}</div>")


def _rejects_section(rejects: pa.Table | None) -> str:
    if rejects is None or rejects.num_rows == 0:
        return ""
    keys = [c for c in ("split", "stage", "reason") if c in rejects.column_names]
    grouped = (
        rejects.select(keys)
        .group_by(keys)
        .aggregate([([], "count_all")])
        .sort_by([("count_all", "descending")] + [(k, "ascending") for k in keys])
    )
    counts = grouped.slice(0, MAX_REJECT_GROUPS).to_pylist()
    more = grouped.num_rows - len(counts)
    count_rows = [[r[k] for k in keys] + [r["count_all"]] for r in counts]
    count_table = _table([*keys, "count"], count_rows, text_columns=range(len(keys)))
    columns = [c for c in ("image_id", "split", "source", "row", "stage", "reason") if c in rejects.column_names]
    examples = rejects.select(columns).slice(0, MAX_REJECT_EXAMPLES).to_pylist()
    example_table = _table(columns, [[r[c] for c in columns] for r in examples], text_columns=range(len(columns)))
    tail = f"<p>{more} more (split, stage, reason) groups not shown.</p>" if more > 0 else ""
    return (
        f'<section id="rejects"><h2>Rejects</h2>\n<p>{rejects.num_rows} inputs could not be audited.</p>\n'
        f"{count_table}{tail}\n<p>Examples (the first {len(examples)} of {rejects.num_rows}; every one is in "
        f"rejects/):</p>\n{example_table}</section>"
    )


def _provenance_section(settings: StatsSettings, run_info: dict[str, Any] | None) -> str:
    settings_table = _table(["setting", "value"], [[k, v] for k, v in settings.as_dict().items()], text_columns=(0,))
    section = _stats_section(run_info)
    ignored = sorted(set(section) - set(field_names())) if section else []
    ignored_note = (
        f"<p>Keys of config.stats that are not stats settings: {_e(', '.join(ignored))}.</p>" if ignored else ""
    )
    shown = json.dumps(run_info, indent=2, sort_keys=True, default=str)
    cut = (f"<p>The first {MAX_RUN_JSON} of {len(shown)} characters; the whole is run.json beside this report.</p>"
           if len(shown) > MAX_RUN_JSON else "")
    run = f"<h3>run.json</h3>\n{cut}<pre>{_e(shown[:MAX_RUN_JSON])}</pre>" if run_info is not None else "<p>No run.json.</p>"
    versions = {
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pyarrow": pa.__version__,
        "matplotlib": matplotlib.__version__,
    }
    made = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return (
        '<section id="provenance"><h2>Config and provenance</h2>\n<h3>Statistics settings</h3>\n'
        f"{settings_table}{ignored_note}\n{run}\n"
        f"<p>Report made {_e(made)} with {_e(', '.join(f'{k} {v}' for k, v in versions.items()))}.</p></section>"
    )
