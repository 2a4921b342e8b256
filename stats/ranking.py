"""Per-image memorization ranking and the partial-memorization tests (DESIGN.md §2).

A generator usually copies some of its training images, not all, which moves neither the
median nor the KS statistic much. So every image of the memorized split a (train) gets a
p-value for "recovered better than an unseen image would be", computed against the
errors of the reference split b (val):

- inside the reference sample, the empirical p-value (#{b <= e} + 1) / (n_b + 1), exact
  under exchangeability;
- below the reference's k+1-th smallest error u, a model of b's lower tail, because the
  empirical p-value cannot go below 1 / (n_b + 1), and 10 copies among 200 images could
  then never pass Benjamini-Hochberg. On the log scale the k lowest reference errors'
  distances below u, x_1..x_k, are modelled as exponential (an error CDF that behaves like
  a power of the error near 0; lognormal errors have lighter tails, so the model is
  conservative for them). An a-image at distance d below u gets

      p = (k + 1) / (n_b + 1) * (1 + d / S)^(-k),        S = x_1 + ... + x_k,

  which is exactly uniform on [0, (k+1)/(n_b+1)] under the model, including the
  uncertainty of the fitted scale: given that an a-error falls below u, it and the k
  reference errors are exchangeable draws from the tail, and d / (d + S) is Beta(1, k).
  A plug-in exponential tail would be anti-conservative at small k.
- Goodness of fit: the Gini test of exponentiality (Gail and Gastwirth 1978) on x_1..x_k,
  one-sided against tails heavier than exponential, the direction in which the model would
  make images look more extreme than they are. When it rejects at TAIL_GOF_LEVEL, or the
  reference has fewer than MIN_TAIL + 1 errors, zeros or ties at the bottom, every image
  gets the empirical p-value.

Benjamini-Hochberg q-values (as scipy.stats.false_discovery_control) over a's images flag
those with q <= fdr. Two tests of "some a-images are memorized" join the verdict:

- "images": Simes' test over the per-image p-values, min_i m p_(i) / i (valid under the
  positive dependence that a shared reference sample induces); it fires exactly when
  Benjamini-Hochberg at the verdict's level flags at least one image.
- "low_count": the number K of a-errors below the j-th smallest b error,
  j = ceil(low_quantile * n_b). Under exchangeability K >= x exactly when at least x of the
  x + j - 1 smallest pooled errors are a's, a hypergeometric event, so its p-value is
  exact and uses no model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats as sps

MIN_TAIL = 10  # fewest reference errors the tail model is fitted on
TAIL_GOF_LEVEL = 0.10  # the exponential tail is rejected when the Gini test's p-value is below this

RANKING_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # the memorized split a (train)
        pa.field("reference", pa.string(), nullable=False),  # the reference split b (val)
        pa.field("error", pa.float64(), nullable=False),
        pa.field("p_value", pa.float64(), nullable=False),  # H1: recovered better than a b-image
        pa.field("q_value", pa.float64(), nullable=False),  # Benjamini-Hochberg over the pair's a-images
        pa.field("flagged", pa.bool_(), nullable=False),  # q_value <= fdr
        pa.field("rank", pa.int64(), nullable=False),  # 1 = most likely memorized
        pa.field("p_method", pa.string(), nullable=False),  # "tail" (model) | "empirical"
    ]
)

# Columns of tests.parquet filled for the memorization pairs (null for the generated pairs).
PARTIAL_FIELDS = [
    pa.field("tail_model", pa.string()),  # "exponential" | "empirical" (no model, or the fit was rejected)
    pa.field("tail_k", pa.int64()),  # reference errors in the fitted tail
    pa.field("tail_threshold", pa.float64()),  # u: the (k+1)-th smallest reference error
    pa.field("tail_scale", pa.float64()),  # mean distance below u on the log scale (S / k)
    pa.field("tail_gof_statistic", pa.float64()),  # Gini statistic; 1/2 for an exponential tail
    pa.field("tail_gof_pvalue", pa.float64()),  # one-sided: the tail is heavier than exponential
    pa.field("images_pvalue", pa.float64()),  # Simes over the per-image p-values
    pa.field("min_pvalue", pa.float64()),
    pa.field("flagged", pa.int64()),  # a-images with q_value <= fdr
    pa.field("low_rank", pa.int64()),  # j: the count is of a-errors below the j-th smallest b error
    pa.field("low_count", pa.int64()),  # K
    pa.field("low_expected", pa.float64()),  # E[K] under exchangeability: j n_a / (n_b + 1)
    pa.field("low_count_pvalue", pa.float64()),  # exact hypergeometric P(K >= observed)
]


@dataclass(frozen=True)
class TailFit:
    """The exponential model of the reference's lower tail on the log scale (see module doc)."""

    k: int
    threshold: float  # u as an error (not its log)
    total: float  # S, sum of the k log-distances below u
    gof_statistic: float
    gof_pvalue: float
    accepted: bool
    note: str | None = None


