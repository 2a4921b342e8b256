"""End-to-end on a local Ray: inputs on (moto) S3 and local disk, outputs to S3 and disk, resume, refusals,
failed shards, rejects. Tiny generator and images, 5 iterations: seconds per run."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import images, png, tiny_config, write_yaml

from jobs import outputs
from jobs.audit import _logging, main
from jobs.config import ConfigError, load_config
from jobs.driver import run_audit
from jobs.plan import make_plan
from stats import read_output

pytestmark = pytest.mark.slow
SECRET = os.environ["AWS_SECRET_ACCESS_KEY"]


@pytest.fixture(autouse=True, scope="module")
def _log_to_stdout():
    """The job's log lines on stdout, as `python -m jobs.audit` sets them up (so capsys sees them)."""
    _logging(quiet=False)


def _sorted(table, drop=("seconds",)):
    table = table.drop_columns([c for c in drop if c in table.column_names])
    return table.sort_by([("split", "ascending"), ("image_id", "ascending")])


def _local_targets(tiny_data, **extra):
    return {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
            "val": [str(tiny_data / "val" / "*.png")], "generated": {"count": 5, "seed": 0}, **extra}


def _config(tmp_path, tiny_generator, targets, *, out, overrides=(), **sections):
    raw = tiny_config(tiny_generator, targets=targets, **sections)
    return load_config(write_yaml(tmp_path / "audit.yaml", raw), out=str(out), overrides=list(overrides))


def test_full_run_reads_and_writes_s3(ray_local, s3, bucket, moto_server, tiny_data, tiny_generator, tmp_path, capsys):
    s3.put(str(tiny_data / "train.parquet"), f"{bucket}/in/train/part-0.parquet")
    for f in sorted((tiny_data / "val").glob("*.png")):
        s3.put(str(f), f"{bucket}/in/val/{f.name}")
    s3.pipe(f"{bucket}/in/val/zz-corrupt.png", b"not a png")
    s3.pipe(f"{bucket}/in/val/zz-small.png", png(images(1, seed=7, side=4)[0]))  # smaller than the 8x8 audit size
    s3.put(tiny_generator, f"{bucket}/models/tiny.pt")
    raw = tiny_config(f"s3://{bucket}/models/tiny.pt", targets={
        "train": [{"uri": f"s3://{bucket}/in/train/*.parquet", "image_column": "image", "id_column": "id"}],
        "val": [{"uri": f"s3://{bucket}/in/val/*.png"}],
        "generated": {"count": 5, "seed": 0},
        "shard_size": 4,
    }, storage={"endpoint_url": moto_server}, output=f"s3://{bucket}/out/")
    raw["job"]["max_reject_fraction"] = 0.5
    config_path = write_yaml(tmp_path / "audit.yaml", raw)

    assert main(["--config", str(config_path)]) == 0
    logged = capsys.readouterr().out
    assert "progress:" in logged or "done: shards" in logged
    assert "done: shards 7/7, images 25/25 (2 rejected)" in logged
    assert "evaluations/s, elapsed" in logged  # the shards' evaluations reached the progress line
    assert "actor idle share" in logged

    out = f"s3://{bucket}/out"
    opts = {"client_kwargs": {"endpoint_url": moto_server}}
    results, rejects, samples, run_info = read_output(out, storage_options=opts, columns=None)
    assert results.num_rows == 12 + 6 + 5
    assert {s: n for s, n in zip(*_counts(results))} == {"train": 12, "val": 6, "generated": 5}
    assert sorted(rejects.column("image_id").to_pylist()) == [f"s3://{bucket}/in/val/zz-corrupt.png",
                                                              f"s3://{bucket}/in/val/zz-small.png"]
    assert set(rejects.column("stage").to_pylist()) == {"decode"}
    ids = results.column("image_id").to_pylist() + rejects.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 25  # every image exactly once
    for column in ("image_id", "split", "source", "row", "error", "mse", "restarts", "converged", "seconds", "target_hash"):
        assert column in results.column_names
    generated = results.filter(pc.equal(results.column("split"), "generated"))
    assert len(generated.column("z0")[0].as_py()) == 8
    assert s3.exists(f"{bucket}/out/results/split=train/part-{make_plan(load_config(config_path)).shards[0].id}.parquet")
    for name in ("summary.parquet", "tests.parquet", "histograms.parquet", "ranking.parquet", "samples.parquet",
                 "report.html", "run.json"):
        assert s3.exists(f"{bucket}/out/{name}"), name
    ranks = set(samples.column("rank").to_pylist())
    assert {"best", "median", "worst"} <= ranks and {r for r in ranks if r.startswith("top-")}  # + the ranking's top
    train = results.filter(pc.equal(results.column("split"), "train"))
    assert set(train.column("format").to_pylist()) == {"PNG"} and set(train.column("channels").to_pylist()) == {1}
    assert run_info["status"] == "done" and run_info["counts"]["val"] == {"images": 8, "results": 6, "rejects": 2, "failures": 0}
    assert run_info["fingerprint"] == make_plan(load_config(config_path)).fingerprint
    assert run_info["plan"]["shard_size"] == 4 and not run_info["plan"]["shard_size_auto"]
    assert 0 <= run_info["actor_idle_share"] <= 1 and 1 <= len(run_info["actor_busy_s"]) <= 2
    assert set(run_info["versions"]) >= {"memaudit", "torch", "ray", "pyarrow"}
    import hashlib  # the audited generator file's sha256, in run.json and in the report's header

    sha = hashlib.sha256(open(tiny_generator, "rb").read()).hexdigest()
    assert run_info["generator_sha256"] == sha
    assert f"<dt>generator sha256</dt><dd>{sha[:12]}</dd>" in s3.cat(f"{bucket}/out/report.html").decode()
    # Credentials never reach the outputs or the log.
    for name in ("run.json", "report.html"):
        assert SECRET not in s3.cat(f"{bucket}/out/{name}").decode()
    assert SECRET not in logged and "AWS_SECRET" not in logged


