"""Generators that misbehave only on batches larger than the load check's, in a real job on local Ray: one whose
forward pass never returns (job.batch_timeout ends the shard and names the generator, the shard and the batch
size, instead of a progress line at 0 images for ever) and one whose output shape changes with the batch size
(the shard fails naming both shapes instead of being resized silently). Faults come from tests/faulty_models.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import LATENT, tiny_config, write_yaml

from jobs.config import load_config
from jobs.driver import run_audit
from jobs.plan import make_plan

pytestmark = pytest.mark.slow
TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture(scope="module")
def ray_with_tests():
    """A local Ray whose workers can import tests/faulty_models.py."""
    import ray

    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS, path) if p)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    yield
    ray.shutdown()
    if path is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = path


def faulty_config(root: Path, tiny_data: Path, factory: str, kwargs: dict, **job):
    raw = tiny_config("unused", targets={"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image",
                                                    "id_column": "id"}], "shard_size": 6})
    raw["generator"] = {"factory": f"faulty_models:{factory}", "kwargs": kwargs,
                        "latent": {"shape": [LATENT], "prior": "normal"}, "output_range": [-1, 1]}
    raw["recovery"] = {"protocol": "paper", "iterations": 3, "batch_size": 8}
    raw["job"] = {"progress_seconds": 1, "shard_retries": 0, **job}
    return load_config(write_yaml(root / "audit.yaml", raw), out=str(root / "out"))


def test_a_generator_that_never_returns_fails_its_shards_within_the_batch_timeout(tmp_path, tiny_data, ray_with_tests):
    config = faulty_config(tmp_path, tiny_data, "HangAbove", {}, batch_timeout=3)
    started = time.time()
    outcome = run_audit(config, plan=make_plan(config))
    assert time.time() - started < 120
    assert outcome.exit_code == 1 and len(outcome.failed) == 2
    for shard, why in outcome.failed.items():
        assert "GeneratorStalled" in why and "factory faulty_models:HangAbove" in why, why
        assert f"on shard {shard}" in why and "batches of up to 8 latents" in why and "job.batch_timeout = 3s" in why


def test_a_generator_whose_shape_changes_with_the_batch_fails_its_shards_naming_both(tmp_path, tiny_data,
                                                                                       ray_with_tests):
    config = faulty_config(tmp_path, tiny_data, "BatchDependent", {"fault": "shape"})
    outcome = run_audit(config, plan=make_plan(config))
    assert outcome.exit_code == 1 and len(outcome.failed) == 2
    for why in outcome.failed.values():
        assert "BatchOutputError" in why and "batch of" in why and "[1, 4, 4]" in why and "[1, 8, 8]" in why, why
