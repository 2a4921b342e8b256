"""Report sections: the verdict's rules, the most memorized training images (grid and table), the search.

Kept apart from stats.report.render so each file stays readable; they share stats.report.html's helpers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stats.columns import numeric
from stats.report.curves import budget_curves
from stats.report.html import escape, img, table
from stats.report.plots import budget_png
from stats.reduction import Reduction
from stats.report.samples import SampleImages, check_samples, prepare
from stats.inputs import TOP
from stats.text import number, ordinal, percent

MAX_LISTED = 100  # flagged images listed in the table (all of them are in ranking.parquet)
UNFLAGGED_SHOWN = 10  # best-ranked images shown when none is flagged
MAX_MARKED = 2000  # flagged images marked on the histogram (the most significant first)


def confounds_box(reduction: Reduction) -> str:
    """A warning box when a pair's splits differ in format, size or channels."""
    warnings = reduction.verdict.confounds
    if not warnings:
        return ""
    items = "".join(f"<li>{escape(w)}</li>" for w in warnings)
    return f'<div class="confounds"><p><strong>Possible confounds</strong></p><ul>{items}</ul></div>'


def rules_section(reduction: Reduction) -> str:
    """Every rule on every pair with its p-value and Holm-adjusted p-value, and the partial-memorization tests."""
    tests = reduction.verdict.tests
    if not tests:
        return ""
    settings = reduction.settings
    rows = [[f"{t.pair[0]} vs {t.pair[1]}", t.rule, number(t.p_value, 2), number(t.adjusted, 2),
             "fired" if t.fired else "-"] for t in tests]
    partial = []
    for t in reduction.tests.to_pylist():
        if t["images_pvalue"] is None:
            continue
        partial.append([
            f"{t['split_a']} vs {t['split_b']}", t["tail_model"], t["tail_k"], t["tail_threshold"], t["tail_scale"],
            t["tail_gof_statistic"], number(t["tail_gof_pvalue"], 2), number(t["images_pvalue"], 2), t["flagged"],
            f"{t['low_count']} (expected {number(t['low_expected'])}) below the {ordinal(t['low_rank'])} smallest",
            number(t["low_count_pvalue"], 2),
        ])
    return (
        '<section id="rules"><h2>Verdict rules</h2>\n'
        f"<p>Each rule gives a p-value for &ldquo;a is recovered better than b&rdquo;; Holm's procedure over all of "
        f"them keeps the chance of a false &ldquo;memorization&rdquo; at most alpha = {settings.alpha:g}. "
        "<em>ks</em>: one-sided KS; <em>mre_gap</em>: bootstrap p-value of MRE-gap &le; "
        f"{settings.gap_threshold:g}, and the lower end of its CI must be above it; <em>images</em>: Simes over the "
        "per-image p-values; <em>low_count</em>: exact count of a-images below b's low quantile.</p>\n"
        f"{table(['pair', 'rule', 'p', 'Holm-adjusted p', 'fired'], rows, text_columns=(1, 4))}\n"
        "<p>Per-image p-values: empirical ranks inside the reference sample; beyond it, an exponential model of the "
        "reference's lower tail on the log scale (k lowest errors below the threshold u, mean distance below u), "
        "checked by the one-sided Gini test of exponentiality (p below 0.1: empirical ranks only).</p>\n"
        + table(["pair", "tail model", "k", "u", "scale (log)", "Gini G", "GOF p", "Simes p", "flagged",
                 "low count", "count p"], partial, text_columns=(1, 9))
        + "</section>"
    )


def flagged_marks(reduction: Reduction, errors: dict[str, np.ndarray]
                  ) -> tuple[tuple[float, str] | None, tuple[np.ndarray, str] | None, str]:
    """For the first pair: the reference's low quantile the count rule uses, the flagged images' errors, and a
    sentence saying what the histogram marks."""
    pairs = reduction.settings.pairs
    if not pairs or reduction.ranking.num_rows == 0:
        return None, None, ""
    a, b = pairs[0]
    row = next((t for t in reduction.tests.to_pylist() if (t["split_a"], t["split_b"]) == (a, b)), None)
    threshold, said = None, []
    k = row.get("low_rank") if row else None
    if k and b in errors and len(errors[b]) >= k:
        threshold = (float(np.sort(errors[b])[k - 1]), f"{b}: {ordinal(k)} smallest")
        said.append(f"dashed, the {ordinal(k)} smallest {escape(b)} error, below which the count rule counts "
                    f"{escape(a)} images")
    ranking = reduction.ranking
    mine = ranking.filter(pc.and_(pc.and_(pc.equal(ranking.column("split"), a), pc.equal(ranking.column("reference"), b)),
                                  ranking.column("flagged")))
    flagged = None
    if mine.num_rows:
        flagged = (mine.column("error").to_numpy()[:MAX_MARKED].astype(np.float64), a)
        more = f", the {MAX_MARKED} most significant of {mine.num_rows}" if mine.num_rows > MAX_MARKED else ""
        said.append(f"ticks on the axis, the flagged {escape(a)} images{more}")
    return threshold, flagged, ("; " + "; ".join(said)) if said else ""