def _counts(table):
    counts = pc.value_counts(table.column("split"))
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def test_resume_runs_only_missing_shards_and_equals_an_uninterrupted_run(ray_local, tiny_data, tiny_generator, tmp_path):
    targets = _local_targets(tiny_data, shard_size=3)
    config = _config(tmp_path, tiny_generator, targets, out=tmp_path / "resumed")
    plan = make_plan(config)
    assert len(plan.shards) == 8
    first = run_audit(config, max_shards=3)
    assert first.exit_code == 0 and first.run_info["status"] == "partial"
    assert len(first.run_info["shards_run"]) == 3
    assert not (tmp_path / "resumed" / "summary.parquet").exists()
    second = run_audit(config)
    assert second.exit_code == 0 and second.run_info["status"] == "done"
    ran = first.run_info["shards_run"] + second.run_info["shards_run"]
    assert sorted(ran) == sorted(s.id for s in plan.shards) and len(second.run_info["shards_run"]) == 5
    assert [i["status"] for i in second.run_info["invocations"]] == ["partial", "done"]

    straight = _config(tmp_path, tiny_generator, targets, out=tmp_path / "straight")
    assert run_audit(straight).exit_code == 0
    a, _, _, _ = read_output(str(tmp_path / "resumed"), columns=None)
    b, _, _, _ = read_output(str(tmp_path / "straight"), columns=None)
    assert a.num_rows == 23 and len(set(a.column("image_id").to_pylist())) == 23
    assert _sorted(a).equals(_sorted(b))
    for name in ("summary.parquet", "tests.parquet", "histograms.parquet"):
        assert pq.read_table(tmp_path / "resumed" / name).equals(pq.read_table(tmp_path / "straight" / name)), name
    # A third run finds everything done and runs nothing.
    third = run_audit(config)
    assert third.exit_code == 0 and third.run_info["shards_run"] == []


def test_another_config_is_refused_unless_overwrite(ray_local, tiny_data, tiny_generator, tmp_path):
    targets = _local_targets(tiny_data)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "notes.txt").write_text("mine")  # not memaudit's: --overwrite leaves it alone
    assert run_audit(_config(tmp_path, tiny_generator, targets, out=out)).exit_code == 0
    changed = _config(tmp_path, tiny_generator, targets, out=out, overrides=["recovery.iterations=6"])
    with pytest.raises(ConfigError, match=r"output: .* already holds .* another fingerprint \(differs in recovery.iterations\).*--overwrite"):
        run_audit(changed)
    first = json.loads((out / "run.json").read_text())  # shard_size auto (the default), resolved from 23 images
    assert first["plan"]["shard_size"] == 16 and first["plan"]["shard_size_auto"]
    assert first["config"]["targets"]["shard_size"] == 16 and 0 <= first["actor_idle_share"] <= 1
    # Stats settings only change the reduce, so they are not a different audit; nor are the actors (auto does
    # not depend on them: the same shards).
    restats = _config(tmp_path, tiny_generator, targets, out=out, overrides=["stats.alpha=0.05", "resources.actors=1"])
    assert run_audit(restats).run_info["shards_run"] == []
    outcome = run_audit(changed, overwrite=True)
    assert outcome.exit_code == 0 and len(outcome.run_info["shards_run"]) == 3
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["recovery"]["iterations"] == 6 and len(info["invocations"]) == 1
    assert (out / "notes.txt").read_text() == "mine"


