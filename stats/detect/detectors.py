"""Companion detectors: nearest neighbours, MiFID's memorization distance, the birthday test.

C_T is in stats.detect.copying. Each detector gives one row of detectors.parquet:

    detector  statistic_name  statistic  threshold  p_value  fired  count  reason

A detector is a test, so where a null distribution is known it gives a p-value and fires at p <= alpha:

    neighbours  generated images nearer to a training image than held-out real images are. Under no
                memorization the generated and val nearest-train distances d1 are exchangeable, so the
                number K of generated d1 below the smallest val d1 has P(K >= k) = prod_{i<k} (m-i)/(m+n-i)
                exactly, and the one-sided Mann-Whitney test compares the whole distributions. The row's
                p-value is the Bonferroni combination of the two (2 x the smaller); near-copies (d1/d2 below
                near_copy_ratio) are counted in the reason.
    mifid       Bai et al. 2021: d = mean over GENERATED images of min over train of 1 - |cos|; their rule
                is d < mifid_eps. torchmetrics' MemorizationInformedFrechetInceptionDistance averages over the
                real images instead (min over generated per real image); we follow the paper. The rule alone
                is not calibrated (see mifid_test), so the row also needs the generated distances to be
                smaller than the held-out images' (one-sided Mann-Whitney p-value).
    birthday    Arora and Zhang 2017: generated images in batches of s, each batch's closest pair; a pair
                closer than the threshold is a near-duplicate, and a near-duplicate rate r implies a support
                of about s(s-1) / (2 ln(1/(1-r))) images (about s^2 when r is 1/2). The test counts pairs,
                not batches: pool the generated and held-out images (at most BIRTHDAY_POOL of each, seeded;
                not training images, whose copies would pair with them and say nothing of G's support), take
                the K closest pairs of the pool (K = max(10, pool size / 30), chosen by simulation on the
                digits: benchmarks/detectors.py) and count those whose two images are both generated.
                Under "G samples like the data" the labels generated / held-out are
                exchangeable, so relabelling the pool at random gives the count's exact null (a seeded
                permutation p-value over BIRTHDAY_PERMUTATIONS relabellings). A generator with a small
                support puts many generated pairs among the closest, whatever the batch size; counting
                batches instead could not go below p = 0.012 with three generated batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from scipy import stats as sps

from stats.detect.nearest import first_and_second, pairwise
from stats.settings import StatsSettings

BIRTHDAY_POOL = 1000  # generated and real images each in the pair count: a pool of 2000 has 2e6 pairs
BIRTHDAY_PERMUTATIONS = 999  # relabellings: the smallest p-value is 1e-3, below any usual alpha

DETECTORS_SCHEMA = pa.schema([
    ("detector", pa.string()),
    ("statistic_name", pa.string()),
    ("statistic", pa.float64()),
    ("threshold", pa.float64()),
    ("p_value", pa.float64()),  # null where the detector did not run
    ("fired", pa.bool_()),
    ("count", pa.int64()),  # the images (or batches) behind the statistic: copies, duplicates, kept cells
    ("reason", pa.string()),
])

BIRTHDAY_SCHEMA = pa.schema([
    ("batch", pa.int32()),
    ("id_a", pa.string()),
    ("id_b", pa.string()),
    ("distance", pa.float64()),
    ("duplicate", pa.bool_()),
])


@dataclass(frozen=True)
class DetectorResult:
    """One row of detectors.parquet."""

    detector: str
    statistic_name: str
    statistic: float | None
    threshold: float | None
    p_value: float | None
    fired: bool
    count: int | None
    reason: str


def detectors_table(results: list[DetectorResult]) -> pa.Table:
    return pa.Table.from_pylist([r.__dict__ for r in results], schema=DETECTORS_SCHEMA)


def skipped(detector: str, why: str) -> DetectorResult:
    """A row for a detector that could not run (it never fires): the reason says what it needs."""
    return DetectorResult(detector, "", None, None, None, False, None, f"not run: {why}")


def below_min_pvalue(k: int, m: int, n: int) -> float:
    """P(K >= k) where K = how many of m exchangeable values lie below all n others: prod_{i<k} (m-i)/(m+n-i)."""
    if k <= 0:
        return 1.0
    i = np.arange(k)
    return float(np.exp(np.sum(np.log(m - i) - np.log(m + n - i))))


def neighbours_test(neighbours: pa.Table, settings: StatsSettings, *, generated: str = "generated",
                    reference: str = "val") -> DetectorResult:
    """Generated-to-train against reference-to-train nearest distances (see the module docstring)."""
    _, g1, g2, _ = first_and_second(neighbours, generated)
    _, v1, _, _ = first_and_second(neighbours, reference)
    if len(g1) == 0 or len(v1) == 0:
        return skipped("neighbours", f"needs nearest train distances of both {generated!r} and {reference!r} images")
    floor = float(v1.min())
    copies = int((g1 < floor).sum())
    p_count = below_min_pvalue(copies, len(g1), len(v1))
    mw = sps.mannwhitneyu(g1, v1, alternative="less")
    auc = float(mw.statistic) / (len(g1) * len(v1))
    p = min(1.0, 2.0 * min(p_count, float(mw.pvalue)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(g2 > 0, g1 / g2, np.where(g1 == 0, 0.0, 1.0))
    near = int(np.nansum(ratio < settings.near_copy_ratio))
    fired = p <= settings.alpha
    reason = (f"{copies} of {len(g1)} {generated} images lie nearer to a training image than any of {len(v1)} "
              f"{reference} images ever does (d1 < {floor:.3g}; {len(g1) / (len(v1) + 1):.2f} expected, exact "
              f"p = {p_count:.2g}); one-sided Mann-Whitney p = {float(mw.pvalue):.2g} (P(d1 {generated} < d1 "
              f"{reference}) = {auc:.2f}); {near} near-copies with d1/d2 < {settings.near_copy_ratio:g}; combined "
              f"p = {p:.2g} {'<=' if fired else '>'} alpha = {settings.alpha:g}")
    return DetectorResult("neighbours", "closer_than_any_val", float(copies), floor, p, fired, copies, reason)


def mifid_test(generated: np.ndarray, settings: StatsSettings, *, reference: np.ndarray | None = None) -> DetectorResult:
    """MiFID's memorization distance from each generated image's min 1 - |cos| to the train features.

    The paper's rule (d < eps) alone is not a test: in a feature space where all images lie at small angles
    (pixels of images sharing a mean, clustered embeddings) it fires on any generator (benchmarks/detectors.py
    measures how often). So the row fires when the paper's rule holds AND the generated images' distances are
    smaller than the held-out images' (one-sided Mann-Whitney, p <= alpha); without held-out distances it
    cannot fire. The paper's own outcome is stated in the reason."""
    generated = np.asarray(generated, np.float64)
    if len(generated) == 0:
        return skipped("mifid", "needs generated images")
    d = float(generated.mean())
    paper = d < settings.mifid_eps
    close = int((generated < settings.mifid_eps).sum())
    head = (f"mean over {len(generated)} generated images of the smallest 1 - |cos| to a training image is {d:.3g}: "
            f"{'below' if paper else 'not below'} eps = {settings.mifid_eps:g}, so Bai et al.'s rule "
            f"{'fires' if paper else 'does not fire'}")
    if reference is None or len(reference) == 0:
        return DetectorResult("mifid", "memorization_distance", d, settings.mifid_eps, None, False, close,
                              head + "; no held-out distances to compare with, so the detector does not fire")
    p = float(sps.mannwhitneyu(generated, reference, alternative="less").pvalue)
    fired = paper and p <= settings.alpha
    reason = (f"{head}; the same mean over {len(reference)} held-out images is {float(np.mean(reference)):.3g} and "
              f"generated images are {'' if p <= settings.alpha else 'not '}closer to train than held-out ones "
              f"(one-sided Mann-Whitney p = {p:.2g}, alpha = {settings.alpha:g})")
    return DetectorResult("mifid", "memorization_distance", d, settings.mifid_eps, p, fired, close, reason)