def _pair_rows(reduction: Reduction, a: str, b: str) -> tuple[pa.Table, int]:
    ranking = reduction.ranking
    mine = ranking.filter(pc.and_(pc.equal(ranking.column("split"), a), pc.equal(ranking.column("reference"), b)))
    return mine, int(pc.sum(mine.column("flagged")).as_py() or 0) if mine.num_rows else 0


def memorized_grid(reduction: Reduction, samples: pa.Table | None) -> str:
    """The most memorized training images, target beside recovery, error and q-value under each: the first
    screen's picture of what the generator reproduces."""
    if reduction.ranking.num_rows == 0:
        return ""
    fdr = reduction.settings.fdr
    rendered = _rendered(samples)
    parts = ['<section id="most-memorized"><h2>Most memorized training images</h2>']
    for a, b in reduction.settings.pairs:
        mine, n_flagged = _pair_rows(reduction, a, b)
        if not mine.num_rows:
            continue
        drawn = mine.slice(0, reduction.settings.top_images).to_pylist()
        tiles = [_tile(r, rendered[(a, r["image_id"])]) for r in drawn if (a, r["image_id"]) in rendered]
        head = (f"{n_flagged} of {mine.num_rows} {escape(a)} images are flagged at q &le; {fdr:g} against {escape(b)}"
                if n_flagged else f"No {escape(a)} image is flagged at q &le; {fdr:g} against {escape(b)}")
        shown = (f"; the {len(tiles)} best-ranked, target (left) and recovery (right)." if tiles else
                 ". No rendered images of these (samples.parquet has no top-ranked recoveries; the job renders them).")
        listed = min(n_flagged, MAX_LISTED) if n_flagged else min(mine.num_rows, UNFLAGGED_SHOWN)
        parts.append(f'<p class="note">{head}{shown} Every ranked image is in ranking.parquet; {listed} are listed in '
                     'the <a href="#memorized">flagged-image table</a>.</p>')
        if tiles:
            parts.append(f'<div class="grid">{"".join(tiles)}</div>')
    parts.append("</section>")
    return "\n".join(parts)


def _tile(row: dict[str, Any], item: SampleImages) -> str:
    images = "".join(img(png, f"{label} of {item.image_id}") for label, png in (
        ("target", item.target), ("recovery", item.recovery)) if png is not None)
    problem = f'<div class="problem">{escape(item.problem)}</div>' if item.problem else ""
    return (f'<div class="tile"><div class="pair">{images}</div><div>#{row["rank"]} err {escape(number(row["error"]))}'
            f'</div><div>q {escape(number(row["q_value"], 2))}</div><div class="id" title="{escape(row["image_id"])}">'
            f"{escape(row['image_id'])}</div>{problem}</div>")


