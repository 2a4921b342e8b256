"""Shared histogram bins: cover every value, log-spaced across decades, counts sum to sizes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from stats import StatsSettings, reduce
from stats.histograms import histogram_table, shared_edges


def sorted_splits(**splits) -> dict[str, np.ndarray]:
    return {k: np.sort(np.asarray(v, dtype=np.float64)) for k, v in splits.items()}


def check_counts(errors: dict[str, np.ndarray], bins: int) -> pa.Table:
    table = histogram_table(errors, bins)
    edges, _ = shared_edges(errors, bins)
    for split, x in errors.items():
        mine = table.filter(pc.equal(table.column("split"), split))
        counts = mine.column("count").to_numpy()
        assert counts.sum() == len(x)  # nothing dropped off the ends
        # numpy's histogram uses the same convention: [e_i, e_i+1), the last bin closed.
        assert counts.tolist() == np.histogram(x, bins=edges)[0].tolist()
        assert mine.column("fraction").to_numpy() == pytest.approx(counts / len(x))
        assert mine.column("lower").to_numpy()[0] <= x.min() and mine.column("upper").to_numpy()[-1] >= x.max()
    return table


def test_log_spaced_bins_when_values_span_decades():
    rng = np.random.default_rng(0)
    errors = sorted_splits(train=rng.lognormal(-4, 1, 500), val=rng.lognormal(-3, 1, 400), generated=rng.lognormal(-9, 1, 100))
    edges, scale = shared_edges(errors, 30)
    assert scale == "log" and len(edges) == 31
    assert edges[0] == min(x.min() for x in errors.values()) and edges[-1] == max(x.max() for x in errors.values())
    assert np.allclose(np.diff(np.log(edges)), np.log(edges[-1] / edges[0]) / 30)
    table = check_counts(errors, 30)
    assert set(table.column("scale").to_pylist()) == {"log"}


def test_linear_bins_within_a_decade():
    errors = sorted_splits(train=[0.2, 0.3, 0.5], val=[0.25, 0.9, 1.5])
    edges, scale = shared_edges(errors, 10)
    assert scale == "linear" and np.allclose(np.diff(edges), (1.5 - 0.2) / 10)
    check_counts(errors, 10)


def test_zeros_get_their_own_first_bin_before_log_bins():
    errors = sorted_splits(train=[0.0, 0.0, 1e-5, 1e-3], val=[1e-2, 0.5, 1.0])
    edges, scale = shared_edges(errors, 8)
    assert scale == "log" and edges[0] == 0.0 and edges[1] == 1e-5 and edges[-1] == 1.0
    table = check_counts(errors, 8)
    train = table.filter(pc.equal(table.column("split"), "train")).column("count").to_pylist()
    assert train[0] == 2  # the two zeros, and only them


def test_single_distinct_value_and_extreme_outliers_are_covered():
    check_counts(sorted_splits(train=[0.3, 0.3, 0.3]), 5)
    check_counts(sorted_splits(train=[0.0]), 5)
    check_counts(sorted_splits(train=[1e-12, 0.01, 0.02], val=[0.015, 1e300]), 50)


def test_reduce_histograms_sum_to_split_sizes_and_skip_empty_splits():
    rng = np.random.default_rng(1)
    sizes = {"train": 37, "val": 1, "generated": 12}
    ids, names, errors = [], [], []
    for split, n in sizes.items():
        ids += [f"{split}{i}" for i in range(n)]
        names += [split] * n
        errors += rng.lognormal(-4, 2, n).tolist()
    table = pa.table({"image_id": ids, "split": names, "error": errors})
    reduction = reduce(table, pa.table({"split": ["holdout"]}), settings=StatsSettings(bins=17))
    histograms = reduction.histograms
    totals = histograms.group_by("split").aggregate([("count", "sum")]).to_pylist()
    assert {r["split"]: r["count_sum"] for r in totals} == sizes  # holdout has rejects only
    assert histograms.num_rows == 17 * 3
    assert histograms.column("bin").to_pylist()[:17] == list(range(17))