def tail_size(n: int) -> int:
    """k: about 2 sqrt(n) (peaks-over-threshold: k grows, k/n shrinks), at least MIN_TAIL."""
    return min(n - 1, max(MIN_TAIL, round(2 * math.sqrt(n))))


def fit_tail(reference: np.ndarray) -> TailFit | None:
    """Fit the tail model to sorted reference errors; None when there are too few of them."""
    n = len(reference)
    if n < MIN_TAIL + 1:
        return None
    k = tail_size(n)
    lowest = reference[: k + 1]
    if lowest[0] <= 0:
        return TailFit(k, float(lowest[k]), 0.0, math.nan, math.nan, False, "the reference has errors of 0")
    logs = np.log(lowest)
    distances = logs[k] - logs[:k]
    total = float(distances.sum())
    if total <= 0:
        return TailFit(k, float(lowest[k]), 0.0, math.nan, math.nan, False, "the reference's lowest errors are tied")
    statistic, pvalue = gini_test(distances)
    accepted = pvalue >= TAIL_GOF_LEVEL
    note = None if accepted else (
        f"the reference's lower tail is heavier than exponential on the log scale (Gini test p = {pvalue:.2g} "
        f"< {TAIL_GOF_LEVEL:g}); per-image p-values are empirical"
    )
    return TailFit(k, float(lowest[k]), total, statistic, pvalue, accepted, note)


def gini_test(x: np.ndarray) -> tuple[float, float]:
    """Gini statistic of x > 0 and its one-sided p-value against heavier-than-exponential tails.

    G = sum_{i<j} |x_i - x_j| / ((k - 1) sum x) is 1/2 in expectation for exponential data
    whatever the scale, larger for heavier tails; (G - 1/2) sqrt(12 (k - 1)) is about
    standard normal under exponentiality (Gail and Gastwirth 1978).
    """
    k = len(x)
    xs = np.sort(x)
    weights = 2 * np.arange(1, k + 1) - k - 1
    statistic = float(np.dot(weights, xs) / ((k - 1) * xs.sum()))
    z = (statistic - 0.5) * math.sqrt(12 * (k - 1))
    return statistic, float(sps.norm.sf(z))


