"""`memaudit compare OUT_A OUT_B`: two runs side by side.

Typically two checkpoints of one generator audited on the same images: which training
images became memorized between them, and did the training errors as a whole move?

- side by side: verdict, per split n / MRE / success rate, the MRE-gap with its CI, the
  KS p-value and the flagged count of each run, and the gap's change B - A;
- per image, for the images present in both runs (same split and image id): the error in
  A and in B, log10(error_B / error_A), and whether stats.ranking flagged the image in
  each run; "newly flagged" images are the training images that became memorized;
- per split, tests between the runs' errors: the Wilcoxon signed-rank test on the paired
  errors of the images in both (scipy.stats.wilcoxon, two-sided, with the median of the
  paired log-ratios, negative when B recovers them better), and the two-sample KS test on
  all errors of each run (scipy.stats.ks_2samp: also valid when the runs share no ids).

Both runs are reduced from their results with the stats settings in their run.json, as
`memaudit report` does, so the comparison does not depend on tables written by an older
version; nothing is written unless asked.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats as sps

from stats import io as stats_io
from stats.checks import check_output
from stats.errors import StatsError
from stats.reduction import Reduction, reduce
from stats.report.render import settings_from_run_info
from stats.text import number

IMAGES_SCHEMA = pa.schema([
    pa.field("split", pa.string()),
    pa.field("image_id", pa.string()),
    pa.field("error_a", pa.float64()),
    pa.field("error_b", pa.float64()),
    pa.field("log10_ratio", pa.float64()),  # log10(error_b / error_a): negative = recovered better in B
    pa.field("flagged_a", pa.bool_()),  # flagged as memorized in A's ranking (null: not ranked)
    pa.field("flagged_b", pa.bool_()),
])
TESTS_SCHEMA = pa.schema([
    pa.field("split", pa.string()),
    pa.field("n_a", pa.int64()),
    pa.field("n_b", pa.int64()),
    pa.field("n_paired", pa.int64()),  # images in both runs
    pa.field("mre_a", pa.float64()),
    pa.field("mre_b", pa.float64()),
    pa.field("median_log10_ratio", pa.float64()),  # over the paired images
    pa.field("wilcoxon_statistic", pa.float64()),
    pa.field("wilcoxon_pvalue", pa.float64()),  # paired, two-sided; null with fewer than 2 pairs
    pa.field("ks_statistic", pa.float64()),
    pa.field("ks_pvalue", pa.float64()),  # all errors of A vs all of B, two-sided
])
FLOOR = 1e-300  # an error of exactly 0 still gets a finite log-ratio


@dataclass(frozen=True)
class RunComparison:
    """Two reduced runs and what changed between them."""

    a: Reduction
    b: Reduction
    images: pa.Table  # IMAGES_SCHEMA, images in both runs, sorted by log10_ratio (most improved first)
    tests: pa.Table  # TESTS_SCHEMA, one row per split present in both runs

    @property
    def member_split(self) -> str:
        """The split that may be memorized: the first of B's first configured pair (``train`` by default)."""
        return self.b.settings.pairs[0][0]

    def newly_flagged(self, split: str | None = None) -> pa.Table:
        """Images of ``split`` (default: member_split) flagged in B and not in A: the ones that became memorized."""
        split = self.member_split if split is None else split
        t = self.images.filter(pc.equal(self.images.column("split"), split))
        mask = pc.and_(pc.fill_null(t.column("flagged_b"), False), pc.invert(pc.fill_null(t.column("flagged_a"), False)))
        return t.filter(mask)


def compare_runs(out_a: str, out_b: str, *, storage_options: dict[str, Any] | None = None) -> RunComparison:
    """Reduce both outputs and compare them (module docstring).

    Raises:
        StatsError: an output without results, or results stats rejects.
    """
    results_a, reduction_a = _load(out_a, storage_options)
    results_b, reduction_b = _load(out_b, storage_options)
    images = paired_images(results_a, results_b, reduction_a.ranking, reduction_b.ranking)
    tests = split_tests(results_a, results_b, images, reduction_a, reduction_b)
    return RunComparison(reduction_a, reduction_b, images, tests)


