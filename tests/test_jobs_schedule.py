"""Scheduled audits through the job: a checkpoint sweep over two bundled checkpoints appended to
output.history, resubmitted without a second row; the job's exit codes with and without --fail-on."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from conftest import REPO, write_yaml

import stats
from jobs.audit import _logging, main
from jobs.config import load_config
from jobs.driver import Outcome
from jobs.tracking import exit_code, record_or_fail
from stats.history.runs import read_history
from tests._tables import table_of

ASSETS = REPO / "jobs" / "assets"


@pytest.fixture(autouse=True, scope="module")
def _log_to_stdout():
    _logging(quiet=False)


def digits_config(tmp_path, generator: str, **extra) -> dict:
    """GLO on 12 train-64 and 12 val digits, 4 generated; the paper's protocol cut to 10 iterations."""
    digits = ASSETS / "digits"
    return {
        "generator": {"torchscript": generator, "latent": {"shape": [32], "prior": "sphere"}},
        "targets": {"train": [{"uri": str(digits / "train-64.parquet"), "image_column": "image", "id_column": "id"}],
                    "val": [{"uri": str(digits / "val.parquet"), "image_column": "image", "id_column": "id"}],
                    "generated": {"count": 4, "seed": 0}, "limit": 12},
        "recovery": {"protocol": "paper", "iterations": 10},
        "resources": {"actors": 1, "cpus_per_actor": 1},
        "stats": {"min_split_size": 2, "tau_generated": 0.05},
        "job": {"progress_seconds": 1},
        **extra,
    }


@pytest.mark.slow
def test_a_sweep_over_two_checkpoints_records_each_once(ray_local, tmp_path, capsys):
    checkpoints = tmp_path / "run-7"
    checkpoints.mkdir()
    shutil.copy(ASSETS / "models" / "glo-1200.pt", checkpoints / "step-0100.pt")  # stands in for an early checkpoint
    shutil.copy(ASSETS / "models" / "glo-64.pt", checkpoints / "step-0200.pt")  # one that has memorized train-64
    raw = digits_config(tmp_path, str(checkpoints / "step-*.pt"), run={"tags": {"branch": "main"}},
                        output={"path": str(tmp_path / "out"), "history": str(tmp_path / "history")})
    config = write_yaml(tmp_path / "audit.yaml", raw)

    assert main(["--config", str(config), "--fail-on", "memorization"]) == 3
    for name in ("step-0100", "step-0200"):
        assert (tmp_path / "out" / f"checkpoint={name}" / "report.html").exists()
    sweep = pq.read_table(tmp_path / "out" / "sweep.parquet").to_pylist()
    assert [r["checkpoint"] for r in sweep] == ["step-0100", "step-0200"]
    assert sweep[1]["verdict"] == "memorization" and sweep[1]["mre_gap"] > sweep[0]["mre_gap"]
    assert (tmp_path / "out" / "sweep.html").read_text().count("<img") == 3
    history = read_history(str(tmp_path / "history"))
    assert history.column("model").to_pylist() == ["run-7", "run-7"]  # no run.model: the checkpoints' folder
    assert sorted(history.column("checkpoint").to_pylist()) == ["step-0100", "step-0200"]
    assert dict(history.column("tags")[0].as_py())["branch"] == "main"
    assert len(set(history.column("generator_sha256").to_pylist())) == 2
    assert len(set(history.column("data_snapshot").to_pylist())) == 1  # the same images for both
    real_shards = [json.loads((tmp_path / "out" / f"checkpoint={n}" / "run.json").read_text())["target_cache"]
                   for n in ("step-0100", "step-0200")]
    assert real_shards[0]["shards_decoded"] == real_shards[1]["shards_read"] > 0  # decoded once, shared
    assert real_shards[0]["shards_read"] == real_shards[1]["shards_decoded"] == 0
    capsys.readouterr()

    # The second checkpoint's rows from the shared targets are those of a stand-alone audit of its file.
    alone = write_yaml(tmp_path / "alone.yaml", {**raw, "generator": {**raw["generator"], "torchscript": str(
        checkpoints / "step-0200.pt")}, "output": str(tmp_path / "alone")})
    assert main(["--config", str(alone)]) == 0
    swept, single = (stats.read_output(str(p), columns=None)[0].drop_columns(["seconds"]).sort_by("image_id")
                     for p in (tmp_path / "out" / "checkpoint=step-0200", tmp_path / "alone"))
    assert single.num_rows == 28 and swept.select(single.column_names).equals(single)

    # Resubmitted (every shard done: it only reduces again): each run keeps its id, so still two rows.
    assert main(["--config", str(config)]) == 0  # without --fail-on the verdict leaves the code at 0
    again = read_history(str(tmp_path / "history"))
    assert again.num_rows == 2 and set(again.column("run_id").to_pylist()) == set(history.column("run_id").to_pylist())


