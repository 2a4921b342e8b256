"""Pairwise tests against scipy directly, and the exact bootstrap of the median."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats as sps

from stats import StatsSettings, reduce
from tests._tables import table_of
from stats.compare import bootstrap_gaps, bootstrap_medians, compare_pair, interval, mann_whitney_sorted, pairs



def test_pairs_are_train_val_then_each_real_split_against_generated():
    assert pairs(["train", "val", "holdout", "generated"]) == [
        ("train", "val"),
        ("generated", "train"),
        ("generated", "val"),
        ("generated", "holdout"),
    ]
    assert pairs(["train", "holdout"]) == []


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (np.random.default_rng(0).lognormal(-4, 0.5, 200), np.random.default_rng(1).lognormal(-3.8, 0.5, 250)),
        (np.array([0.1, 0.1, 0.2, 0.2, 0.3, 0.3]), np.array([0.2, 0.2, 0.3, 0.4])),  # ties, even counts
        (np.array([0.05]), np.array([0.1, 0.2, 0.3])),  # a split of one image
        (np.array([0.01, 0.02, 0.03, 50.0]), np.array([0.02, 0.03, 0.04, 0.05, 1e4])),  # outliers
    ],
)
def test_values_match_scipy_and_numpy(a, b):
    row = compare_pair("train", "val", np.sort(a), np.sort(b), StatsSettings(bootstrap=200))
    ks = sps.ks_2samp(a, b)
    ks_smaller = sps.ks_2samp(a, b, alternative="greater")
    mw = sps.mannwhitneyu(a, b, alternative="two-sided")
    assert row["ks_statistic"] == pytest.approx(ks.statistic)
    assert row["ks_pvalue"] == pytest.approx(ks.pvalue)
    assert row["ks_location"] == ks.statistic_location
    assert row["ks_one_sided_statistic"] == pytest.approx(ks_smaller.statistic)
    assert row["ks_one_sided_pvalue"] == pytest.approx(ks_smaller.pvalue)
    assert row["mw_u"] == pytest.approx(mw.statistic)
    assert row["mw_pvalue"] == pytest.approx(mw.pvalue)
    assert row["mre_a"] == np.median(a) and row["mre_b"] == np.median(b)
    assert row["mre_gap"] == pytest.approx((np.median(b) - np.median(a)) / np.median(b))
    assert row["gap_ci_low"] <= row["gap_ci_high"]
    assert (row["n_a"], row["n_b"], row["bootstrap"]) == (len(a), len(b), 200)


def test_one_sided_test_and_gap_sign_follow_which_split_is_smaller():
    rng = np.random.default_rng(2)
    small, large = np.sort(rng.lognormal(-4, 0.3, 300)), np.sort(rng.lognormal(-3, 0.3, 300))
    better = compare_pair("train", "val", small, large, StatsSettings(bootstrap=0))
    worse = compare_pair("train", "val", large, small, StatsSettings(bootstrap=0))
    assert better["mre_gap"] > 0 and better["ks_one_sided_pvalue"] < 1e-10
    assert worse["mre_gap"] < 0 and worse["ks_one_sided_pvalue"] > 0.5
    assert worse["ks_pvalue"] < 1e-10  # the two-sided test cannot tell the direction
    assert better["gap_ci_low"] is None  # bootstrap=0: no interval


def test_gap_is_null_with_a_reason_when_reference_mre_is_zero():
    row = compare_pair("train", "val", np.array([0.0, 0.0, 0.1]), np.array([0.0, 0.0, 0.0, 0.2]), StatsSettings())
    assert row["mre_b"] == 0.0
    assert row["mre_gap"] is None and row["gap_ci_low"] is None
    assert "MRE(val) is 0" in row["note"]


def test_empty_split_gives_a_row_with_a_note():
    table = table_of(train=np.array([0.1, 0.2]))
    rejects = pa.table({"split": ["val"]})
    row = reduce(table, rejects).tests.to_pylist()[0]
    assert (row["split_a"], row["split_b"], row["n_b"]) == ("train", "val", 0)
    assert row["ks_pvalue"] is None and "no results" in row["note"]


def test_all_tied_errors_leave_mann_whitney_p_undefined_with_a_note():
    row = compare_pair("train", "val", np.full(5, 0.1), np.full(7, 0.1), StatsSettings(bootstrap=10))
    assert row["ks_statistic"] == 0 and row["ks_pvalue"] == 1.0
    assert row["mw_pvalue"] is None or row["mw_pvalue"] == pytest.approx(1.0)
    assert row["mre_gap"] == 0 and row["gap_ci_low"] == row["gap_ci_high"] == 0


@pytest.mark.parametrize("x", [[1.0, 2.0, 4.0, 8.0], [1.0, 2.0, 2.0, 5.0, 9.0]])
def test_bootstrap_medians_follow_the_exact_bootstrap_distribution(x):
    """Enumerate every resample of a tiny sample and compare frequencies with the sampler."""
    x = np.array(x)
    n = len(x)
    exact = Counter(float(np.median(x[list(c)])) for c in itertools.product(range(n), repeat=n))
    total = n**n
    draws = 200_000
    sampled = Counter(bootstrap_medians(x, draws, np.random.default_rng(7)).tolist())
    assert set(sampled) <= set(exact)
    for value, count in exact.items():
        p = count / total
        assert sampled[value] / draws == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / draws) + 1e-4)


def test_the_gap_interval_agrees_with_a_resampling_bootstrap():
    rng = np.random.default_rng(4)
    a, b = np.sort(rng.lognormal(-4, 0.6, 41)), np.sort(rng.lognormal(-3.7, 0.6, 40))
    gaps, dropped = bootstrap_gaps(a, b, 20_000, np.random.default_rng(5))
    low, high = interval(gaps, 0.95)
    r = np.random.default_rng(6)
    ma = np.median(a[r.integers(0, len(a), (20_000, len(a)))], axis=1)
    mb = np.median(b[r.integers(0, len(b), (20_000, len(b)))], axis=1)
    naive = np.quantile((mb - ma) / mb, [0.025, 0.975])
    assert dropped == 0
    assert low == pytest.approx(naive[0], abs=0.03) and high == pytest.approx(naive[1], abs=0.03)
    gap = (np.median(b) - np.median(a)) / np.median(b)
    assert low < gap < high


def test_bootstrap_is_seeded_and_independent_of_other_splits():
    rng = np.random.default_rng(8)
    base = {"train": rng.random(30), "val": rng.random(30)}
    one = reduce(table_of(**base), settings=StatsSettings(seed=3)).tests.to_pylist()[0]
    again = reduce(table_of(**base, generated=rng.random(10) / 1e3), settings=StatsSettings(seed=3)).tests.to_pylist()[0]
    other = reduce(table_of(**base), settings=StatsSettings(seed=4)).tests.to_pylist()[0]
    assert (one["gap_ci_low"], one["gap_ci_high"]) == (again["gap_ci_low"], again["gap_ci_high"])
    assert (one["gap_ci_low"], one["gap_ci_high"]) != (other["gap_ci_low"], other["gap_ci_high"])


def test_bootstrap_of_one_value_is_that_value():
    assert bootstrap_medians(np.array([0.3]), 5, np.random.default_rng(0)).tolist() == [0.3] * 5


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (np.random.default_rng(9).lognormal(-4, 0.5, 3000), np.random.default_rng(10).lognormal(-3.9, 0.5, 2500)),
        (np.random.default_rng(11).integers(0, 20, 4000) / 100, np.random.default_rng(12).integers(3, 25, 3500) / 100),
        (np.full(50, 0.2), np.concatenate([np.full(30, 0.2), np.full(20, 0.3)])),  # heavy ties
    ],
)
def test_mann_whitney_on_sorted_samples_matches_scipy_asymptotic(a, b):
    u, p = mann_whitney_sorted(np.sort(a), np.sort(b))
    expected = sps.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic")
    assert u == expected.statistic
    assert p == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)


def test_large_pairs_use_the_sorted_mann_whitney():
    from stats.compare import LARGE_SAMPLE

    rng = np.random.default_rng(13)
    a, b = np.sort(rng.random(LARGE_SAMPLE // 2 + 1)), np.sort(rng.random(LARGE_SAMPLE // 2) * 1.01)
    row = compare_pair("train", "val", a, b, StatsSettings(bootstrap=10))
    expected = sps.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic")
    assert row["mw_u"] == expected.statistic and row["mw_pvalue"] == pytest.approx(expected.pvalue, rel=1e-9)
