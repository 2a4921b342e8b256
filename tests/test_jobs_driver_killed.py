"""The driver is killed (SIGKILL) mid-job: re-running the same command runs only the unfinished shards, and the
outputs equal an uninterrupted run's (but for `seconds`).

Each run is `python -m jobs.audit` in its own session (start_new_session=True), starting its own local Ray;
the kill goes to the driver's process group, and the test waits until no process of that session is left
(Ray's raylet, GCS server and workers are started by the driver, in its session, and die with it). The shards
counted as done are those whose rejects part (a shard's done marker, written last) exists once the session
is gone: the actor may still finish the shard it was running while the driver dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
from conftest import REPO, tiny_config, write_yaml

from stats import read_output

pytestmark = pytest.mark.slow


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    return env


def _session_pids(sid: int) -> list[int]:
    """Live processes (not zombies) whose session id is `sid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            found.append(int(entry.name))
    return found


def _done_shards(out: Path) -> set[str]:
    return {p.name[len("part-"):-len(".parquet")] for p in (out / "rejects").glob("part-*.parquet")}


def _results(out: Path):
    results = read_output(str(out))[0]
    results = results.drop_columns([c for c in ("seconds",) if c in results.column_names])
    return results.take(pc.sort_indices(results, [("image_id", "ascending")]))


def test_a_killed_driver_resumes_with_only_the_unfinished_shards(tmp_path, tiny_data, tiny_generator):
    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "shard_size": 1}  # 12 shards
    raw = tiny_config(tiny_generator, targets=targets)
    raw["resources"]["actors"] = 1  # one shard at a time, so that the kill lands between parts
    raw["recovery"].update(iterations=60, restarts=2)
    config = write_yaml(tmp_path / "audit.yaml", raw)
    command = [sys.executable, "-m", "jobs.audit", "--config", str(config), "--quiet"]

    reference = tmp_path / "reference"
    done = subprocess.run([*command, "--out", str(reference)], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]

    out = tmp_path / "out"
    driver = subprocess.Popen([*command, "--out", str(out)], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not _done_shards(out) and driver.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(30)
    deadline = time.time() + 60
    while _session_pids(driver.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _session_pids(driver.pid), "processes of the killed job's session are still running"
    finished = _done_shards(out)  # after the session is gone: the actor may finish its shard as the driver dies
    assert 1 <= len(finished) < 12, f"the kill did not land mid-job ({len(finished)} of 12 shards done)"

    again = subprocess.run([*command, "--out", str(out)], cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=180)
    assert again.returncode == 0, again.stderr[-2000:]
    run_info = json.loads((out / "run.json").read_text())
    all_shards = {p.name[len("part-"):-len(".parquet")] for p in (reference / "rejects").glob("part-*.parquet")}
    assert len(all_shards) == 12
    assert sorted(run_info["shards_run"]) == sorted(all_shards - finished)
    assert run_info["status"] == "done"
    assert _results(out).equals(_results(reference))


def test_killing_one_of_two_concurrent_runs_never_mixes_rows(tmp_path, tiny_data, tiny_generator):
    """Run A holds the output; run B (another config, --overwrite) is refused while A lives; A is killed; B then
    takes the output over, and every part and row in it is B's."""
    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "shard_size": 1}
    raw = tiny_config(tiny_generator, targets=targets)
    raw["resources"]["actors"] = 1
    raw["recovery"].update(iterations=200, restarts=150)  # A is slow: it must still run when B tries the output
    config_a = write_yaml(tmp_path / "a.yaml", raw)
    raw["recovery"].update(iterations=40, restarts=2)
    config_b = write_yaml(tmp_path / "b.yaml", raw)
    out = tmp_path / "out"
    a = subprocess.Popen([sys.executable, "-m", "jobs.audit", "--config", str(config_a), "--out", str(out), "--quiet"],
                         cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    command_b = [sys.executable, "-m", "jobs.audit", "--config", str(config_b), "--out", str(out), "--overwrite", "--quiet"]
    try:
        deadline = time.time() + 120
        while not _done_shards(out) and a.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        refused = subprocess.run(command_b, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
        assert a.poll() is None, "run A ended before run B tried the output"
        os.killpg(a.pid, signal.SIGKILL)
    finally:
        a.wait(30)
    assert refused.returncode == 2 and "is in use by run" in refused.stderr, refused.stderr[-2000:]
    deadline = time.time() + 60
    while _session_pids(a.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert _done_shards(out), "run A wrote nothing before it was killed"

    b = subprocess.run(command_b, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=180)
    assert b.returncode == 0, b.stderr[-2000:]
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["config"]["recovery"]["iterations"] == 40 and run_info["status"] == "done"
    import pyarrow.parquet as pq

    parts = sorted(out.glob("re*/**/part-*.parquet"))
    assert len(parts) == 24  # 12 shards: a results and a rejects part each
    assert {pq.read_schema(p).metadata[b"memaudit.fingerprint"].decode() for p in parts} == {run_info["fingerprint"]}
    ids = read_output(str(out))[0].column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 12


def _running(pids: list[int]) -> list[int]:
    """Those of `pids` still running (not zombies)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watchdog reads /proc")
def test_killing_only_the_driver_leaves_no_ray_process_behind(tmp_path, tiny_data, tiny_generator):
    """`kill -9 <driver>` (not its process group): the local Ray it started, agents included, goes too."""
    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "shard_size": 1}
    raw = tiny_config(tiny_generator, targets=targets)
    raw["resources"]["actors"] = 1
    raw["recovery"].update(iterations=60, restarts=2)
    command = [sys.executable, "-m", "jobs.audit", "--config", str(write_yaml(tmp_path / "audit.yaml", raw)), "--quiet",
               "--out", str(tmp_path / "out")]
    driver = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.time() + 120
        while not _done_shards(tmp_path / "out") and driver.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        ray_pids = [p for p in _session_pids(driver.pid) if p != driver.pid]
        assert ray_pids and driver.poll() is None, "the job ended before it could be killed"
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone
        driver.wait(30)
        deadline = time.time() + 45
        while _running(ray_pids) and time.time() < deadline:
            time.sleep(0.2)
        assert not _running(ray_pids), f"Ray processes outlived their driver: {_running(ray_pids)}"
    finally:
        for pid in _running(_session_pids(driver.pid)):  # never leave them behind, even when the test fails
            os.kill(pid, signal.SIGKILL)