def _load(out: str, storage_options: dict[str, Any] | None) -> tuple[pa.Table, Reduction]:
    """One run reduced, after the checks `memaudit report` makes: an unfinished output (stopped by
    --max-shards, or still running) has no verdict to compare, so it is refused, naming the output."""
    results, rejects, _, info = stats_io.read_output(out, storage_options=storage_options)
    settings = settings_from_run_info(info)
    try:
        check_output(results, rejects, info, settings.pairs)
    except StatsError as exc:
        raise StatsError(f"{out}: {exc}") from None
    return results, reduce(results, rejects, settings=settings)


def paired_images(results_a: pa.Table, results_b: pa.Table, ranking_a: pa.Table, ranking_b: pa.Table) -> pa.Table:
    """Images in both runs (inner join on split and image_id) with their errors, change and flags."""
    def keyed(results: pa.Table, ranking: pa.Table, suffix: str) -> pa.Table:
        t = pa.table({"split": results.column("split").cast(pa.string()),
                      "image_id": results.column("image_id").cast(pa.string()),
                      f"error_{suffix}": results.column("error").cast(pa.float64())})
        # An image ranked in several pairs (train vs val and vs another split) is flagged if any pair flags it.
        flags = ranking.select(["split", "image_id", "flagged"]).group_by(["split", "image_id"]).aggregate(
            [("flagged", "any")]).rename_columns(["split", "image_id", f"flagged_{suffix}"])
        return t.join(flags, ["split", "image_id"], join_type="left outer")

    joined = keyed(results_a, ranking_a, "a").join(keyed(results_b, ranking_b, "b"), ["split", "image_id"],
                                                   join_type="inner")
    a = np.maximum(joined.column("error_a").to_numpy(), FLOOR)
    b = np.maximum(joined.column("error_b").to_numpy(), FLOOR)
    joined = joined.append_column("log10_ratio", pa.array(np.log10(b / a)))
    joined = joined.select(IMAGES_SCHEMA.names).cast(IMAGES_SCHEMA)
    return joined.sort_by([("log10_ratio", "ascending"), ("split", "ascending"), ("image_id", "ascending")])


def split_tests(results_a: pa.Table, results_b: pa.Table, images: pa.Table, reduction_a: Reduction,
                reduction_b: Reduction) -> pa.Table:
    """Per split in both runs: the paired Wilcoxon test on shared images and the KS test on all errors."""
    mre_a = {r["split"]: r["mre"] for r in reduction_a.summary.to_pylist()}
    mre_b = {r["split"]: r["mre"] for r in reduction_b.summary.to_pylist()}
    rows = []
    for split in [s for s in mre_a if s in mre_b]:
        xa, xb = _errors(results_a, split), _errors(results_b, split)
        paired = images.filter(pc.equal(images.column("split"), split))
        row = {"split": split, "n_a": len(xa), "n_b": len(xb), "n_paired": paired.num_rows,
               "mre_a": mre_a[split], "mre_b": mre_b[split]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if len(xa) and len(xb):
                ks = sps.ks_2samp(xa, xb)
                row.update(ks_statistic=float(ks.statistic), ks_pvalue=float(ks.pvalue))
            ratio = paired.column("log10_ratio").to_numpy()
            if len(ratio):
                row["median_log10_ratio"] = float(np.median(ratio))
            differences = paired.column("error_b").to_numpy() - paired.column("error_a").to_numpy()
            if len(differences) >= 2 and np.any(differences != 0):
                w = sps.wilcoxon(differences)
                row.update(wilcoxon_statistic=float(w.statistic), wilcoxon_pvalue=float(w.pvalue))
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=TESTS_SCHEMA)


