"""Per-split summary and input checks, against direct numpy computations."""

from __future__ import annotations

import statistics

import numpy as np
import pyarrow as pa
import pytest

from stats import StatsError, StatsSettings, reduce
from stats.summary import describe, median_sorted
from stats.inputs import group_results, order_splits, string_hashes


def results_table(splits: dict[str, list[float] | np.ndarray], **extra) -> pa.Table:
    ids, names, errors = [], [], []
    for split, values in splits.items():
        for i, v in enumerate(values):
            ids.append(f"{split}-{i}")
            names.append(split)
            errors.append(float(v))
    return pa.table({"image_id": ids, "split": names, "error": errors, **extra})


def summary_row(reduction, split: str) -> dict:
    return next(r for r in reduction.summary.to_pylist() if r["split"] == split)


@pytest.mark.parametrize(
    "values",
    [
        [0.3, 0.1, 0.2, 0.4],  # even count: mean of the two middle values
        [0.5, 0.1, 0.1, 0.1, 0.9, 0.5],  # ties
        [0.25],  # one image
        [0.01, 0.02, 0.015, 0.012, 1e6],  # extreme outlier
        list(np.random.default_rng(3).lognormal(-4, 1, 1001)),
    ],
)
def test_describe_matches_numpy(values):
    x = np.sort(np.asarray(values, dtype=np.float64))
    got = describe(x, tau=0.2)
    assert got["mre"] == np.median(x)
    assert got["mean"] == pytest.approx(np.mean(x), rel=1e-12)
    if len(x) > 1:
        assert got["std"] == pytest.approx(np.std(x, ddof=1), rel=1e-12)
    else:
        assert got["std"] is None
    expected_q = np.quantile(x, [0.05, 0.25, 0.75, 0.95])
    assert [got["q05"], got["q25"], got["q75"], got["q95"]] == pytest.approx(expected_q, rel=1e-12)
    assert got["min"] == x.min() and got["max"] == x.max()
    assert got["success_rate"] == pytest.approx(np.mean(x < 0.2))


def test_median_of_even_count_averages_middle_values():
    assert median_sorted(np.array([1.0, 2.0, 10.0, 20.0])) == 6.0
    assert median_sorted(np.array([1.0, 2.0, 10.0])) == 2.0


def test_huge_outlier_does_not_overflow_mean_or_std():
    values = [1e-3] * 9 + [1e300]
    got = describe(np.sort(np.array(values)), tau=0.01)
    # statistics works on exact fractions, so it is a reference free of overflow.
    assert got["mean"] == pytest.approx(statistics.fmean(values), rel=1e-9)
    assert got["std"] == pytest.approx(statistics.stdev(values), rel=1e-9)
    assert np.isfinite(got["std"])


def test_success_uses_strict_threshold_and_split_kind():
    table = results_table({"train": [0.01, 0.02, 0.03], "generated": [0.005, 0.01, 0.02]})
    settings = StatsSettings(tau_real=0.02, tau_generated=0.01)
    reduction = reduce(table, settings=settings)
    assert summary_row(reduction, "train")["success_rate"] == pytest.approx(1 / 3)  # only 0.01 < 0.02
    assert summary_row(reduction, "train")["tau"] == 0.02
    assert summary_row(reduction, "generated")["success_rate"] == pytest.approx(1 / 3)
    assert summary_row(reduction, "generated")["tau"] == 0.01
    assert summary_row(reduction, "generated")["kind"] == "generated"


def test_tau_applies_to_mse_whatever_the_loss():
    table = results_table({"train": [0.5, 0.6, 0.7], "generated": [0.5, 0.6, 0.7]})  # error: an mae, say
    with_mse = table.append_column("mse", pa.array([0.01, 0.03, None, 1e-4, 2e-3, 5e-4]))
    reduction = reduce(with_mse)
    train, generated = summary_row(reduction, "train"), summary_row(reduction, "generated")
    assert train["tau_column"] == "mse" and train["success_rate"] == pytest.approx(1 / 3)  # the null falls back to error
    assert generated["tau"] == 1e-3 and generated["success_rate"] == pytest.approx(2 / 3)
    assert summary_row(reduce(table), "train")["tau_column"] == "error"
    assert summary_row(reduce(table), "train")["latent_norm_median"] is None  # absent columns: null


def test_new_settings_are_validated_naming_the_field():
    assert StatsSettings(pairs=[["train", "test"]]).pairs == (("train", "test"),)
    assert StatsSettings().as_dict()["pairs"] == [["train", "val"]]
    for values, message in (
        ({"fdr": 0}, r"stats\.fdr: 0 is outside \(0.0, 1.0\)"),
        ({"pairs": [["train"]]}, r"stats\.pairs\[0\]: expected \[a, b\]"),
        ({"pairs": [["train", "train"]]}, r"stats\.pairs\[0\]: compares 'train' with itself"),
        ({"pairs": [["train", "generated"]]}, r"stats\.pairs\[0\]: the generated split"),
        ({"pairs": []}, r"stats\.pairs: needs at least one"),
        ({"pairs": "train,val"}, r"stats\.pairs: expected a list"),
        ({"low_quantile": 0.9}, r"stats\.low_quantile"),
        ({"top_images": -1}, r"stats\.top_images"),
    ):
        with pytest.raises(StatsError, match=message):
            StatsSettings.from_mapping(values)


