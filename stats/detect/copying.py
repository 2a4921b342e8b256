"""The C_T data-copying test of Meehan, Chaudhuri and Dasgupta (AISTATS 2020), on features.

The instance space is cut into cells by k-means on the training features (scipy.cluster.vq.kmeans2, seeded).
In each cell pi, the distances from the generated images Q_m(pi) and from the held-out images P_n(pi) to
their nearest training image in the same cell are compared by the Mann-Whitney U of the generated
distances, Z-scored under the null (mean nm/2 with the paper's 0.5 continuity correction, variance
nm(n+m+1)/12):

    Z_U(pi) = (U - nm/2 + 0.5) / sqrt(nm(n+m+1)/12)        < 0: generated images sit closer to train
    C_T = sum_{pi kept} P_n(pi) Z_U(pi) / sum_{pi kept} P_n(pi)

Cells with fewer than ct_min_generated generated images (tau = 20/m in the paper) are dropped. C_T < 0
means data-copying, > 0 underfitting. Meehan et al. read C_T by eye (their two-moons figures reach about
-17 and +16); we add a p-value: in-cell Z_U are independent and about N(0, 1) under the null, so C_T is
about N(0, sum w^2) with the normalized weights w, and the detector fires at Phi(C_T / sqrt(sum w^2)) <= alpha.
Cells without held-out or training images cannot be scored and are dropped too (their code raises).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from scipy import stats as sps
from scipy.cluster.vq import kmeans2

from stats.detect.detectors import DetectorResult, skipped
from stats.detect.nearest import pairwise, nearest
from stats.settings import StatsSettings

CELLS_SCHEMA = pa.schema([
    ("cell", pa.int32()),
    ("n_train", pa.int64()),
    ("n_val", pa.int64()),
    ("n_generated", pa.int64()),
    ("val_mass", pa.float64()),  # P_n(pi), the cell's weight
    ("z_u", pa.float64()),  # null when the cell cannot be scored
    ("kept", pa.bool_()),
])


def z_u(generated: np.ndarray, held_out: np.ndarray) -> float:
    """Meehan et al.'s Z-scored Mann-Whitney U of generated vs held-out nearest-train distances."""
    m, n = len(generated), len(held_out)
    u = sps.mannwhitneyu(generated, held_out, alternative="less").statistic  # U of the generated sample
    return float((u - (n * m / 2.0 - 0.5)) / np.sqrt(n * m * (n + m + 1) / 12.0))


def cells(train: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means centroids [k', D] of the training features (empty clusters removed), seeded."""
    data = np.asarray(train, np.float64)
    k = max(1, min(k, len(data)))
    centroids, labels = kmeans2(data, k, seed=seed, minit="++")
    used = np.unique(labels)
    return centroids[used]


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centroid (L2, as k-means)."""
    if len(x) == 0:
        return np.zeros(0, np.int64)
    return np.concatenate([pairwise(x[i:i + 4096], centroids, "l2").argmin(axis=1) for i in range(0, len(x), 4096)])


def ct_test(train: np.ndarray, held_out: np.ndarray, generated: np.ndarray, settings: StatsSettings, *,
            metric: str = "l2") -> tuple[DetectorResult, pa.Table]:
    """C_T and its per-cell table (CELLS_SCHEMA); train, held_out, generated are [N, D] features.

    Raises nothing on small inputs: a C_T with no cell to score is a row that says why and does not fire."""
    if len(train) < 2 or len(held_out) == 0 or len(generated) == 0:
        return skipped("ct", f"needs train, held-out and generated features (has {len(train)}, {len(held_out)}, "
                             f"{len(generated)})"), CELLS_SCHEMA.empty_table()
    rng = np.random.default_rng(settings.seed)
    if len(train) > settings.ct_max_train:
        train = train[np.sort(rng.choice(len(train), settings.ct_max_train, replace=False))]
    centroids = cells(train, settings.ct_cells, settings.seed)
    t_cell, p_cell, q_cell = assign(train, centroids), assign(held_out, centroids), assign(generated, centroids)
    n, rows = len(held_out), []
    for c in range(len(centroids)):
        t, p, q = train[t_cell == c], held_out[p_cell == c], generated[q_cell == c]
        kept = len(q) >= settings.ct_min_generated and len(p) > 0 and len(t) > 0
        z = z_u(nearest(q, t, metric), nearest(p, t, metric)) if kept else None
        rows.append({"cell": c, "n_train": len(t), "n_val": len(p), "n_generated": len(q), "val_mass": len(p) / n,
                     "z_u": z, "kept": kept})
    table = pa.Table.from_pylist(rows, schema=CELLS_SCHEMA)
    kept = [r for r in rows if r["kept"]]
    if not kept:
        return skipped("ct", f"no cell of {len(centroids)} has {settings.ct_min_generated} generated images "
                             "(ct_min_generated) "
                             "and held-out images; lower ct_cells or add generated images"), table
    w = np.array([r["val_mass"] for r in kept])
    z = np.array([r["z_u"] for r in kept])
    w = w / w.sum()
    ct = float(w @ z)
    p = float(sps.norm.cdf(ct / np.sqrt((w**2).sum())))
    fired = p <= settings.alpha
    sign = "negative: generated images sit closer to their training images than held-out images do" if ct < 0 \
        else "not negative"
    reason = (f"C_T = {ct:.3g} over {len(kept)} of {len(centroids)} cells ({sign}); p = {p:.2g} "
              f"{'<=' if fired else '>'} alpha = {settings.alpha:g} (Z_U of cells about N(0, 1) under no copying)")
    return DetectorResult("ct", "C_T", ct, 0.0, p, fired, len(kept), reason), table