def memorized_section(reduction: Reduction) -> str:
    """The flagged images (or the best-ranked) per pair as a table to sort and search, at most MAX_LISTED rows."""
    ranking = reduction.ranking
    if ranking.num_rows == 0:
        return ""
    fdr = reduction.settings.fdr
    summary = {r["split"]: r for r in reduction.summary.to_pylist()}
    parts = ['<section id="memorized"><h2>Flagged images</h2>']
    for index, (a, b) in enumerate(reduction.settings.pairs):
        mine, n_flagged = _pair_rows(reduction, a, b)  # flagged rows come first: sorted by p
        if not mine.num_rows:
            continue
        listed = mine.slice(0, min(n_flagged, MAX_LISTED) if n_flagged else UNFLAGGED_SHOWN).to_pylist()
        smallest = summary.get(b, {}).get("min")
        head = (f"{n_flagged} of {mine.num_rows} {escape(a)} images are flagged at q &le; {fdr:g} against {escape(b)}"
                if n_flagged else f"No {escape(a)} image is flagged at q &le; {fdr:g} against {escape(b)}; the "
                f"{len(listed)} best-ranked are shown")
        parts.append(f"<h3>{escape(a)} vs {escape(b)}</h3>\n<p>{head}. For scale: the smallest {escape(b)} error is "
                     f"{escape(number(smallest))}, the median {escape(number(summary.get(b, {}).get('mre')))}.</p>")
        parts.append(table(["rank", "image_id", "error", "p", "q", "p from", "flagged"],
                           [[r["rank"], r["image_id"], r["error"], number(r["p_value"], 2), number(r["q_value"], 2),
                             r["p_method"], "yes" if r["flagged"] else "no"] for r in listed], text_columns=(1, 5, 6),
                           table_id=f"flagged-{index}", searchable=True, tall=True))
        if n_flagged > len(listed):
            parts.append(f"<p>{n_flagged - len(listed)} more flagged images are not listed here: every ranked image, "
                         "with its p- and q-value, is in ranking.parquet.</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _rendered(samples: pa.Table | None) -> dict[tuple[str, str], SampleImages]:
    if samples is None or samples.num_rows == 0:
        return {}
    check_samples(samples)
    return {(r["split"], str(r["image_id"])): prepare(r) for r in samples.to_pylist() if str(r["rank"]).startswith(TOP)}


def search_section(reduction: Reduction, results: pa.Table, rows: dict[str, np.ndarray], colors: dict[str, str],
                   run_info: dict | None = None) -> str:
    """Success against generator evaluations, the start cap the job measured, and the recovered latents' norms."""
    curves = budget_curves(results, rows)
    summary = reduction.summary.to_pylist()
    norms = [[r["split"], r["evaluations_median"], percent(r["exact_rate"]), r["latent_norm_q05"],
              r["latent_norm_median"], r["latent_norm_q95"]] for r in summary
             if any(r[k] is not None for k in ("evaluations_median", "exact_rate", "latent_norm_median"))]
    if not curves and not norms:
        return ""
    parts = ['<section id="search"><h2>Search budget</h2>']
    if curves:
        parts.append("<p>Share of each split recovered exactly (mse below the engine's exact level) within b generator "
                     "evaluations per image, over all restarts and screening (the paper supplement's &sect;5 curves). "
                     "A generated split far from 100% means the search, not the generator, limits the audit.</p>")
        parts.append(img(budget_png(curves, {s: colors[s] for s in curves}), "share recovered exactly against budget"))
    spent = spending_rows(results, rows)
    if spent:
        parts.append("<p>Where the budget went: generator evaluations per image by split, and each split's share of "
                     "all the audit's evaluations.</p>")
        parts.append(table(["split", "images", "evaluations (median)", "p95", "max", "share of the audit"], spent))
    cap = ((run_info or {}).get("search") or {}).get("start_cap")
    if isinstance(cap, dict):
        parts.append(start_cap_text(cap))
    if norms:
        parts.append("<p>Generator evaluations per image (median), share recovered exactly, and the norm |z|/sqrt(d) "
                     "of the best latent: about 1 under a normal prior; recoveries far above it lie outside the region "
                     "the generator was trained on.</p>")
        parts.append(table(["split", "evaluations (median)", "exact", "|z|/sqrt(d) q05", "median", "q95"], norms))
    parts.append("</section>")
    return "\n".join(parts)


def start_cap_text(cap: dict) -> str:
    """What the start cap (recovery.start_cap: auto) was and what it rests on."""
    if cap.get("cap") is None:
        return f"<p>No start cap: {escape(str(cap.get('reason', '')))}.</p>"
    return (f"<p>Start cap: an image that was not recovered exactly stopped after {int(cap['cap'])} starts, the number "
            f"that finds an image in the generator's range with probability {cap.get('recall', 0):g}, measured on "
            f"the generated split ({escape(str(cap.get('reason', '')))}). The cap looks at no train or val image, so "
            "it treats both alike; a training image the generator copies is in its range and is found as a generated "
            "image is.</p>")


def spending_rows(results: pa.Table, rows: dict[str, np.ndarray]) -> list[list]:
    """Per split: images, evaluations per image (median, p95, max) and the split's share of all evaluations."""
    evaluations = numeric(results, "evaluations")
    if evaluations is None:
        return []
    total = float(np.nansum(evaluations))
    out = []
    for split, positions in rows.items():
        spent = evaluations[positions]
        spent = spent[~np.isnan(spent)]
        if not len(spent):
            continue
        out.append([split, len(spent), number(float(np.median(spent))), number(float(np.percentile(spent, 95))),
                    number(float(spent.max())), percent(float(spent.sum()) / total if total else None)])
    return out