def test_a_failing_shard_is_retried_then_reported_and_the_rest_kept(ray_local, tiny_data, tiny_generator, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    table = pq.read_table(tiny_data / "train.parquet")
    pq.write_table(table.slice(0, 6), data / "a.parquet")
    pq.write_table(table.slice(6, 6), data / "b.parquet")
    targets = {"train": [{"uri": str(data / "*.parquet"), "image_column": "image", "id_column": "id"}], "shard_size": 6}
    config = _config(tmp_path, tiny_generator, targets, out=tmp_path / "out")
    plan = make_plan(config)
    shutil.move(data / "b.parquet", tmp_path / "b.parquet")  # vanishes after planning: the second shard fails
    outcome = run_audit(config, plan=plan)
    assert outcome.exit_code == 1
    assert list(outcome.failed) == [plan.shards[1].id] and "FileNotFoundError" in outcome.failed[plan.shards[1].id]
    logged = capsys.readouterr().out
    assert "retry 1 of 1" in logged and plan.shards[1].id in logged
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert info["status"] == "failed" and list(info["failed_shards"]) == [plan.shards[1].id]
    assert (tmp_path / "out" / "rejects" / f"part-{plan.shards[0].id}.parquet").exists()
    assert not (tmp_path / "out" / "summary.parquet").exists()
    shutil.move(tmp_path / "b.parquet", data / "b.parquet")
    again = run_audit(config)
    assert again.exit_code == 0 and again.run_info["shards_run"] == [plan.shards[1].id]


def test_array_sources_and_an_exceeded_reject_fraction(ray_local, tiny_data, tiny_generator, tmp_path, capsys):
    targets = {"train": [{"uri": str(tiny_data / "arrays.parquet"), "array_column": "pixels", "shape_column": "shape",
                          "id_column": "uid"}],
               "val": [{"uri": str(tiny_data / "arrays.parquet"), "array_column": "pixels", "shape": [4, 4]}]}
    outcome = run_audit(_config(tmp_path, tiny_generator, targets, out=tmp_path / "out"))
    assert outcome.exit_code == 1  # every val array is a reject: 50% > job.max_reject_fraction (1%)
    assert outcome.run_info["counts"]["train"]["results"] == 5
    assert outcome.run_info["counts"]["val"] == {"images": 5, "results": 0, "rejects": 5, "failures": 0}
    assert "were rejected" in capsys.readouterr().out
    assert (tmp_path / "out" / "report.html").exists()


def test_cli_report_rebuilds_the_report(ray_local, tiny_data, tiny_generator, tmp_path):
    from jobs.cli import main as cli

    out = tmp_path / "out"
    assert run_audit(_config(tmp_path, tiny_generator, _local_targets(tiny_data), out=out)).exit_code == 0
    (out / "report.html").unlink()
    assert cli(["report", str(out)]) == 0
    assert (out / "report.html").exists()


def test_every_image_rejected_is_reported_not_reduced(ray_local, tiny_data, tiny_generator, tmp_path, capsys):
    targets = {"val": [{"uri": str(tiny_data / "arrays.parquet"), "array_column": "pixels", "shape": [4, 4]}]}
    outcome = run_audit(_config(tmp_path, tiny_generator, targets, out=tmp_path / "out"))
    assert outcome.exit_code == 1 and outcome.run_info["status"] == "failed"
    assert "every image was rejected" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "out" / "rejects").num_rows == 5


def test_resources_no_node_has_are_refused_before_anything_is_written(ray_local, tiny_data, tiny_generator, tmp_path):
    config = _config(tmp_path, tiny_generator, _local_targets(tiny_data), out=tmp_path / "out",
                     overrides=["resources.gpus_per_actor=1"])
    with pytest.raises(ConfigError, match="resources.gpus_per_actor: each actor needs 1 GPUs, the cluster has 0"):
        run_audit(config, local=True)
    assert not (tmp_path / "out").exists()


def test_a_generator_that_cannot_load_is_a_one_line_user_error(ray_local, tiny_data, tmp_path, capsys):
    raw = tiny_config(str(tmp_path / "missing.pt"), targets=_local_targets(tiny_data))
    code = main(["--config", str(write_yaml(tmp_path / "audit.yaml", raw)), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: generator") and "missing.pt" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "run.json").exists()  # refused by the driver's CPU check, before Ray and any write


def test_val_images_with_the_content_of_train_images_are_refused(ray_local, tiny_data, tiny_generator, tmp_path, capsys):
    val = tmp_path / "val"
    val.mkdir()
    train = pq.read_table(tiny_data / "train.parquet").column("image").to_pylist()
    for i in range(2):
        (val / f"copy{i}.png").write_bytes(train[i])  # same pixels, other ids
    (val / "new.png").write_bytes(png(images(1, seed=11)[0]))
    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "val": [str(val / "*.png")]}
    outcome = run_audit(_config(tmp_path, tiny_generator, targets, out=tmp_path / "out"))
    assert outcome.exit_code == 1 and outcome.run_info["status"] == "refused"
    assert "2 val images have the same content as train images" in capsys.readouterr().out
    assert "val/copy0.png" in outcome.run_info["refused"]
    assert not (tmp_path / "out" / "report.html").exists()
