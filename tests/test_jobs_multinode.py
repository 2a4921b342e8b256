"""A real multi-node Ray cluster on loopback (ray.cluster_utils.Cluster): a head with no CPUs that only drives,
1-CPU worker nodes added and removed by the tests, inputs and outputs on moto S3.

Nodes are removed as a preemption would take them (their processes killed, no drain) while one of their
shards runs: the generator is tests/node_loss_models.SlowTiny, which leaves a file named by its node's id
when a shard's search starts there. The head's health checks run every 0.5 s (a dead node is noticed in ~3 s,
not ~15 s) so the tests stay short; everything else is Ray's default. Each test asserts exact row
counts, no duplicate ids and the run's status and verdict.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import LATENT, REPO, tiny_config, write_yaml

from jobs.audit import _logging
from jobs.config import load_config
from jobs.driver import run_audit
from jobs.errors import JobError
from jobs.plan import make_plan
from stats import read_output

pytestmark = pytest.mark.slow
TESTS = str(Path(__file__).resolve().parent)
RAY = str(Path(sys.executable).parent / "ray")
HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 5, "health_check_initial_delay_ms": 0}
IMAGES = 12 + 6 + 6  # train, val, generated


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nodes:
    """The module's cluster: its GCS and dashboard addresses, and its 1-CPU worker nodes."""

    def __init__(self, cluster, dashboard: str) -> None:
        self.cluster, self.dashboard = cluster, dashboard
        self.temps: list[str] = []

    @property
    def address(self) -> str:
        return self.cluster.address

    def workers(self, n: int) -> None:
        """Exactly n live worker nodes (added, or removed gracefully)."""
        while len(self.cluster.worker_nodes) > n:
            self.cluster.remove_node(next(iter(self.cluster.worker_nodes)))
        while len(self.cluster.worker_nodes) < n:
            self.add()

    def add(self):
        """A 1-CPU worker node with a temp dir of its own: nodes on one machine would otherwise share the
        head's, and a worker's runtime-env agent unpacking a submitted job's working_dir there replaces the
        very folder the job's driver runs in (a test artifact: real nodes have disks of their own)."""
        temp = tempfile.mkdtemp(prefix="rw-", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
        self.temps.append(temp)
        return self.cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", temp_dir=temp)

    def busy(self, marks: Path, timeout: float = 120):
        """The first worker node on which a shard's search runs (waits for one); None if the time runs out."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = [n for n in list(self.cluster.worker_nodes) if (marks / n.node_id).exists()]
            if found:
                return found[0]
            time.sleep(0.02)
        return None

    def kill_when_busy(self, marks: Path) -> None:
        """As soon as a shard's search runs on a worker node, kill that node (no drain), as a preemption would."""
        node = self.busy(marks)
        assert node is not None, "no shard ran on a worker node"
        self.cluster.remove_node(node, allow_graceful=False)


class Background(threading.Thread):
    """A call in a thread of its own (an in-process driver), so that the main thread can add nodes: Ray
    starts a node's processes with signal handlers, which only the main thread may install."""

    def __init__(self, fn, *args, **kwargs) -> None:
        super().__init__(daemon=True)
        self.call, self.result, self.error = (fn, args, kwargs), None, None
        self.start()

    def run(self) -> None:
        fn, args, kwargs = self.call
        try:
            self.result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def get(self, timeout: float = 300):
        self.join(timeout)
        assert not self.is_alive(), "the driver did not finish"
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture(scope="module")
def nodes(moto_server):
    """The cluster, with this test process connected as a driver (for in-process runs)."""
    import ray
    from ray.cluster_utils import Cluster

    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS, path) if p)  # the workers import SlowTiny
    port, cluster, nodes = _free_port(), None, None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": port, "dashboard_agent_listen_port": _free_port(), "_system_config": HEALTH})
        ray.init(address=cluster.address, logging_level="WARNING")
        from jobs import raylink

        raylink.quiet_ray_errors()  # as jobs.audit does: the raylet dumps of the nodes removed stay out of the log
        _logging(quiet=False)
        nodes = Nodes(cluster, f"http://127.0.0.1:{port}")
        yield nodes
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        for temp in nodes.temps if nodes is not None else ():
            shutil.rmtree(temp, ignore_errors=True)
        if path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = path


