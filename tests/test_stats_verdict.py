"""Verdict rules, each way."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats as sps

from stats import StatsSettings, reduce
from tests._tables import table_of



GENERATED = np.random.default_rng(10).lognormal(-9, 0.5, 200)  # recovered almost exactly: the search works


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


def test_memorization_when_both_rules_fire(rng):
    table = table_of(train=rng.lognormal(-4, 0.5, 300), val=rng.lognormal(-3, 0.5, 300), generated=GENERATED)
    verdict = reduce(table).verdict
    assert verdict.label == "memorization"
    assert verdict.rules_fired == ("ks", "mre_gap")
    assert verdict.sentence.startswith("Memorization:")
    assert "KS p =" in verdict.sentence and "MRE-gap =" in verdict.sentence
    test = reduce(table).tests.to_pylist()[0]
    assert verdict.numbers["ks_pvalue"] == test["ks_pvalue"]
    assert verdict.numbers["mre_gap"] == pytest.approx(test["mre_gap"])
    assert verdict.numbers["n_train"] == 300 and verdict.numbers["generated_success_rate"] == 1.0


def test_gap_rule_alone_fires_when_ks_is_not_significant():
    val = np.linspace(1.0, 2.0, 20) / 100
    train = val * 0.85
    assert sps.ks_2samp(train, val).pvalue > 0.01  # the precondition of this case
    verdict = reduce(table_of(train=train, val=val, generated=GENERATED)).verdict
    assert verdict.label == "memorization"
    assert verdict.rules_fired == ("mre_gap",)
    assert verdict.numbers["mre_gap"] == pytest.approx(0.15)


def test_ks_rule_alone_fires_on_a_small_consistent_shift(rng):
    val = rng.lognormal(-3, 0.5, 5000)
    train = rng.lognormal(-3, 0.5, 5000) * 0.93
    verdict = reduce(table_of(train=train, val=val, generated=GENERATED)).verdict
    assert verdict.numbers["mre_gap"] < 0.10
    assert verdict.label == "memorization" and verdict.rules_fired == ("ks",)


def test_no_evidence_when_train_and_val_look_alike(rng):
    # Like DCGAN in the paper's Table 1 (KS p = 0.94, gap 0.018): same distribution.
    table = table_of(train=rng.lognormal(-3, 0.5, 400), val=rng.lognormal(-3, 0.5, 400), generated=GENERATED)
    verdict = reduce(table).verdict
    assert verdict.label == "no evidence"
    assert verdict.rules_fired == ()
    assert verdict.numbers["ks_pvalue"] >= 0.01 and verdict.numbers["mre_gap"] <= 0.10
    assert verdict.sentence.startswith("No evidence of memorization:")


def test_train_recovered_worse_is_not_memorization(rng):
    table = table_of(train=rng.lognormal(-3, 0.5, 300), val=rng.lognormal(-4, 0.5, 300), generated=GENERATED)
    verdict = reduce(table).verdict
    assert verdict.numbers["ks_pvalue"] < 1e-10 and verdict.numbers["mre_gap"] < 0
    assert verdict.label == "no evidence"
    assert "not recovered better" in verdict.sentence


def test_thresholds_are_configurable():
    val = np.linspace(1.0, 2.0, 20) / 100
    table = table_of(train=val * 0.85, val=val, generated=GENERATED)
    assert reduce(table, settings=StatsSettings(gap_threshold=0.2)).verdict.label == "no evidence"
    assert reduce(table, settings=StatsSettings(alpha=0.5)).verdict.rules_fired == ("ks", "mre_gap")


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
    poor = np.concatenate([np.full(50, 0.001), np.full(50, 0.05)])  # 50% below tau_generated
    table = table_of(train=rng.lognormal(-4, 0.5, 300), val=rng.lognormal(-3, 0.5, 300), generated=poor)
    verdict = reduce(table).verdict
    assert verdict.label == "inconclusive"
    assert verdict.rules_fired == ()
    assert verdict.numbers["generated_success_rate"] == 0.5
    assert "only 50% of generated images" in verdict.sentence and "at least 90%" in verdict.sentence
    assert any("would fire" in r for r in verdict.reasons)
    assert reduce(table, settings=StatsSettings(min_generated_success=0.5)).verdict.label == "memorization"


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