def _errors(results: pa.Table, split: str) -> np.ndarray:
    mask = pc.equal(results.column("split").cast(pa.string()), split)
    return results.filter(mask).column("error").to_numpy().astype(np.float64)


def format_comparison(comparison: RunComparison, out_a: str, out_b: str, *, top: int = 10) -> str:
    """The comparison as text: side by side, the tests between runs, the newly flagged images."""
    lines = [f"A: {out_a}", f"B: {out_b}", "", f"{'':<24}{'A':>24}{'B':>24}"]
    for label, (va, vb) in side_by_side(comparison).items():
        lines.append(f"{label:<24}{va:>24}{vb:>24}")
    gap_a, gap_b = _gap(comparison.a), _gap(comparison.b)
    if gap_a is not None and gap_b is not None:
        lines.append(f"{'MRE-gap change B - A':<24}{number(gap_b - gap_a):>48}")
    lines += ["", "errors of B against A (paired: images in both; KS: all images)",
              f"{'split':<12}{'paired':>8}{'median log10(B/A)':>19}{'Wilcoxon p':>12}{'KS D':>8}{'KS p':>11}"]
    for r in comparison.tests.to_pylist():
        lines.append(f"{r['split']:<12}{r['n_paired']:>8}{number(r['median_log10_ratio']):>19}"
                     f"{number(r['wilcoxon_pvalue']):>12}{number(r['ks_statistic']):>8}{number(r['ks_pvalue']):>11}")
    new = comparison.newly_flagged()
    lines += ["", f"{comparison.member_split} images flagged in B and not in A: {new.num_rows}"]
    for r in new.slice(0, top).to_pylist():
        lines.append(f"  {r['image_id']}: error {number(r['error_a'])} -> {number(r['error_b'])}")
    return "\n".join(lines)


def side_by_side(comparison: RunComparison) -> dict[str, tuple[str, str]]:
    """Label -> (A's value, B's value), as text."""
    out: dict[str, tuple[str, str]] = {"verdict": (comparison.a.verdict.label, comparison.b.verdict.label)}
    sa = {r["split"]: r for r in comparison.a.summary.to_pylist()}
    sb = {r["split"]: r for r in comparison.b.summary.to_pylist()}
    for split in dict.fromkeys([*sa, *sb]):
        ra, rb = sa.get(split, {}), sb.get(split, {})
        out[f"{split}: n"] = (number(ra.get("count")), number(rb.get("count")))
        out[f"{split}: MRE"] = (number(ra.get("mre")), number(rb.get("mre")))
        out[f"{split}: success"] = (number(ra.get("success_rate")), number(rb.get("success_rate")))
    out["MRE-gap [CI]"] = (_gap_text(comparison.a), _gap_text(comparison.b))
    out["KS p"] = (number(_pair(comparison.a).get("ks_pvalue")), number(_pair(comparison.b).get("ks_pvalue")))
    out["flagged"] = (number(_flagged(comparison.a)), number(_flagged(comparison.b)))
    return out


def _pair(reduction: Reduction) -> dict[str, Any]:
    a, b = reduction.settings.pairs[0]
    return next((r for r in reduction.tests.to_pylist() if (r["split_a"], r["split_b"]) == (a, b)), {})


def _gap(reduction: Reduction) -> float | None:
    return _pair(reduction).get("mre_gap")


def _gap_text(reduction: Reduction) -> str:
    row = _pair(reduction)
    if row.get("gap_ci_low") is None:
        return number(row.get("mre_gap"))
    return f"{number(row['mre_gap'])} [{number(row['gap_ci_low'])}, {number(row['gap_ci_high'])}]"


def _flagged(reduction: Reduction) -> int:
    return int(pc.sum(reduction.ranking.column("flagged").cast(pa.int64())).as_py() or 0)


# --- the HTML page ---------------------------------------------------------------------

