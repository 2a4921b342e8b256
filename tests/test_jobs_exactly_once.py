"""Exactly-once under faults, on a local Ray: a retry that rejects every row replaces the stale
results part; a part of another run is never reduced; --overwrite under a live run is refused by its lease;
a stats-only re-run renders samples with no actor; actors report images done inside a shard."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LATENT, tiny_config, write_yaml

from jobs import outputs
from jobs.actors import PROGRESS_GROUP, make_actor_class
from jobs.audit import main
from jobs.config import load_config
from jobs.driver import run_audit
from jobs.errors import ConfigError, JobError
from jobs.lease import Lease
from jobs.plan import make_plan

pytestmark = pytest.mark.slow
TESTS = str(Path(__file__).resolve().parent)


def _config(tmp_path, tiny_generator, targets, out, **recovery):
    raw = tiny_config(tiny_generator, targets=targets)
    raw["recovery"].update(recovery)
    raw["job"]["max_reject_fraction"] = 1.0
    return load_config(write_yaml(tmp_path / "audit.yaml", raw), out=str(out))


@pytest.fixture(autouse=True, scope="module")
def _workers_import_test_generators():
    """Ray's workers (started by ray_local, after this) import tests/faulty_models for `generator.factory`."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS, old) if p)
    yield
    if old is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = old


def test_a_retry_whose_rows_all_became_rejects_replaces_the_stale_results_part(ray_local, tiny_data, tmp_path):
    marker = tmp_path / "fail-now"
    raw = tiny_config("unused", targets={"val": [str(tiny_data / "val" / "*.png")]})
    raw["generator"] = {"factory": "faulty_models:NanWhenMarked", "kwargs": {"marker": str(marker)},
                        "latent": {"shape": [LATENT], "prior": "normal"}, "output_range": [-1, 1]}
    raw["job"]["max_reject_fraction"] = 1.0
    config = load_config(write_yaml(tmp_path / "audit.yaml", raw), out=str(tmp_path / "out"))
    (shard,) = make_plan(config).shards
    assert run_audit(config).exit_code == 0
    (tmp_path / "out" / "rejects" / f"part-{shard.id}.parquet").unlink()  # as if the first attempt died here
    marker.touch()  # the retry: the generator gives NaN, so every image becomes a `recover` reject
    outcome = run_audit(config)  # before the stale part's 6 rows plus 6 rejects, "inconsistent output"
    assert outcome.run_info["shards_run"] == [shard.id]
    assert outcome.run_info["status"] == "failed"  # every image rejected: nothing to reduce, and said so
    part = pq.read_table(tmp_path / "out" / "results" / "split=val" / f"part-{shard.id}.parquet")
    assert part.num_rows == 0  # replaced, not left behind
    rejects = pq.read_table(tmp_path / "out" / "rejects")
    assert rejects.num_rows == 6 and set(rejects.column("stage").to_pylist()) == {"recover"}


def test_a_part_of_another_run_is_never_reduced(ray_local, tiny_data, tiny_generator, tmp_path):
    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "shard_size": 6}
    config = _config(tmp_path, tiny_generator, targets, tmp_path / "out")
    plan = make_plan(config)
    assert run_audit(config).exit_code == 0
    folder = tmp_path / "out" / "results" / "split=train"
    table = pq.read_table(folder / f"part-{plan.shards[0].id}.parquet")
    foreign = outputs.part_bytes(table.replace_schema_metadata({}), fingerprint="0" * 64, shard_id=plan.shards[0].id)
    (folder / f"part-{plan.shards[0].id}.parquet").write_bytes(foreign)  # a planned shard's part, of another run
    again = run_audit(config)
    assert again.exit_code == 0 and again.run_info["shards_run"] == [plan.shards[0].id]  # not done: rewritten
    stray = folder / "part-train-0badc0de-000000000.parquet"
    stray.write_bytes(foreign)  # another config's shard, written behind this run's back
    with pytest.raises(JobError, match=rf"{stray.name} does not belong to this run \(another run's fingerprint\)"):
        run_audit(config)  # every shard is done: this run only reduces, and refuses the foreign part


def test_overwrite_while_another_run_holds_the_output_is_refused(ray_local, tiny_data, tiny_generator, tmp_path, capsys):
    out = tmp_path / "out"
    config = _config(tmp_path, tiny_generator, {"val": [str(tiny_data / "val" / "*.png")]}, out)
    live, _ = Lease.acquire(str(out), None, timeout=60, make_info=lambda prev: {"status": "running", "fingerprint": "x"})
    (out / "results").mkdir()
    (out / "results" / "keep.txt").write_text("the live run's")
    code = main(["--config", str(config.config_path), "--out", str(out), "--overwrite"])
    assert code == 2 and f"is in use by run {live.run_id}" in capsys.readouterr().err
    assert (out / "results" / "keep.txt").exists()  # nothing was cleared
    assert json.loads((out / "run.json").read_text())["lease"]["run_id"] == live.run_id
    live.release({"status": "done", "fingerprint": "x", "shards_run": [], "failed_shards": {}})


def test_a_stats_only_rerun_renders_samples_without_actors(ray_local, tiny_data, tiny_generator, tmp_path):
    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "val": [str(tiny_data / "val" / "*.png")], "generated": {"count": 4}}
    config = _config(tmp_path, tiny_generator, targets, tmp_path / "out")
    first = run_audit(config)
    assert first.exit_code == 0
    before = pq.read_table(tmp_path / "out" / "samples.parquet")
    assert set(before.column("split").to_pylist()) == {"train", "val", "generated"}
    (tmp_path / "out" / "samples.parquet").unlink()
    again = run_audit(load_config(config.config_path, out=config.output, overrides=["stats.alpha=0.05"]))
    assert again.exit_code == 0 and again.run_info["shards_run"] == []
    assert again.run_info["timing_s"]["actor_start"] is None  # no actor was started
    after = pq.read_table(tmp_path / "out" / "samples.parquet")
    key = [("split", "ascending"), ("rank", "ascending")]
    columns = ["image_id", "split", "rank", "target", "recovery"]
    assert after.select(columns).sort_by(key).equals(before.select(columns).sort_by(key))


def test_an_actor_reports_images_done_inside_its_shard(ray_local, tiny_data, tiny_generator, tmp_path):
    import ray

    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}]}
    config = _config(tmp_path, tiny_generator, targets, tmp_path / "out", iterations=400, batch_size=2)
    plan = make_plan(config)
    actor = make_actor_class(config).remote(config, plan.fingerprint)
    ray.get(actor.ready.remote())
    running = actor.run_shard.remote(plan.shards[0])  # 12 images, 2 at a time
    seen = []
    while not ray.wait([running], timeout=0)[0]:
        state = ray.get(actor.progress.options(concurrency_group=PROGRESS_GROUP).remote())
        if state:
            seen.append(state["done"])
        time.sleep(0.05)
    report = ray.get(running)
    ray.kill(actor)
    assert report.images == 12
    assert seen == sorted(seen) and any(0 < d < 12 for d in seen), seen  # answered mid-shard, image by image
