"""A dead actor: Ray restarts it (max_restarts) and the driver runs its shard again, as one of job.shard_retries
since the node lived on (jobs.losses); the job finishes.

The fault comes from the test, not from production code: the generator is tests/faulty_models.CrashOnce (a
`generator.factory`), which kills the actor's process the first time it runs a real batch.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import LATENT, tiny_config, write_yaml

from jobs.config import load_config
from jobs.driver import run_audit
from jobs.plan import make_plan
from stats import read_output

pytestmark = pytest.mark.slow
TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture(scope="module")
def crashing(tmp_path_factory, tiny_data):
    """A config whose generator kills its actor once, and a local Ray whose workers can import it."""
    import ray

    root = tmp_path_factory.mktemp("faults")
    marker = root / "crashed"
    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "shard_size": 4}
    raw = tiny_config("unused", targets=targets)
    raw["generator"] = {"factory": "faulty_models:CrashOnce", "kwargs": {"marker": str(marker), "driver_pid": os.getpid()},
                        "latent": {"shape": [LATENT], "prior": "normal"}, "output_range": [-1, 1]}
    config = load_config(write_yaml(root / "audit.yaml", raw), out=str(root / "out"))
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS, path) if p)  # Ray's workers import the factory
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    yield config, make_plan(config), marker
    ray.shutdown()
    if path is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = path


def test_a_shard_whose_actor_dies_is_retried_by_ray(crashing):
    config, plan, marker = crashing
    outcome = run_audit(config, plan=plan)
    assert marker.exists(), "no actor crashed: the fault was not injected"
    assert outcome.exit_code == 0, outcome.failed
    assert sorted(outcome.run_info["shards_run"]) == sorted(s.id for s in plan.shards)
    results, rejects, _, _ = read_output(config.output)
    ids = results.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 12 and rejects.num_rows == 0
