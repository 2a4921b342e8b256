"""The discriminator check's statistics: per split scores, KS and AUC, its detectors row and report section."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from stats import StatsError, StatsSettings
from stats.detect.discriminator import discriminator_summary, discriminator_test, ks_auc
from stats.report.models import discriminator_section, space_section


def scores(train, val, threshold: float = 0.0) -> pa.Table:
    ids = [f"t{i}" for i in range(len(train))] + [f"v{i}" for i in range(len(val))]
    s = np.concatenate([train, val]).astype(float)
    return pa.table({"image_id": ids, "split": ["train"] * len(train) + ["val"] * len(val), "score": s,
                     "classified_real": s > threshold})


def test_summary_and_exact_auc():
    t = scores([3.0, 2.0, 1.0, -1.0], [0.5, -2.0])
    rows = {r["split"]: r for r in discriminator_summary(t).to_pylist()}
    assert rows["train"] == {"split": "train", "count": 4, "mean_score": 1.25, "fraction_real": 0.75}
    assert rows["val"] == {"split": "val", "count": 2, "mean_score": -0.75, "fraction_real": 0.5}
    # 8 train/val pairs: train wins 3 + 4 = 7 of them (only -1 < 0.5 loses)
    assert ks_auc(t)["auc"] == pytest.approx(7 / 8)


def test_fires_on_a_memorizing_discriminator_only():
    rng = np.random.default_rng(0)
    memorized = discriminator_test(scores(rng.normal(2, 1, 64), rng.normal(-2, 1, 64)), StatsSettings())
    assert memorized.fired and memorized.detector == "discriminator" and memorized.statistic > 0.95
    assert memorized.p_value < 1e-10 and "memorized its training set" in memorized.reason
    fired = [discriminator_test(scores(rng.normal(0, 1, 64), rng.normal(0, 1, 64)), StatsSettings()).fired for _ in range(200)]
    assert sum(fired) <= 8  # alpha = 0.01 over 200 exchangeable draws: about 2 expected


def test_bad_scores_are_refused():
    t = scores([1.0, float("nan")], [0.0])
    with pytest.raises(StatsError, match="t1"):
        discriminator_summary(t)
    with pytest.raises(StatsError, match="classified_real"):
        discriminator_summary(t.drop(["classified_real"]))


def test_missing_split_is_skipped_not_fired():
    row = discriminator_test(scores([1.0, 2.0], []), StatsSettings())
    assert not row.fired and row.p_value is None and "not run" in row.reason


def test_report_sections():
    html = discriminator_section(scores([3.0, 2.0, 1.0, -1.0], [0.5, -2.0]))
    assert "Discriminator check" in html and "75.0%" in html and "AUC 0.875" in html
    assert discriminator_section(None) == ""
    note = space_section({"config": {"generator": {"space": "w_plus"}}})
    assert "W+" in note and "less power" in note
    assert space_section({"config": {"generator": {}}}) == ""
    # space left to its default: the job records what it searched
    assert "W: one intermediate latent" in space_section({"config": {"generator": {}}, "search": {"space": "w", "style_based": True}})
    assert space_section({"config": {"generator": {}}, "search": {"space": "z", "style_based": False}}) == ""