NEWLY_FLAGGED_SHOWN = 100  # rows of the newly-flagged table; all are in compare-images.parquet


def read_run_json(out: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """A run's run.json for the page's header, or None when it has none."""
    fs, root = stats_io.open_output(out, storage_options)
    path = f"{root.rstrip('/')}/run.json"
    return stats_io.read_json_object(fs, path) if fs.exists(path) else None


def render_comparison(comparison: RunComparison, out_a: str, out_b: str, *, info_a: dict[str, Any] | None = None,
                      info_b: dict[str, Any] | None = None) -> str:
    """compare.html in the report's look: the per-image change figure first, then side by side and the tests."""
    from stats.report.html import escape, img, table
    from stats.report.plots import distribution_png, split_colors
    from stats.report.page import audit_fields, fold, header, page, toc, today, version

    splits = list(dict.fromkeys(comparison.images.column("split").to_pylist()))
    ratios = {s: comparison.images.filter(pc.equal(comparison.images.column("split"), s)).column("log10_ratio")
              .to_numpy().astype(np.float64) for s in splits}
    figure = (img(distribution_png(ratios, split_colors(splits), "log10(error B / error A): below 0, B recovers it "
                                   "better", "Per-image change, images in both runs"), "per-image error change")
              if splits else "<p>The runs share no image (same split and image id).</p>")
    new = comparison.newly_flagged()
    rows = [[r["image_id"], r["error_a"], r["error_b"], r["log10_ratio"]] for r in new.slice(0, NEWLY_FLAGGED_SHOWN).to_pylist()]
    more = (f" The first {len(rows)} of {new.num_rows}; all are in compare-images.parquet (--out)."
            if new.num_rows > len(rows) else "")
    sections = [
        '<section id="side-by-side"><h2>Side by side</h2>'
        + table(["", "A", "B"], [[k, a, b] for k, (a, b) in side_by_side(comparison).items()], text_columns=(1, 2))
        + "</section>",
        '<section id="tests"><h2>Errors of B against A</h2><p>Paired: the Wilcoxon signed-rank test on the images in '
        "both runs; KS: all errors of each run.</p>"
        + table(["split", "n A", "n B", "paired", "median log10(B/A)", "Wilcoxon p", "KS D", "KS p"],
                [[r["split"], r["n_a"], r["n_b"], r["n_paired"], r["median_log10_ratio"], number(r["wilcoxon_pvalue"], 2),
                  r["ks_statistic"], number(r["ks_pvalue"], 2)] for r in comparison.tests.to_pylist()])
        + "</section>",
        f'<section id="newly-flagged"><h2>Newly flagged training images ({new.num_rows})</h2><p>Flagged in B and not '
        f"in A: the training images that became memorized.{escape(more)}</p>"
        + table(["image_id", "error A", "error B", "log10(B/A)"], rows, table_id="newly", searchable=True, tall=True)
        + "</section>",
    ]
    def run_fields(name: str, out: str, info: dict[str, Any] | None) -> list[tuple[str, object]]:
        shown = ("model", "generator sha256", "plan", "audited")
        return [(name, out), *((f"{name} {k}", v) for k, v in audit_fields(info, None) if k in shown)]

    fields = [*run_fields("A", out_a, info_a), *run_fields("B", out_b, info_b), ("memaudit", version()),
              ("page made", today())]
    verdicts = (f'<p class="verdict {escape(comparison.b.verdict.label.replace(" ", "-"))}">A: '
                f"{escape(comparison.a.verdict.label)}; B: {escape(comparison.b.verdict.label)}. "
                f"{new.num_rows} training images flagged in B and not in A.</p>")
    body = "\n".join([verdicts, f'<section id="change"><div class="figures">{figure}</div></section>', toc(sections),
                      *(fold(s, open_=True) for s in sections)])
    return page("memaudit compare", header("memaudit compare", fields), body)