def test_rejects_are_counted_per_split_including_splits_without_results():
    table = results_table({"train": [0.1, 0.2], "val": [0.3]})
    rejects = pa.table({"image_id": ["a", "b", "c"], "split": ["train", "holdout", "holdout"], "reason": ["x"] * 3})
    reduction = reduce(table, rejects)
    assert summary_row(reduction, "train")["rejected"] == 1
    assert summary_row(reduction, "val")["rejected"] == 0
    holdout = summary_row(reduction, "holdout")
    assert holdout["count"] == 0 and holdout["rejected"] == 2 and holdout["mre"] is None


def test_summary_rows_in_report_order_and_converged_rate():
    table = results_table(
        {"generated": [0.001, 0.002], "zeta": [0.1], "val": [0.2, 0.3], "alpha": [0.4], "train": [0.1, 0.1]},
        converged=[True, False, True, True, True, False, True, None],
    )
    reduction = reduce(table)
    assert reduction.summary.column("split").to_pylist() == ["train", "val", "alpha", "zeta", "generated"]
    assert summary_row(reduction, "generated")["converged_rate"] == 0.5
    assert summary_row(reduction, "train")["converged_rate"] == 0.5  # a null counts as not converged
    assert order_splits(["generated", "b", "val", "a"]) == ["val", "a", "b", "generated"]


def test_row_order_and_chunking_do_not_change_the_numbers():
    rng = np.random.default_rng(1)
    table = results_table({"train": rng.random(50), "val": rng.random(60), "generated": rng.random(40) / 100})
    shuffled = table.take(pa.array(rng.permutation(table.num_rows)))
    chunked = pa.concat_tables([shuffled.slice(0, 33), shuffled.slice(33)])
    a, b = reduce(table), reduce(chunked)
    assert a.summary.equals(b.summary) and a.tests.equals(b.tests) and a.histograms.equals(b.histograms)


def test_dictionary_and_large_string_columns_are_accepted():
    table = results_table({"train": [0.1, 0.2], "val": [0.3, 0.4]})
    table = table.set_column(1, "split", table.column("split").dictionary_encode())
    table = table.set_column(0, "image_id", table.column("image_id").cast(pa.large_string()))
    assert reduce(table).summary.column("count").to_pylist() == [2, 2]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pa.table({"image_id": pa.array([], pa.string()), "split": pa.array([], pa.string()), "error": pa.array([], pa.float64())}), "empty"),
        (pa.table({"image_id": ["a"], "split": ["train"]}), "missing column 'error'"),
        (pa.table({"image_id": ["a"], "error": [0.1]}), "missing column 'split'"),
        (pa.table({"image_id": ["a", "b"], "split": ["train", "train"], "error": [0.1, float("nan")]}), "NaN or infinite (e.g. image_id 'b')"),
        (pa.table({"image_id": ["a", "b"], "split": ["train", "train"], "error": [0.1, None]}), "'error' has 1 missing"),
        (pa.table({"image_id": ["a", "b"], "split": ["train", "train"], "error": [0.1, -0.5]}), "negative values"),
        (pa.table({"image_id": ["a"], "split": ["train"], "error": ["0.1"]}), "'error' must be numeric"),
        (pa.table({"image_id": ["a", "b"], "split": ["train", None], "error": [0.1, 0.2]}), "'split' has 1 missing"),
        (pa.table({"image_id": ["a", "b"], "split": [1, 2], "error": [0.1, 0.2]}), "'split' must hold strings"),
        (pa.table({"image_id": ["a", "b", "a"], "split": ["train", "train", "train"], "error": [0.1, 0.2, 0.3]}), "image_id 'a' appears 2 times in split 'train'"),
    ],
)
def test_bad_results_raise_stats_error_naming_the_problem(table, message):
    with pytest.raises(StatsError, match=_escape(message)):
        reduce(table)


def test_same_id_in_two_splits_is_allowed():
    table = pa.table({"image_id": ["a", "a"], "split": ["train", "val"], "error": [0.1, 0.2]})
    assert reduce(table).summary.num_rows == 2


def test_not_a_table_and_bad_settings_are_stats_errors():
    with pytest.raises(StatsError, match="expected a pyarrow.Table"):
        reduce({"error": [1.0]})
    with pytest.raises(StatsError, match="alpha"):
        StatsSettings(alpha=1.5)
    with pytest.raises(StatsError, match="min_split_size"):
        StatsSettings(min_split_size=0)
    with pytest.raises(StatsError, match=r"stats\.nope: unknown setting"):
        StatsSettings.from_mapping({"nope": 1})


def test_string_hashes_distinguish_ids_like_a_set_does():
    rng = np.random.default_rng(0)
    words = ["", "a", "b", "ab", "ba", "é", "e\u0301", "x" * 300] + [
        "".join(rng.choice(list("abc01"), size=rng.integers(0, 6))) for _ in range(3000)
    ]
    column = pa.chunked_array([pa.array(words[:1000]), pa.array(words[1000:]).slice(0)])
    hashes = string_hashes(column)
    groups: dict[int, set[str]] = {}
    for word, h in zip(words, hashes.tolist()):
        groups.setdefault(h, set()).add(word)
    assert all(len(g) == 1 for g in groups.values())  # equal hash <=> equal string here
    assert len(groups) == len(set(words))
    sliced = pa.chunked_array([pa.array(words).slice(5, 100)])
    assert string_hashes(sliced).tolist() == hashes[5:105].tolist()


def test_groups_hold_sorted_errors_and_row_positions():
    table = results_table({"val": [0.3, 0.1], "train": [0.5, 0.2, 0.4]})
    groups = group_results(table)
    assert groups.names == ["train", "val"]
    assert groups.errors["train"].tolist() == [0.2, 0.4, 0.5]
    assert sorted(groups.rows["val"].tolist()) == [0, 1]


def _escape(text: str) -> str:
    import re

    return re.escape(text)