@pytest.fixture
def case(s3, bucket, moto_server, tiny_data, tiny_generator, tmp_path):
    """Inputs on S3 and a function making a config (SlowTiny, 4-image shards) for one output."""
    s3.put(str(tiny_data / "train.parquet"), f"{bucket}/in/train.parquet")
    for f in sorted((tiny_data / "val").glob("*.png")):
        s3.put(str(f), f"{bucket}/in/val/{f.name}")
    s3.put(tiny_generator, f"{bucket}/models/tiny.pt")

    def make(name: str, *, actors: int = 2, slow: bool = True, delay: float = 0.05, **job) -> tuple[Path, Path, str]:
        marks = tmp_path / f"marks-{name}"
        marks.mkdir()
        raw = tiny_config(f"s3://{bucket}/models/tiny.pt", targets={
            "train": [{"uri": f"s3://{bucket}/in/train.parquet", "image_column": "image", "id_column": "id"}],
            "val": [f"s3://{bucket}/in/val/*.png"], "generated": {"count": 6, "seed": 0}, "shard_size": 4,
        }, storage={"endpoint_url": moto_server}, output=f"s3://{bucket}/{name}/")
        if slow:
            raw["generator"] = {"factory": "node_loss_models:SlowTiny", "kwargs": {"marks": str(marks), "delay": delay},
                                "latent": {"shape": [LATENT], "prior": "normal"}, "output_range": [-1, 1]}
        raw["resources"] = {"actors": actors, "cpus_per_actor": 1}
        # shard_retries 0: a lost node must not use up a retry
        raw["job"] = {"progress_seconds": 2, "shard_retries": 0, "actor_start_timeout": 90, **job}
        return write_yaml(tmp_path / f"{name}.yaml", raw), marks, raw["output"]

    return make


def _check_output(url: str, moto_server: str) -> dict:
    """Every planned image exactly once; returns run.json."""
    results, rejects, _, run_info = read_output(url, storage_options={"client_kwargs": {"endpoint_url": moto_server}})
    ids = results.column("image_id").to_pylist()
    assert results.num_rows == IMAGES and len(set(zip(results.column("split").to_pylist(), ids))) == IMAGES
    assert rejects is None or rejects.num_rows == 0
    assert run_info["status"] == "done" and run_info["verdict"]["label"]
    assert all({"cause", "node", "shard"} <= set(loss) for loss in run_info["node_losses"])  # settled losses, if any
    return run_info


