"""Verdict rules, each way, and the calibration of the decision."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from stats import StatsSettings, reduce
from stats.verdict import holm
from tests._tables import table_of

GENERATED = np.random.default_rng(10).lognormal(-11, 0.5, 200)  # recovered exactly: the search works


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


def with_copies(rng: np.random.Generator, n: int, copies: int) -> tuple[np.ndarray, np.ndarray]:
    """Exchangeable lognormal train and val errors, the first `copies` train errors replaced by exact recoveries."""
    train, val = rng.lognormal(np.log(1e-2), 0.7, n), rng.lognormal(np.log(1e-2), 0.7, n)
    train[:copies] = 10 ** rng.uniform(-5, -4, copies)
    return train, val


def test_holm_adjusts_in_step_down_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([]) == []


def test_a_global_shift_fires_ks_and_the_gap(rng):
    table = table_of(train=rng.lognormal(-4, 0.5, 300), val=rng.lognormal(-3, 0.5, 300), generated=GENERATED)
    reduction = reduce(table)
    verdict = reduction.verdict
    assert verdict.label == "memorization"
    assert {"ks", "mre_gap"} <= set(verdict.rules_fired)
    assert verdict.sentence.startswith("Memorization:")
    assert "one-sided KS p =" in verdict.sentence and "MRE-gap =" in verdict.sentence
    test = reduction.tests.to_pylist()[0]
    assert verdict.numbers["ks_pvalue"] == test["ks_pvalue"]
    assert verdict.numbers["mre_gap"] == pytest.approx(test["mre_gap"])
    assert verdict.numbers["n_train"] == 300 and verdict.numbers["generated_success_rate"] == 1.0
    fired = {t.rule: t for t in verdict.tests if t.fired}
    assert fired["ks"].adjusted <= 0.01 and fired["ks"].adjusted >= fired["ks"].p_value


def test_the_gap_rule_needs_its_interval_not_the_point_estimate():
    # 20 per split, train 15% lower: the paper's rule fires on the point estimate, the interval is wide.
    val = np.linspace(1.0, 2.0, 20) / 100
    reduction = reduce(table_of(train=val * 0.85, val=val, generated=GENERATED))
    test = reduction.tests.to_pylist()[0]
    assert test["mre_gap"] == pytest.approx(0.15) and test["gap_ci_low"] < 0.10
    assert reduction.verdict.label == "no evidence"
    # With enough images the interval clears the threshold.
    rng = np.random.default_rng(3)
    big = rng.lognormal(-4, 0.5, 3000)
    reduction = reduce(table_of(train=rng.lognormal(-4, 0.5, 3000) * 0.7, val=big, generated=GENERATED))
    assert "mre_gap" in reduction.verdict.rules_fired
    assert reduction.tests.to_pylist()[0]["gap_ci_low"] > 0.10


def test_planted_copies_are_flagged_and_named(rng):
    train, val = with_copies(rng, 200, 10)
    reduction = reduce(table_of(train=train, val=val, generated=GENERATED))
    verdict = reduction.verdict
    assert verdict.label == "memorization" and "images" in verdict.rules_fired and "ks" not in verdict.rules_fired
    flagged = verdict.numbers["flagged"]
    assert flagged >= 10
    assert f"{flagged} training images are reproduced far better than any unseen image (q <= 0.05" in verdict.sentence
    top = reduction.ranking.slice(0, 10).column("image_id").to_pylist()
    assert sorted(top) == sorted(f"train-{i}" for i in range(10))  # the copies top the ranking
    assert verdict.numbers["strongest_image"] == top[0]
    assert verdict.numbers["min_val_error"] == pytest.approx(val.min())


def test_no_evidence_when_train_and_val_look_alike(rng):
    # Like DCGAN in the paper's Table 1 (KS p = 0.94, gap 0.018): same distribution.
    table = table_of(train=rng.lognormal(-3, 0.5, 400), val=rng.lognormal(-3, 0.5, 400), generated=GENERATED)
    verdict = reduce(table).verdict
    assert verdict.label == "no evidence" and verdict.rules_fired == ()
    assert verdict.sentence.startswith("No evidence of memorization: no rule fires at family-wise level alpha = 0.01")
    assert any(r.startswith("0 of 400 train images flagged at q <= 0.05 against val; the strongest is") for r in verdict.reasons)
    assert all(not t.fired for t in verdict.tests) and len(verdict.tests) == 4


def test_train_recovered_worse_is_not_memorization(rng):
    table = table_of(train=rng.lognormal(-3, 0.5, 300), val=rng.lognormal(-4, 0.5, 300), generated=GENERATED)
    verdict = reduce(table).verdict
    assert verdict.numbers["ks_pvalue"] < 1e-10 and verdict.numbers["mre_gap"] < 0
    assert verdict.label == "no evidence"
    assert "not recovered better" in verdict.sentence


def test_false_positive_rate_at_64_per_split_is_at_most_alpha():
    # The paper's rule fires here about a quarter of the time; the verdict must not.
    rng = np.random.default_rng(64)
    fired = paper = 0
    for _ in range(150):
        train, val = rng.lognormal(np.log(1e-2), 0.7, 64), rng.lognormal(np.log(1e-2), 0.7, 64)
        reduction = reduce(table_of(train=train, val=val), settings=StatsSettings(bootstrap=300))
        fired += reduction.verdict.label == "memorization"
        test = reduction.tests.to_pylist()[0]
        paper += test["ks_pvalue"] < 0.01 or test["mre_gap"] > 0.10
    assert fired <= 4  # alpha = 1%: 1.5 expected at most; 4 has probability < 2% under the bound
    assert paper >= 20


def test_thresholds_are_configurable(rng):
    train, val = with_copies(rng, 100, 3)
    assert reduce(table_of(train=train, val=val), settings=StatsSettings(alpha=0.2)).verdict.label == "memorization"
    assert reduce(table_of(train=train, val=val), settings=StatsSettings(alpha=1e-6)).verdict.label == "no evidence"
    ranking = reduce(table_of(train=train, val=val), settings=StatsSettings(fdr=1e-12)).ranking
    assert not any(ranking.column("flagged").to_pylist())


def test_user_named_pairs(rng):
    train, test = with_copies(rng, 100, 5)
    table = table_of(train=train, test=test, val=rng.lognormal(np.log(1e-2), 0.7, 100))
    settings = StatsSettings(pairs=[["train", "test"]])
    reduction = reduce(table, settings=settings)
    assert [(r["split_a"], r["split_b"]) for r in reduction.tests.to_pylist()] == [("train", "test")]
    assert set(reduction.ranking.column("reference").to_pylist()) == {"test"}
    assert reduction.verdict.label == "memorization"
    assert {t.pair for t in reduction.verdict.tests} == {("train", "test")}
    # Without a val split the default pair is missing: inconclusive, naming it.
    verdict = reduce(table_of(train=train, test=test)).verdict
    assert verdict.label == "inconclusive" and "there is no 'val' split" in verdict.sentence


def test_confounds_are_warned_about_but_do_not_decide(rng):
    n = 60
    table = table_of(train=rng.lognormal(-3, 0.5, n), val=rng.lognormal(-3, 0.5, n))
    table = table.append_column("format", pa.array(["PNG"] * n + ["JPEG"] * n))
    table = table.append_column("orig_width", pa.array([64] * n + [1024] * n, pa.int64()))
    table = table.append_column("orig_height", pa.array([64] * n + [768] * n, pa.int64()))
    table = table.append_column("channels", pa.array([3] * 2 * n, pa.int64()))
    verdict = reduce(table).verdict
    assert verdict.label == "no evidence"
    assert len(verdict.confounds) == 2
    assert "train and val differ in source format (train: PNG 100%; val: JPEG 100%)" in verdict.confounds[0]
    assert "original size (median train: 64x64; val: 1024x768)" in verdict.confounds[1]
    assert all(c in verdict.reasons for c in verdict.confounds)


def test_inconclusive_without_val(rng):
    verdict = reduce(table_of(train=rng.random(50), generated=GENERATED)).verdict
    assert verdict.label == "inconclusive"
    assert any("no 'val' split" in r for r in verdict.reasons)
    assert verdict.sentence.startswith("Inconclusive:")


def test_inconclusive_when_a_split_is_too_small_states_the_minimum(rng):
    table = table_of(train=rng.lognormal(-4, 0.5, 100), val=rng.lognormal(-3, 0.5, 5), generated=GENERATED)
    verdict = reduce(table, settings=StatsSettings(min_split_size=20)).verdict
    assert verdict.label == "inconclusive"
    assert "split 'val' has 5 recovered images" in verdict.sentence
    assert "at least 20" in verdict.sentence
    assert reduce(table, settings=StatsSettings(min_split_size=5)).verdict.label != "inconclusive"


def test_inconclusive_when_generated_images_are_not_recovered_even_if_rules_fire(rng):
    poor = np.concatenate([np.full(50, 1e-4), np.full(50, 0.05)])  # 50% below tau_generated = 1e-3
    table = table_of(train=rng.lognormal(-4, 0.5, 300), val=rng.lognormal(-3, 0.5, 300), generated=poor)
    verdict = reduce(table).verdict
    assert verdict.label == "inconclusive"
    assert verdict.rules_fired == ()
    assert verdict.numbers["generated_success_rate"] == 0.5
    assert "only 50% of generated images" in verdict.sentence and "at least 90%" in verdict.sentence
    assert any("the rules alone would fire" in r for r in verdict.reasons)
    assert reduce(table, settings=StatsSettings(min_generated_success=0.5)).verdict.label == "memorization"


def test_the_generated_gate_counts_mse_not_the_optimized_loss(rng):
    # An mae search: error is the mae, but "recovered" means mse below tau_generated.
    n = 100
    table = table_of(train=rng.lognormal(-3, 0.5, n), val=rng.lognormal(-3, 0.5, n), generated=np.full(n, 0.02))
    mse = np.concatenate([np.full(2 * n, 0.01), np.full(n, 1e-5)])
    verdict = reduce(table.append_column("mse", pa.array(mse))).verdict
    assert verdict.numbers["generated_success_rate"] == 1.0 and verdict.label == "no evidence"
    assert reduce(table).verdict.label == "inconclusive"  # without mse, tau applies to error


def test_inconclusive_when_every_generated_image_was_rejected(rng):
    table = table_of(train=rng.random(30), val=rng.random(30))
    verdict = reduce(table, pa.table({"split": ["generated"] * 3})).verdict
    assert verdict.label == "inconclusive"
    assert any("generated split has no recovered images" in r for r in verdict.reasons)


def test_missing_generated_split_is_a_caveat_not_a_blocker(rng):
    table = table_of(train=rng.lognormal(-3, 0.5, 100), val=rng.lognormal(-3, 0.5, 100))
    verdict = reduce(table).verdict
    assert verdict.label == "no evidence"
    assert any("no generated split" in r for r in verdict.reasons)
