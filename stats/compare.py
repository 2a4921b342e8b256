"""Tests between pairs of splits (DESIGN.md §2): KS, Mann-Whitney U, MRE-gap and its bootstrap CI.

Each pair is (a, b) with a the split expected to be recovered better: the memorization
pairs of ``settings.pairs`` first ((train, val) by default), then (generated, s) for every
real split s. The MRE-gap is normalized by the reference b, (MRE(b) - MRE(a)) / MRE(b), so
a positive gap means a is recovered better, as in the paper for train vs val (the paper's
code reports the absolute value; we keep the sign). The memorization pairs also get the
partial-memorization columns of stats.ranking and the gap's bootstrap p-value.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
from scipy import stats as sps

from stats.ranking import PARTIAL_FIELDS
from stats.settings import StatsSettings
from stats.summary import median_sorted
from stats.inputs import GENERATED, split_kind

TESTS_SCHEMA = pa.schema(
    [
        pa.field("split_a", pa.string(), nullable=False),  # expected to be recovered better
        pa.field("split_b", pa.string(), nullable=False),  # the reference
        pa.field("n_a", pa.int64(), nullable=False),
        pa.field("n_b", pa.int64(), nullable=False),
        pa.field("ks_statistic", pa.float64()),  # two-sided sup |F_a - F_b|
        pa.field("ks_pvalue", pa.float64()),
        pa.field("ks_location", pa.float64()),  # error value where the distance is largest
        pa.field("ks_one_sided_statistic", pa.float64()),  # sup (F_a - F_b)
        pa.field("ks_one_sided_pvalue", pa.float64()),  # H1: a's errors are stochastically smaller
        pa.field("mw_u", pa.float64()),  # Mann-Whitney U of a
        pa.field("mw_pvalue", pa.float64()),  # two-sided
        pa.field("mre_a", pa.float64()),
        pa.field("mre_b", pa.float64()),
        pa.field("mre_gap", pa.float64()),  # (mre_b - mre_a) / mre_b; null when mre_b == 0
        pa.field("gap_ci_low", pa.float64()),
        pa.field("gap_ci_high", pa.float64()),
        pa.field("gap_pvalue", pa.float64()),  # bootstrap p of "gap <= gap_threshold"; memorization pairs only
        pa.field("bootstrap", pa.int64(), nullable=False),  # resamples behind the CI
        *PARTIAL_FIELDS,
        pa.field("note", pa.string()),  # why a value is missing, or scipy's warnings
    ]
)


# Above this many errors in a pair, Mann-Whitney runs on the sorted samples (mann_whitney_sorted)
# instead of scipy's rank-based code, which needs ~5 copies of the pooled sample in memory.
LARGE_SAMPLE = 100_000


def pairs(splits: list[str], memorization: tuple[tuple[str, str], ...] = (("train", "val"),)) -> list[tuple[str, str]]:
    """The pairs to test: each memorization pair whose two splits are present, then (generated, s) for each real split s."""
    out = [(a, b) for a, b in memorization if a in splits and b in splits]
    if GENERATED in splits:
        out.extend((GENERATED, s) for s in splits if split_kind(s) == "real")
    return out


def compare(
    errors: Mapping[str, np.ndarray],
    splits: list[str],
    settings: StatsSettings,
    partial: Mapping[tuple[str, str], Mapping[str, object]] | None = None,
) -> pa.Table:
    """One row per pair of ``pairs(splits, settings.pairs)``; errors maps a split to its sorted errors.

    A split listed in ``splits`` but absent from ``errors`` (rejects only) gets a row with
    null statistics and a note. ``partial`` holds each memorization pair's PARTIAL_FIELDS
    (from stats.ranking); a "tail_note" among them joins the row's note.
    """
    rows = []
    for a, b in pairs(splits, settings.pairs):
        row = compare_pair(a, b, errors.get(a), errors.get(b), settings, memorization=(a, b) in settings.pairs)
        extra = dict((partial or {}).get((a, b), {}))
        tail_note = extra.pop("tail_note", None)
        row.update(extra)
        if tail_note:
            row["note"] = "; ".join(n for n in (row["note"], tail_note) if n)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=TESTS_SCHEMA)


def compare_pair(
    a: str,
    b: str,
    xa: np.ndarray | None,
    xb: np.ndarray | None,
    settings: StatsSettings,
    *,
    memorization: bool = False,
) -> dict[str, object]:
    """The tests of one pair on sorted errors; with ``memorization``, also the gap's p-value."""
    xa = np.empty(0) if xa is None else xa
    xb = np.empty(0) if xb is None else xb
    row: dict[str, object] = dict.fromkeys(TESTS_SCHEMA.names)
    row.update(split_a=a, split_b=b, n_a=len(xa), n_b=len(xb), bootstrap=0)
    empty = [s for s, x in ((a, xa), (b, xb)) if len(x) == 0]
    if empty:
        row["note"] = f"split {empty[0]!r} has no results"
        return row

    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(all="ignore"):
            ks = sps.ks_2samp(xa, xb, alternative="two-sided")
            # scipy's "greater": the CDF of the first sample lies above, i.e. a is smaller.
            ks1 = sps.ks_2samp(xa, xb, alternative="greater")
            if len(xa) + len(xb) > LARGE_SAMPLE:
                mw_u, mw_p = mann_whitney_sorted(xa, xb)
            else:
                mw = sps.mannwhitneyu(xa, xb, alternative="two-sided")
                mw_u, mw_p = float(mw.statistic), float(mw.pvalue)
    notes.extend(sorted({str(w.message) for w in caught}))

    mre_a, mre_b = median_sorted(xa), median_sorted(xb)
    row.update(
        ks_statistic=float(ks.statistic),
        ks_pvalue=float(ks.pvalue),
        ks_location=float(ks.statistic_location),
        ks_one_sided_statistic=float(ks1.statistic),
        ks_one_sided_pvalue=float(ks1.pvalue),
        mw_u=mw_u,
        mw_pvalue=_finite_or_none(mw_p),
        mre_a=mre_a,
        mre_b=mre_b,
    )
    if row["mw_pvalue"] is None:
        notes.append("Mann-Whitney p-value undefined (all errors tied)")
    if mre_b == 0:
        notes.append(f"MRE({b}) is 0: the MRE-gap is undefined")
    else:
        row["mre_gap"] = (mre_b - mre_a) / mre_b
        if settings.bootstrap:
            notes += _gap_bootstrap(row, xa, xb, settings, memorization=memorization)
    row["note"] = "; ".join(notes) or None
    return row