@pytest.mark.slow
def test_a_run_stopped_early_fails_a_gate_on_inconclusive_and_is_not_recorded(ray_local, tmp_path):
    raw = digits_config(tmp_path, str(ASSETS / "models" / "glo-64.pt"),
                        output={"path": str(tmp_path / "out"), "history": str(tmp_path / "history")})
    config = str(write_yaml(tmp_path / "audit.yaml", raw))
    assert main(["--config", config, "--max-shards", "1", "--fail-on", "memorization"]) == 0
    assert main(["--config", config, "--max-shards", "1", "--fail-on", "inconclusive"]) == 4  # no verdict yet
    with pytest.raises(stats.StatsError, match="no runs"):
        read_history(str(tmp_path / "history"))


def test_bad_schedule_inputs_exit_2_before_ray(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the history folder should be")
    cases = [
        ({"output": {"path": str(tmp_path / "out"), "history": str(blocker / "history")}}, "output.history: cannot write"),
        ({"run": {"model": "m", "tags": {"checkpoint": [1, 2]}}}, "run.tags.checkpoint: expected text or a number"),
        ({"output": {"path": str(tmp_path / "out"), "where": "x"}}, "output.where: unknown field"),
    ]
    for extra, message in cases:
        config = write_yaml(tmp_path / "audit.yaml", digits_config(tmp_path, str(ASSETS / "models" / "glo-64.pt"), **extra))
        assert main(["--config", str(config)]) == 2
        assert message in capsys.readouterr().err
    config = write_yaml(tmp_path / "audit.yaml", digits_config(tmp_path, str(tmp_path / "ckpts" / "*.pt")))
    assert main(["--config", str(config)]) == 2
    assert "generator.torchscript: the glob" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse's choices
        main(["--config", str(config), "--fail-on", "always"])
    assert exited.value.code == 2


def test_errors_come_before_the_verdict_and_a_failed_append_is_1(tmp_path):
    reduction = stats.reduce(table_of(train=[0.001] * 20, val=[0.01 + 0.001 * i for i in range(20)]))
    assert reduction.verdict.label == "memorization"
    assert exit_code(Outcome(1, {}, reduction), "memorization") == 1  # e.g. too many rejects
    assert exit_code(Outcome(0, {}, reduction), "memorization") == 3
    assert exit_code(Outcome(0, {}, reduction), None) == 0
    raw = digits_config(tmp_path, str(ASSETS / "models" / "glo-64.pt"),
                        output={"path": str(tmp_path / "empty-out"), "history": str(tmp_path / "history")})
    config = load_config(write_yaml(tmp_path / "audit.yaml", raw))
    # The output holds no run.json, so the row cannot be built: the audit "finished" but is not recorded.
    assert record_or_fail(config, Outcome(0, {}, reduction), 3) == 1


def test_memaudit_dispatches_history_and_compare(tmp_path, capsys):
    from jobs.cli import main as memaudit
    from stats.history.runs import append, history_row
    from tests._outputs import errors, write_output

    a = write_output(str(tmp_path / "a"), errors(1.5, 0), finished="2026-12-01T00:00:00+00:00", run={"model": "glo"})
    b = write_output(str(tmp_path / "b"), errors(0.0, 1), finished="2026-12-02T00:00:00+00:00", run={"model": "glo"})
    for out in (a, b):
        append(history_row(out), str(tmp_path / "history"))
    assert memaudit(["history", str(tmp_path / "history")]) == 0
    assert "model glo: 2 runs" in capsys.readouterr().out
    assert memaudit(["compare", a, b]) == 0
    assert "MRE-gap change B - A" in capsys.readouterr().out


def test_checkpoints_share_one_listing_and_keep_their_own_fingerprint(tmp_path):
    from jobs.plan import make_plan
    from jobs.sweep import checkpoint_config, checkpoint_plan, checkpoints

    folder = tmp_path / "ckpts"
    folder.mkdir()
    for name, model in (("a-10.pt", "glo-1200.pt"), ("a-20.pt", "glo-64.pt")):
        shutil.copy(ASSETS / "models" / model, folder / name)
    config = load_config(write_yaml(tmp_path / "audit.yaml", digits_config(tmp_path, str(folder / "a-*.pt"))))
    found = checkpoints(config)
    assert [n for n, _ in found] == ["a-10", "a-20"]
    first = make_plan(checkpoint_config(config, *found[0]))
    second = checkpoint_config(config, *found[1])
    assert second.output.endswith("/checkpoint=a-20")
    shared = checkpoint_plan(first, second)
    fresh = make_plan(second)
    assert shared.fingerprint == fresh.fingerprint != first.fingerprint
    assert shared.shards == fresh.shards
