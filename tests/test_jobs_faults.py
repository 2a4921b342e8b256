"""A dead actor: Ray restarts it and retries its shard (max_restarts / max_task_retries); the job finishes."""

from __future__ import annotations

import os

import pytest
from conftest import tiny_config, write_yaml

from jobs.actors import CRASH_ONCE_ENV
from jobs.config import load_config
from jobs.driver import run_audit
from jobs.plan import make_plan
from stats import read_output

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crashing(tmp_path_factory, tiny_data, tiny_generator):
    """A config, its plan, and a local Ray whose actors exit abruptly the first time they run shard 1."""
    import ray

    root = tmp_path_factory.mktemp("faults")
    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "shard_size": 4}
    config = load_config(write_yaml(root / "audit.yaml", tiny_config(tiny_generator, targets=targets)), out=str(root / "out"))
    plan = make_plan(config)
    marker = root / "crashed"
    os.environ[CRASH_ONCE_ENV] = f"{plan.shards[1].id}:{marker}"  # inherited by Ray's workers, so set before init
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    yield config, plan, marker
    ray.shutdown()
    os.environ.pop(CRASH_ONCE_ENV)


def test_a_shard_whose_actor_dies_is_retried_by_ray(crashing):
    config, plan, marker = crashing
    outcome = run_audit(config, plan=plan)
    assert marker.exists(), "the actor did not crash: the test hook is not wired"
    assert outcome.exit_code == 0, outcome.failed
    assert sorted(outcome.run_info["shards_run"]) == sorted(s.id for s in plan.shards)
    results, rejects, _, _ = read_output(config.output)
    ids = results.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 12 and rejects.num_rows == 0