def _gap_bootstrap(row: dict[str, object], xa: np.ndarray, xb: np.ndarray, settings: StatsSettings, *,
                   memorization: bool) -> list[str]:
    """Fill the gap's CI (and for memorization pairs its p-value) into row; returns notes."""
    a, b = str(row["split_a"]), str(row["split_b"])
    rng = np.random.default_rng([settings.seed, zlib.crc32(a.encode()), zlib.crc32(b.encode())])
    gaps, dropped = bootstrap_gaps(xa, xb, settings.bootstrap, rng)
    low, high = interval(gaps, settings.confidence)
    row.update(gap_ci_low=low, gap_ci_high=high, bootstrap=settings.bootstrap)
    if memorization and len(gaps):
        # The smallest level at which a one-sided lower bound clears the threshold.
        row["gap_pvalue"] = float((np.sum(gaps <= settings.gap_threshold) + 1) / (len(gaps) + 1))
    if dropped:
        return [f"{dropped} of {settings.bootstrap} resamples had MRE({b}) = 0 and were left out of the CI"]
    return []


def mann_whitney_sorted(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mann-Whitney U of a and its two-sided p-value from sorted samples, without ranking.

    Equal to scipy.stats.mannwhitneyu(a, b, method="asymptotic") (normal approximation with
    tie correction and continuity correction), which scipy itself uses at these sizes; it
    counts with binary searches instead of ranking the pooled sample, so it needs two
    integer arrays the size of a instead of several copies of both samples.
    """
    n1, n2 = len(a), len(b)
    below = np.searchsorted(b, a, side="left")
    at_or_below = np.searchsorted(b, a, side="right")
    u1 = float(below.sum()) + 0.5 * float((at_or_below - below).sum())
    del below, at_or_below
    u = max(u1, n1 * n2 - u1)
    n = n1 + n2
    spread = n1 * n2 / 12 * ((n + 1) - _tie_term(a, b) / (n * (n - 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u - n1 * n2 / 2 - 0.5) / np.sqrt(spread)
    p = float(np.clip(2 * sps.norm.sf(z), 0, 1))
    return u1, p


def _tie_term(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of t**3 - t over the groups of equal values in the pooled sample."""
    values_a, counts_a = _runs(a)
    values_b, counts_b = _runs(b)
    at = np.searchsorted(values_b, values_a)
    shared = at < len(values_b)
    shared[shared] = values_b[at[shared]] == values_a[shared]
    pooled = counts_a.copy()
    pooled[shared] += counts_b[at[shared]]
    only_b = np.ones(len(values_b), dtype=bool)
    only_b[at[shared]] = False
    t = np.concatenate([pooled, counts_b[only_b]])
    return float(np.sum(t**3 - t))


def _runs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of sorted x and how often each occurs (as float64: t**3 overflows int64)."""
    starts = np.concatenate([[0], np.flatnonzero(x[1:] != x[:-1]) + 1])
    counts = np.diff(np.concatenate([starts, [len(x)]])).astype(np.float64)
    return x[starts], counts


def bootstrap_medians(x: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of ``size`` bootstrap resamples of the sorted values x, without resampling.

    A resample of n values is x[ceil(n * U_i)] for n uniforms U_i; the map is monotone, so
    its k-th smallest value is x[ceil(n * U_(k))], and the k-th order statistic of n
    uniforms is Beta(k, n - k + 1). Given U_(k) = u, U_(k+1) = u + (1 - u) * Beta(1, n - k).
    Drawing these gives exactly the distribution of the resampled median (the mean of the
    two middle values for even n) in O(size), where resampling costs O(size * n): the
    bootstrap of 10 million errors costs as much as that of 100.
    """
    n = len(x)
    if n % 2:
        k = (n + 1) // 2
        return x[_order_index(rng.beta(k, n - k + 1, size), n)]
    k = n // 2
    lower = rng.beta(k, n - k + 1, size)
    upper = lower + (1.0 - lower) * rng.beta(1, n - k, size)
    return 0.5 * (x[_order_index(lower, n)] + x[_order_index(upper, n)])


def _order_index(u: np.ndarray, n: int) -> np.ndarray:
    return np.clip(np.ceil(u * n).astype(np.int64) - 1, 0, n - 1)


def bootstrap_gaps(xa: np.ndarray, xb: np.ndarray, resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Bootstrap MRE-gaps (a and b resampled independently), and how many resamples had MRE(b) = 0."""
    ma = bootstrap_medians(xa, resamples, rng)
    mb = bootstrap_medians(xb, resamples, rng)
    keep = mb != 0
    return (mb[keep] - ma[keep]) / mb[keep], int((~keep).sum())


def interval(gaps: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """Equal-tailed percentile interval of the bootstrap gaps; (None, None) without any."""
    if not len(gaps):
        return None, None
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(gaps, [tail, 1.0 - tail])
    return float(low), float(high)


def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None
