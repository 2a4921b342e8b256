"""Per-image p-values, the tail model, BH q-values and the partial-memorization tests."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats as sps

from stats import reduce
from stats.ranking import RANKING_SCHEMA, fit_tail, gini_test, low_count_test, pvalues, rank_pair, simes, tail_size
from tests._tables import table_of

# Reference errors whose logs are -19..0: the 11 lowest (k = 10) sit 10, 9, ..., 1 below u = e^-9, so S = 55.
REFERENCE = np.exp(-np.arange(19, -1, -1.0))


def test_tail_model_reference_values():
    fit = fit_tail(REFERENCE)
    assert fit.k == tail_size(20) == 10 and fit.threshold == pytest.approx(math.exp(-9)) and fit.total == pytest.approx(55)
    assert fit.gof_statistic == pytest.approx(1 / 3)  # evenly spaced distances: lighter than exponential
    assert fit.accepted
    p, in_tail = pvalues(np.array([math.exp(-20), math.exp(-5), math.exp(-9.5), 0.0, 2.0]), REFERENCE, fit)
    assert p[0] == pytest.approx(11 / 21 * 1.2**-10)  # d = 11: (k+1)/(n+1) (1 + d/S)^-k
    assert p[1] == pytest.approx(16 / 21)  # inside the sample: empirical, 15 reference errors <= it
    assert p[2] == pytest.approx(11 / 21 * (1 + 0.5 / 55) ** -10)
    assert p[3] == 0.0 and p[4] == 1.0
    assert in_tail.tolist() == [True, False, True, True, False]


def test_gini_statistic_is_one_half_for_exponential_data():
    rng = np.random.default_rng(0)
    statistics = [gini_test(rng.exponential(3.0, 50))[0] for _ in range(400)]
    assert np.mean(statistics) == pytest.approx(0.5, abs=0.01)
    assert gini_test(rng.pareto(1.5, 200) + 1e-9)[1] < 0.01  # heavier than exponential: rejected


def test_heavy_tailed_or_degenerate_references_fall_back_to_empirical_ranks():
    rng = np.random.default_rng(1)
    heavy = np.sort(np.exp(np.clip(rng.standard_cauchy(2000), -300, 300)))  # log-errors with Cauchy tails
    fit = fit_tail(heavy)
    assert not fit.accepted and "heavier than exponential" in fit.note
    p, in_tail = pvalues(np.array([1e-300]), heavy, fit)
    assert p[0] == pytest.approx(1 / 2001) and not in_tail.any()
    zeros = np.sort(np.concatenate([np.zeros(3), rng.random(40)]))
    assert not fit_tail(zeros).accepted and fit_tail(zeros).note == "the reference has errors of 0"
    assert fit_tail(np.arange(1.0, 11.0)) is None  # too few for a tail


def test_tail_p_values_are_calibrated_under_the_null():
    """Under exchangeability an image below every val error happens with probability 1/(n+1); the tail model
    must not make such images look extreme. P(p <= t) <= t, for lognormal errors (lighter tail than the
    model) and for a power law at 0 (exactly the model)."""
    rng = np.random.default_rng(2)
    trials, n = 4000, 40
    for draw in (lambda size: rng.lognormal(-4, 0.7, size), lambda size: rng.gamma(0.5, 0.02, size)):
        ps = np.empty(trials)
        for i in range(trials):
            reference = np.sort(draw(n))
            ps[i] = pvalues(draw(1), reference, fit_tail(reference))[0][0]
        for t in (0.002, 0.01, 0.03):
            assert np.mean(ps <= t) <= t + 3 * math.sqrt(t / trials), t


def test_bh_over_10k_null_images_rarely_flags_any():
    """n_train = n_val = 10^4: about one train image lies below all val errors by chance; BH at 5% must flag
    something in at most ~5% of runs (its level under the global null)."""
    rng = np.random.default_rng(3)
    runs, any_flag = 40, 0
    for _ in range(runs):
        table, fields = rank_pair("train", "val", pa.array([str(i) for i in range(10_000)]),
                                  rng.gamma(0.5, 0.02, 10_000), np.sort(rng.gamma(0.5, 0.02, 10_000)),
                                  fdr=0.05, low_quantile=0.01)
        any_flag += fields["flagged"] > 0
    assert any_flag <= 6  # 2 expected; 6 has probability < 2% if the level holds


def test_ranking_table_is_sorted_with_bh_q_values():
    rng = np.random.default_rng(4)
    errors = rng.lognormal(-4, 0.7, 50)
    errors[[7, 8]] = [1e-6, 2e-6]
    ids = pa.array([f"img-{i}" for i in range(50)])
    table, fields = rank_pair("train", "val", ids, errors, np.sort(rng.lognormal(-4, 0.7, 60)), fdr=0.05,
                              low_quantile=0.01)
    assert table.schema.equals(RANKING_SCHEMA) and table.num_rows == 50
    rows = table.to_pylist()
    assert [r["rank"] for r in rows] == list(range(1, 51))
    assert [r["image_id"] for r in rows[:2]] == ["img-7", "img-8"]
    p = np.array([r["p_value"] for r in rows])
    assert np.all(np.diff(p) >= 0)
    assert np.allclose([r["q_value"] for r in rows], sps.false_discovery_control(p, method="bh"))
    assert [r["flagged"] for r in rows] == [r["q_value"] <= 0.05 for r in rows]
    assert fields["flagged"] == sum(r["flagged"] for r in rows) >= 2
    assert fields["images_pvalue"] == pytest.approx(simes(p))
    assert rows[0]["p_method"] == "tail"


def test_simes_reference_value():
    assert simes(np.array([0.01, 0.02, 0.5])) == pytest.approx(0.03)
    assert simes(np.array([0.9])) == pytest.approx(0.9)


def test_low_count_p_value_is_exact():
    """Against the full permutation distribution of 4 a-errors and 5 b-errors."""
    a, b = np.array([0.1, 0.2, 0.35, 0.9]), np.array([0.3, 0.4, 0.5, 0.6, 0.7])
    pooled = np.concatenate([a, b])
    for quantile in (0.1, 0.3, 0.5):
        j, count, expected, p = low_count_test(a, b, quantile)
        assert j == math.ceil(quantile * 5)
        as_extreme = 0
        splits = list(itertools.combinations(range(9), 4))
        for chosen in splits:
            xa = np.sort(pooled[list(chosen)])
            xb = np.sort(np.delete(pooled, list(chosen)))
            as_extreme += np.sum(xa < xb[j - 1]) >= count
        assert p == pytest.approx(as_extreme / len(splits))
        assert expected == pytest.approx(j * 4 / 6)


def test_ranking_parquet_through_reduce_has_one_row_per_train_image():
    rng = np.random.default_rng(5)
    reduction = reduce(table_of(train=rng.lognormal(-4, 0.7, 30), val=rng.lognormal(-4, 0.7, 25),
                                generated=rng.lognormal(-11, 0.5, 10)))
    ranking = reduction.ranking
    assert ranking.num_rows == 30 and set(ranking.column("split").to_pylist()) == {"train"}
    assert sorted(ranking.column("image_id").to_pylist()) == sorted(f"train-{i}" for i in range(30))
    assert b"memaudit.stats" in ranking.schema.metadata
    test = reduction.tests.to_pylist()[0]
    assert test["tail_k"] == 10 and test["tail_model"] in ("exponential", "empirical")
    assert test["low_rank"] == 1 and test["images_pvalue"] is not None
    generated = reduction.tests.to_pylist()[1]
    assert generated["split_a"] == "generated" and generated["images_pvalue"] is None