def _driver(config: Path, address: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "jobs.audit", "--config", str(config), "--address", address, *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_worker_node_lost_mid_shard_puts_the_shard_back_and_the_run_completes(nodes, case, moto_server):
    nodes.workers(2)
    config, marks, out = case("lost-mid-shard", delay=0.15)  # the survivor's work outlasts noticing the loss
    driver = _driver(config, nodes.address)
    nodes.kill_when_busy(marks)
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, output[-5000:]
    assert len(nodes.cluster.worker_nodes) == 1, "no node was removed"
    stopped = re.search(r"the actor on node 127\.0\.0\.1 \((\w{8})\) stopped while running shard (\S+) "
                        r"\(ActorUnavailableError: the connection to it was lost\): the shard goes back to the queue", output)
    assert stopped, output[-5000:]
    lost = re.search(rf"node 127\.0\.0\.1 \({stopped.group(1)}\) lost: shard {stopped.group(2)} went back to the queue "
                     r"without using up a retry; 1 of 2 actors running, waiting for capacity", output)
    assert lost, output[-5000:]
    assert "failed" not in output.lower()
    for dump in ("[state-dump]", "Raylet is terminated", "has been marked dead"):  # Ray's dumps stay in its logs
        assert dump not in output
    run_info = _check_output(out, moto_server)
    assert stopped.group(2) in run_info["shards_run"]  # the lost shard ran again, on the surviving actor


def test_the_only_worker_lost_and_a_new_node_joining_later_finishes_the_run(nodes, case, moto_server, capsys):
    nodes.workers(1)
    config, marks, out = case("only-worker", actors=1)
    run = Background(run_audit, load_config(config), local=False, address=nodes.address)
    nodes.kill_when_busy(marks)
    time.sleep(4)  # an autoscaler adds a node a while later
    nodes.add()
    outcome = run.get()
    logged = capsys.readouterr().out
    assert outcome.exit_code == 0, logged[-5000:]
    assert re.search(r"node 127\.0\.0\.1 \(\w{8}\) lost: shard \S+ went back to the queue without using up a retry; "
                     r"0 of 1 actors running, waiting for capacity", logged), logged[-5000:]
    assert "no actor is running: waiting up to" in logged
    assert re.search(r"actor restarted on node 127\.0\.0\.1 \(\w{8}\) .*; 1 of 1 actors running", logged)
    _check_output(out, moto_server)


def test_no_node_for_actor_start_timeout_ends_with_one_line_and_a_rerun_resumes(nodes, case, moto_server, s3):
    nodes.workers(1)
    config, marks, out = case("no-capacity", actors=1, actor_start_timeout=4)
    run = Background(run_audit, load_config(config), local=False, address=nodes.address)
    deadline = time.time() + 120
    while not s3.glob(f"{out.removeprefix('s3://')}rejects/part-*.parquet") and time.time() < deadline:
        time.sleep(0.05)  # a first shard done, then the next one's node is lost for good
    nodes.kill_when_busy(marks)
    with pytest.raises(JobError) as raised:
        run.get()
    message = str(raised.value)
    assert "\n" not in message and message.startswith("no node could host an actor for 4s (each needs 1 CPUs")
    assert message.endswith("Finished shards are kept: re-run the same command to resume")
    nodes.workers(1)
    again = run_audit(load_config(config), local=False, address=nodes.address)
    assert again.exit_code == 0
    plan = make_plan(load_config(config))
    assert 0 < len(again.run_info["shards_run"]) < len(plan.shards)  # only what the first run left
    _check_output(out, moto_server)


def test_a_node_lost_while_the_driver_reduces_does_not_disturb_the_reduce(nodes, case, moto_server, monkeypatch):
    """The reduce reads the parts in the driver, not on the actors: losing a worker node then (here at the
    very moment the driver starts reading the results back) changes nothing but the actors closed at the end."""
    import stats

    nodes.workers(2)
    config, _, out = case("lost-in-reduce", slow=False)
    read = stats.read_output

    def lose_a_node_then_read(*args, **kwargs):
        nodes.cluster.remove_node(next(iter(nodes.cluster.worker_nodes)), allow_graceful=False)
        return read(*args, **kwargs)

    monkeypatch.setattr(stats, "read_output", lose_a_node_then_read)
    outcome = run_audit(load_config(config), local=False, address=nodes.address)
    monkeypatch.undo()
    assert outcome.exit_code == 0 and len(nodes.cluster.worker_nodes) == 1
    _check_output(out, moto_server)


def test_a_second_driver_on_the_same_cluster_runs_beside_the_first(nodes, case, moto_server):
    nodes.workers(2)
    config_b, marks_b, out_b = case("second-driver", actors=1)
    config_a, _, out_a = case("first-driver", actors=1, slow=False)
    b = _driver(config_b, nodes.address)
    deadline = time.time() + 120
    while not any(marks_b.iterdir()) and b.poll() is None and time.time() < deadline:
        time.sleep(0.1)  # B's actor is searching: A starts while B runs
    a = run_audit(load_config(config_a), local=False, address=nodes.address)
    output, _ = b.communicate(timeout=300)
    assert b.returncode == 0, output[-5000:]
    assert a.exit_code == 0
    info_a, info_b = _check_output(out_a, moto_server), _check_output(out_b, moto_server)
    assert info_b["finished"] > info_a["started"]  # they overlapped
    assert info_b["ray_address"] == info_a["ray_address"] == nodes.address


def test_ray_job_submit_to_the_multi_node_cluster(nodes, case, moto_server):
    nodes.workers(2)
    config, _, out = case("submitted", slow=False)
    deadline = time.time() + 60
    while True:  # the dashboard's job API answers a few seconds after the head starts
        try:
            urllib.request.urlopen(f"{nodes.dashboard}/api/version", timeout=2)
            break
        except OSError:
            assert time.time() < deadline, "the head's dashboard did not come up"
            time.sleep(1)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    submit = subprocess.run([RAY, "job", "submit", "--address", nodes.dashboard, "--working-dir", ".", "--",
                             "python", "-m", "jobs.audit", "--config", str(config)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
    assert "succeeded" in submit.stdout and f"done: shards 7/7, images {IMAGES}/{IMAGES}" in submit.stdout
    run_info = _check_output(out, moto_server)
    assert run_info["ray_address"] != "local"
