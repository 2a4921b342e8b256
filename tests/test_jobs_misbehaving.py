"""Generators that misbehave only on batches larger than the load check's, in a real job on local Ray: one whose
forward pass never returns (job.batch_timeout ends the shard and names the generator, the shard and the batch
size, instead of a progress line at 0 images for ever) and one whose output shape changes with the batch size
(the run stops naming both shapes instead of resizing silently). Faults come from tests/faulty_models.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import LATENT, tiny_config, write_yaml

from jobs.config import load_config
from jobs.driver import run_audit
from jobs.plan import make_plan
from recovery import RecoveryError
from stats.exit_codes import INTERRUPTED

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


def test_a_generator_whose_shape_changes_with_the_batch_stops_the_run_naming_both(tmp_path, tiny_data,
                                                                                       ray_with_tests):
    config = faulty_config(tmp_path, tiny_data, "BatchDependent", {"fault": "shape"}, shard_retries=2)
    with pytest.raises(RecoveryError, match=r"BatchDependent.*batch of \d+ latents.*\[1, 4, 4\].*\[1, 8, 8\]"):
        run_audit(config, plan=make_plan(config))  # the first such batch stops the run: no retry can help
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "failed"


def test_sigterm_to_the_driver_is_an_interruption_that_resumes(tmp_path, tiny_data, tiny_generator):
    """A scheduler stops a job with SIGTERM: the same "interrupted" line and exit code as Ctrl-C, Ray shut down
    cleanly (no crash dump of its C++ core), and the same command then finishes the run."""
    from conftest import REPO
    from test_jobs_driver_killed import _done_shards, _env, _session_pids

    from stats import read_output

    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "shard_size": 1}
    raw = tiny_config(tiny_generator, targets=targets)
    raw["resources"]["actors"] = 1
    raw["recovery"].update(iterations=60, restarts=2)
    command = [sys.executable, "-m", "jobs.audit", "--config", str(write_yaml(tmp_path / "audit.yaml", raw)),
               "--out", str(tmp_path / "out")]
    driver = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    deadline = time.time() + 120
    while not _done_shards(tmp_path / "out") and driver.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    driver.send_signal(signal.SIGTERM)  # to the driver alone, as `kill <pid>` or a scheduler's stop does
    out, err = driver.communicate(timeout=60)
    (tmp_path / "driver.log").write_text(f"{out}\n--- stderr ---\n{err}")  # kept for a failure's diagnosis
    assert driver.returncode == INTERRUPTED, (out[-3000:], err[-3000:])
    assert "interrupted: finished shards are kept" in err
    assert "SIGABRT" not in err and "*** " not in err and "Traceback" not in err, err[-3000:]
    deadline = time.time() + 30
    while _session_pids(driver.pid) and time.time() < deadline:  # the local Ray the driver started is gone too
        time.sleep(0.2)
    assert not _session_pids(driver.pid)
    again = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-2000:]
    assert read_output(str(tmp_path / "out"))[0].num_rows == 12
