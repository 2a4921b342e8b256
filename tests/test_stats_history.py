"""The run history: rows built from finished outputs, appended atomically and idempotently, read back."""

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import stats
from stats.history.runs import append, history_row, read_history
from stats.history.cli import history_main
from tests._outputs import errors, write_output


@pytest.fixture
def two_runs(tmp_path):
    a = write_output(str(tmp_path / "a"), errors(1.5, 0), finished="2026-12-01T02:00:00+00:00",
                     run={"model": "glo", "tags": {"checkpoint": "1000"}})
    b = write_output(str(tmp_path / "b"), errors(0.0, 1), finished="2026-12-02T02:00:00+00:00",
                     run={"model": "glo", "tags": {"checkpoint": "2000"}})
    return a, b


def test_two_runs_are_two_rows_and_a_reappend_is_still_two_locally(two_runs, tmp_path):
    history = str(tmp_path / "history")
    for out in (*two_runs, two_runs[0], two_runs[1]):
        append(history_row(out), history)
    table = read_history(history)
    assert table.num_rows == 2
    assert table.column("checkpoint").to_pylist() == ["1000", "2000"]  # oldest first
    assert sorted((tmp_path / "history" / "model=glo").iterdir()).__len__() == 2  # no temporaries left behind


def test_two_runs_are_two_rows_and_a_reappend_is_still_two_on_s3(tmp_path, moto_server, bucket):
    options = {"client_kwargs": {"endpoint_url": moto_server}}
    outs = [write_output(f"s3://{bucket}/audits/{name}", errors(shift, seed), finished=when, run={"model": "glo"},
                         storage_options=options)
            for name, shift, seed, when in (("a", 1.5, 0, "2026-12-01T02:00:00+00:00"),
                                            ("b", 0.0, 1, "2026-12-02T02:00:00+00:00"))]
    history = f"s3://{bucket}/history/"
    for out in (*outs, outs[0]):
        append(history_row(out, storage_options=options), history, storage_options=options)
    table = read_history(history, storage_options=options)
    assert table.num_rows == 2
    assert table.column("output").to_pylist() == outs
    assert table.column("verdict").to_pylist() == ["memorization", "no evidence"]


def test_the_row_holds_what_a_scheduled_audit_tracks(two_runs):
    a, b = two_runs
    row = history_row(a, generator_sha256="abc123").to_pylist()[0]
    assert row["model"] == "glo" and row["checkpoint"] == "1000" and row["tags"] == [("checkpoint", "1000")]
    assert row["generator"] == "s3://models/glo-64.pt" and row["generator_sha256"] == "abc123"
    assert row["verdict"] == "memorization" and row["rules_fired"] and row["pair"] == "train/val"
    assert row["mre_gap"] > 0.5 and row["gap_ci_low"] <= row["mre_gap"] <= row["gap_ci_high"]
    assert row["ks_pvalue"] < 1e-6 and row["config_fingerprint"] == "cfg"
    splits = {s["split"]: s for s in row["splits"]}
    assert splits["train"]["n"] == 40 and splits["generated"]["n"] == 8
    assert row["flagged"] == int(pc.sum(stats.reduce(errors(1.5, 0)).ranking.column("flagged").cast(pa.int64())).as_py())
    # Same image ids, different errors: the same data snapshot; the run id differs (another output).
    other = history_row(b).to_pylist()[0]
    assert other["data_snapshot"] == row["data_snapshot"] and other["run_id"] != row["run_id"]
    assert other["splits"][0]["ids_sha256"] == row["splits"][0]["ids_sha256"]


def test_the_data_snapshot_changes_with_the_image_ids(tmp_path):
    base = errors(0.0, 3)
    renamed = base.set_column(0, "image_id", pc.replace_substring(base.column("image_id"), "train-0", "train-x"))
    a = write_output(str(tmp_path / "a"), base, finished="2026-12-01T00:00:00+00:00")
    b = write_output(str(tmp_path / "b"), renamed, finished="2026-12-01T00:00:00+00:00")
    ra, rb = history_row(a).to_pylist()[0], history_row(b).to_pylist()[0]
    assert ra["data_snapshot"] != rb["data_snapshot"]
    changed = {s["split"] for s, t in zip(ra["splits"], rb["splits"]) if s["ids_sha256"] != t["ids_sha256"]}
    assert changed == {"train"}
    assert ra["model"] == "glo-64"  # no run.model: the generator file's name


def test_a_renamed_model_keeps_one_row_per_run(two_runs, tmp_path):
    history = str(tmp_path / "history")
    append(history_row(two_runs[0]), history)
    append(history_row(two_runs[0], model="glo-renamed"), history)
    table = read_history(history)
    assert table.num_rows == 1 and table.column("model").to_pylist() == ["glo-renamed"]


def test_an_unfinished_run_is_refused_and_a_missing_model_is_named(tmp_path, two_runs):
    out = write_output(str(tmp_path / "c"), errors(0.0, 2), finished="2026-12-03T00:00:00+00:00", verdict=False)
    with pytest.raises(stats.StatsError, match="no verdict"):
        history_row(out)
    history = str(tmp_path / "history")
    append(history_row(two_runs[0]), history)
    with pytest.raises(stats.StatsError, match="no run of model 'nope' .*models: glo"):
        read_history(history, model="nope")


def test_history_command_prints_the_runs_and_writes_the_trend_page(two_runs, tmp_path, capsys):
    history = str(tmp_path / "history")
    for out in two_runs:
        append(history_row(out), history)
    assert history_main([history, "--model", "glo"]) == 0
    text = capsys.readouterr().out
    assert "model glo: 2 runs" in text and "memorization" in text and "no evidence" in text
    page = (tmp_path / "history" / "history-glo.html").read_text()
    assert page.count("<img") == 3 and "MRE-gap" in page
    assert read_history(history).num_rows == 2  # the page beside the dataset is not a run
    assert history_main([str(tmp_path / "nothing")]) == 2
    assert "no runs" in capsys.readouterr().err


def test_a_resubmitted_run_keeps_the_date_it_first_finished(tmp_path):
    import json

    out = write_output(str(tmp_path / "a"), errors(0.0, 4), finished="2026-12-05T00:00:00+00:00")
    info = json.loads((tmp_path / "a" / "run.json").read_text())
    info["invocations"] = [{"status": "partial", "finished": "2026-12-01T00:00:00+00:00"},
                           {"status": "done", "finished": "2026-12-02T00:00:00+00:00"},
                           {"status": "done", "finished": "2026-12-05T00:00:00+00:00"}]
    (tmp_path / "a" / "run.json").write_text(json.dumps(info))
    assert history_row(out).column("date")[0].as_py().isoformat() == "2026-12-02T00:00:00+00:00"


def test_a_read_only_history_still_prints_and_names_the_page_problem(two_runs, tmp_path, capsys):
    history = tmp_path / "history"
    append(history_row(two_runs[0]), str(history))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert history_main([str(history), "--html", str(blocker / "page.html")]) == 2
    captured = capsys.readouterr()
    assert "model glo: 1 run" in captured.out and "choose another place with --html" in captured.err
