"""Exit codes for schedulers and CI (issue 14): 0 no evidence, 3 memorization, 4 inconclusive, 1 error, 2 bad input."""

import numpy as np
import pytest

import stats
from stats.cli import main as report_main
from stats.exit_codes import verdict_exit_code
from tests._outputs import errors, write_output
from tests._tables import table_of


@pytest.mark.parametrize("label, fail_on, code", [
    ("memorization", None, 0), ("inconclusive", None, 0), ("no evidence", None, 0),
    ("memorization", "memorization", 3), ("inconclusive", "memorization", 0), ("no evidence", "memorization", 0),
    ("memorization", "inconclusive", 3), ("inconclusive", "inconclusive", 4), ("no evidence", "inconclusive", 0),
    (None, "inconclusive", 4), (None, "memorization", 0), (None, None, 0),  # no verdict yet (--max-shards)
])
def test_the_verdict_sets_the_code_only_with_fail_on(label, fail_on, code):
    assert verdict_exit_code(label, fail_on) == code


def test_an_unknown_fail_on_is_a_user_error():
    with pytest.raises(stats.StatsError, match="--fail-on: expected one of memorization, inconclusive"):
        verdict_exit_code("memorization", "always")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("outs")
    rng = np.random.default_rng(5)
    unrecovered = table_of(train=rng.lognormal(-4, 0.5, 40), val=rng.lognormal(-4, 0.5, 40),
                           generated=rng.lognormal(-2, 0.3, 8))  # the search cannot recover G's own images
    when = "2026-12-01T00:00:00+00:00"
    return {
        "memorization": write_output(str(root / "m"), errors(1.5, 0), finished=when),
        "no evidence": write_output(str(root / "n"), errors(0.0, 1), finished=when),
        "inconclusive": write_output(str(root / "i"), unrecovered, finished=when),
    }


@pytest.mark.parametrize("verdict, flags, code", [
    ("memorization", [], 0), ("memorization", ["--fail-on", "memorization"], 3),
    ("memorization", ["--fail-on", "inconclusive"], 3),
    ("no evidence", ["--fail-on", "inconclusive"], 0),
    ("inconclusive", ["--fail-on", "memorization"], 0), ("inconclusive", ["--fail-on", "inconclusive"], 4),
])
def test_memaudit_report_exit_codes(outputs, verdict, flags, code, capsys):
    assert report_main([outputs[verdict], *flags]) == code
    assert capsys.readouterr().out.startswith(f"verdict: {verdict}\n")


def test_memaudit_report_bad_input_is_2(tmp_path, capsys):
    assert report_main([str(tmp_path / "nothing"), "--fail-on", "memorization"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert report_main([str(tmp_path), "--fail-on", "sometimes"]) == 2  # argparse's choices
