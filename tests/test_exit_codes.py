"""Exit codes for schedulers and CI: 0 no evidence, 3 memorization, 4 inconclusive, 1 error, 2 bad input."""

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


@pytest.mark.slow
def test_no_actor_for_the_learned_start_is_one_line_and_exit_1(ray_local, tmp_path, tiny_data, tiny_generator, capsys,
                                                                moto_server, bucket):
    """An actor no node can host (more CPUs than the cluster has) while the learned start waits for one: the
    run ends with one `error:` line saying what to do and exit 1, not a traceback."""
    from conftest import tiny_config, write_yaml

    from jobs.audit import main as audit_main

    raw = tiny_config(tiny_generator, targets={"val": [str(tiny_data / "val" / "*.png")], "shard_size": 4},
                      resources={"actors": 1, "cpus_per_actor": 64}, storage={"endpoint_url": moto_server})
    raw["recovery"]["start"] = "encoder"
    raw["job"]["actor_start_timeout"] = 2
    config = write_yaml(tmp_path / "audit.yaml", raw)
    assert audit_main(["--config", str(config), "--out", f"s3://{bucket}/out/"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no actor started within 2s, so the learned start's encoder could not be trained")
    assert "Traceback" not in "\n".join(err)