def pvalues(errors: np.ndarray, reference: np.ndarray, fit: TailFit | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-image p-values of errors against sorted reference errors, and whether each came from the tail."""
    n = len(reference)
    p = (np.searchsorted(reference, errors, side="right") + 1) / (n + 1)
    in_tail = np.zeros(len(errors), dtype=bool)
    if fit is not None and fit.accepted:
        in_tail = errors < fit.threshold
        with np.errstate(divide="ignore"):
            distance = math.log(fit.threshold) - np.log(errors[in_tail])  # inf for an error of 0: p = 0
        p[in_tail] = (fit.k + 1) / (n + 1) * (1.0 + distance / fit.total) ** (-fit.k)
    return p, in_tail


def simes(p: np.ndarray) -> float:
    """Simes' p-value of the global null over p: min_i m p_(i) / i."""
    m = len(p)
    return float(min(1.0, np.min(np.sort(p) * m / np.arange(1, m + 1))))


def low_count_test(a: np.ndarray, b: np.ndarray, low_quantile: float) -> tuple[int, int, float, float]:
    """(j, K, E[K], exact p-value) for K = #{a < j-th smallest b}; a and b sorted."""
    n_a, n_b = len(a), len(b)
    j = max(1, math.ceil(low_quantile * n_b))
    count = int(np.searchsorted(a, b[j - 1], side="left"))
    expected = j * n_a / (n_b + 1)
    pvalue = 1.0 if count == 0 else float(sps.hypergeom.sf(count - 1, n_a + n_b, n_a, count + j - 1))
    return j, count, expected, min(1.0, max(0.0, pvalue))


def rank_pair(
    a: str,
    b: str,
    ids: pa.Array,
    errors: np.ndarray,
    reference: np.ndarray,
    *,
    fdr: float,
    low_quantile: float,
) -> tuple[pa.Table, dict[str, object]]:
    """The ranking of a's images against b, and the pair's PARTIAL_FIELDS for tests.parquet.

    The p-value does not decrease with the error (both the empirical and the tail p-value),
    so ranking by p-value is ranking by error; ids break exact ties, so the ranking does not
    depend on the row order. Working on sorted errors also keeps the binary searches of 10
    million errors in cache (unsorted, they take ten times longer).

    Args:
        ids, errors: a's image ids (strings) and errors, in the same (any) order.
        reference: b's errors, sorted.
    """
    order = total_order(errors, ids)
    ordered = errors[order]
    fit = fit_tail(reference)
    p, in_tail = pvalues(ordered, reference, fit)
    q = bh_sorted(p)
    n = len(p)
    method = pa.DictionaryArray.from_arrays(pa.array(in_tail.astype(np.int8)), pa.array(["empirical", "tail"]))
    table = pa.table(
        {
            "image_id": ids.take(pa.array(order)),
            "split": pa.array([a] * n, pa.string()),
            "reference": pa.array([b] * n, pa.string()),
            "error": pa.array(ordered, pa.float64()),
            "p_value": pa.array(p, pa.float64()),
            "q_value": pa.array(q, pa.float64()),
            "flagged": pa.array(q <= fdr, pa.bool_()),
            "rank": pa.array(np.arange(1, n + 1, dtype=np.int64)),
            "p_method": method.cast(pa.string()),
        },
        schema=RANKING_SCHEMA,
    )
    return table, _partial_fields(b, p, q, fit, ordered, reference, fdr=fdr, low_quantile=low_quantile)


def total_order(errors: np.ndarray, ids: pa.Array) -> np.ndarray:
    """Positions sorting by error, ties by id (a stable numpy sort; pyarrow's sort only when errors tie)."""
    order = np.argsort(errors, kind="stable")
    ordered = errors[order]
    if len(ordered) > 1 and np.any(ordered[1:] == ordered[:-1]):
        keys = pa.table({"error": errors, "id": ids})
        order = pc.sort_indices(keys, sort_keys=[("error", "ascending"), ("id", "ascending")]).to_numpy()
    return order


def bh_sorted(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of ascending p-values: min over j >= i of m p_(j) / j, capped at 1.

    What scipy.stats.false_discovery_control(p, method="bh") returns, without sorting again.
    """
    m = len(p)
    if not m:
        return p
    scaled = p * m / np.arange(1, m + 1)
    return np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)


def _partial_fields(b: str, p: np.ndarray, q: np.ndarray, fit: TailFit | None, ordered: np.ndarray,
                    reference: np.ndarray, *, fdr: float, low_quantile: float) -> dict[str, object]:
    """The pair's PARTIAL_FIELDS, and a "tail_note" for the tests row's note."""
    j, count, expected, count_p = low_count_test(ordered, reference, low_quantile)
    fields: dict[str, object] = {
        "tail_model": "exponential" if fit is not None and fit.accepted else "empirical",
        "images_pvalue": simes(p),
        "min_pvalue": float(p[0]),
        "flagged": int((q <= fdr).sum()),
        "low_rank": j,
        "low_count": count,
        "low_expected": expected,
        "low_count_pvalue": count_p,
    }
    if fit is None:
        fields["tail_note"] = f"split {b!r} has fewer than {MIN_TAIL + 1} errors: no tail model, empirical p-values"
        return fields
    fields.update(
        tail_k=fit.k,
        tail_threshold=fit.threshold,
        tail_scale=fit.total / fit.k if fit.total > 0 else None,
        tail_gof_statistic=None if math.isnan(fit.gof_statistic) else fit.gof_statistic,
        tail_gof_pvalue=None if math.isnan(fit.gof_pvalue) else fit.gof_pvalue,
        tail_note=fit.note,
    )
    return fields