def birthday_test(ids: list[str], generated: np.ndarray, real: np.ndarray, settings: StatsSettings, *,
                  metric: str = "l2", held_out: np.ndarray | None = None) -> tuple[DetectorResult, pa.Table]:
    """The birthday-paradox test; returns its row and each generated batch's closest pair (BIRTHDAY_SCHEMA).

    Args:
        ids: the generated images' ids, in the order of `generated`.
        generated: [m, D] generated features; batches are consecutive runs of s after a seeded shuffle.
        real: [r, D] features of real images (val, and a sample of train) for the reference batches.
        held_out: [h, D] features of held-out images for the pair count (default: real).
    """
    m, r = len(generated), len(real)
    s = min(settings.birthday_size, m, r)
    if s < 2:
        return skipped("birthday", f"needs at least 2 generated and 2 real images (has {m} and {r})"), \
            BIRTHDAY_SCHEMA.empty_table()
    rng = np.random.default_rng(settings.seed)
    gen_order, real_order = rng.permutation(m), rng.permutation(r)
    g_batches = [gen_order[i:i + s] for i in range(0, m - s + 1, s)]
    r_batches = [real_order[i:i + s] for i in range(0, r - s + 1, s)]
    g_pairs = [_closest_pair(generated[b], metric) for b in g_batches]
    r_min = min(_closest_pair(real[b], metric)[2] for b in r_batches)
    threshold = settings.birthday_threshold if settings.birthday_threshold is not None else r_min
    dup = [d < threshold for _, _, d in g_pairs]
    rate = sum(dup) / len(g_batches)
    held_out = real if held_out is None or len(held_out) < 2 else held_out
    count, expected, p = pair_count_test(generated[gen_order[:BIRTHDAY_POOL]],
                                         held_out[rng.permutation(len(held_out))[:BIRTHDAY_POOL]], metric, rng)
    fired = p <= settings.alpha
    support = _support(s, rate, len(g_batches))
    implied = f"; implied support about {support:.3g} images (s^2 = {s * s})" if rate > 0 else ""
    reason = (f"{sum(dup)} of {len(g_batches)} batches of {s} generated images hold a near-duplicate pair "
              f"(distance < {threshold:.3g}){implied}; {count} of the pool's closest pairs join two generated "
              f"images, {expected:.3g} expected if G samples like the data (permutation p = {p:.2g} "
              f"{'<=' if fired else '>'} alpha = {settings.alpha:g})")
    pairs = pa.table({
        "batch": pa.array(range(len(g_batches)), pa.int32()),
        "id_a": pa.array([ids[b[i]] for b, (i, _, _) in zip(g_batches, g_pairs)], pa.string()),
        "id_b": pa.array([ids[b[j]] for b, (_, j, _) in zip(g_batches, g_pairs)], pa.string()),
        "distance": pa.array([d for _, _, d in g_pairs], pa.float64()),
        "duplicate": pa.array(dup, pa.bool_()),
    }, schema=BIRTHDAY_SCHEMA).sort_by("distance")
    return DetectorResult("birthday", "duplicate_rate", rate, threshold, p, fired, int(sum(dup)), reason), pairs


def pair_count_test(generated: np.ndarray, real: np.ndarray, metric: str,
                    rng: np.random.Generator) -> tuple[int, float, float]:
    """The birthday test's pair count (see the module docstring): (generated-generated pairs among the pool's K
    closest, their expectation under exchangeable labels, the permutation p-value)."""
    pool = np.concatenate([generated, real])  # [n, D]
    n, m = len(pool), len(generated)
    a, b = _closest_pairs(pool, metric, k=max(10, n // 30))
    is_generated = np.arange(n) < m
    count = int(np.sum(is_generated[a] & is_generated[b]))
    relabelled = np.argsort(rng.random((BIRTHDAY_PERMUTATIONS, n)), axis=1) < m  # [P, n]: m random "generated"
    counts = np.sum(relabelled[:, a] & relabelled[:, b], axis=1)  # [P]
    expected = len(a) * m * (m - 1) / (n * (n - 1))
    return count, expected, float((1 + np.sum(counts >= count)) / (1 + BIRTHDAY_PERMUTATIONS))


def _closest_pairs(x: np.ndarray, metric: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (a, b), a < b, of the k closest pairs of x [n, D], computed in row blocks so that memory stays
    near 2^25 numbers whatever n, D and the metric (l1 broadcasts [rows, n, D])."""
    n = len(x)
    rows = max(1, min(512, 2**25 // max(1, n * x.shape[1])))
    best_d, best_a, best_b = np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64)
    for start in range(0, n, rows):
        d = pairwise(x[start:start + rows], x, metric)  # [rows, n]
        i, j = np.nonzero(np.arange(n)[None, :] > np.arange(start, start + len(d))[:, None])
        cand_d = np.concatenate([best_d, d[i, j]])
        cand_a, cand_b = np.concatenate([best_a, i + start]), np.concatenate([best_b, j])
        keep = np.argpartition(cand_d, k - 1)[:k] if len(cand_d) > k else np.arange(len(cand_d))
        best_d, best_a, best_b = cand_d[keep], cand_a[keep], cand_b[keep]
    return best_a, best_b


def _closest_pair(x: np.ndarray, metric: str) -> tuple[int, int, float]:
    """(i, j, distance) of the closest pair of rows of x [s, D], i < j."""
    d = pairwise(x, x, metric)
    d[np.tril_indices(len(x))] = np.inf
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    if metric == "l2":  # direct, not the cancelling matmul form
        return int(i), int(j), float(np.linalg.norm(np.asarray(x[i], np.float64) - x[j]))
    return int(i), int(j), float(d[i, j])


def _support(s: int, rate: float, batches: int) -> float:
    """Support size N with P(a collision among s uniform draws) = rate: 1 - exp(-s(s-1)/2N) = rate."""
    if rate <= 0:
        return math.inf
    rate = min(rate, 1.0 - 0.5 / batches)  # every batch collided: the estimate is an upper bound
    return s * (s - 1) / (2.0 * -math.log1p(-rate))
