"""`ray job submit --working-dir . -- python -m jobs.audit --config ...` against a real single-node Ray cluster.

The cluster is started with `ray start --head --block` in its own process session and stopped by signalling
that process (which stops the processes it started): `ray stop` would stop every Ray on the machine.
Ports are picked free so that the test does not collide with another Ray on the machine; all on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, tiny_config, write_yaml

from stats import read_output

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _env() -> dict:
    env = dict(os.environ)  # conftest's loopback, auth and fake AWS settings; the venv's python first on PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture
def ray_cluster():
    """A `ray start --head` cluster on 127.0.0.1 with 2 CPUs; yields the dashboard (job submission) URL."""
    gcs, dashboard, agent, client = _free_ports(4)
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    log = open(Path(temp) / "ray-start.log", "w")
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--dashboard-host=127.0.0.1",
         f"--port={gcs}", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
         f"--ray-client-server-port={client}", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ray start failed: {(Path(temp) / 'ray-start.log').read_text()[-3000:]}") from None
                time.sleep(1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)  # the blocking `ray start` stops the processes it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in the session this fixture created
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_the_audit(ray_cluster, s3, bucket, moto_server, tiny_data, tiny_generator, tmp_path):
    s3.put(str(tiny_data / "train.parquet"), f"{bucket}/in/train.parquet")
    for f in sorted((tiny_data / "val").glob("*.png")):
        s3.put(str(f), f"{bucket}/in/val/{f.name}")
    s3.put(tiny_generator, f"{bucket}/models/tiny.pt")
    raw = tiny_config(f"s3://{bucket}/models/tiny.pt", targets={
        "train": [{"uri": f"s3://{bucket}/in/train.parquet", "image_column": "image", "id_column": "id"}],
        "val": [f"s3://{bucket}/in/val/*.png"], "generated": {"count": 4, "seed": 0}, "shard_size": 5,
    }, storage={"endpoint_url": moto_server}, output=f"s3://{bucket}/out/")
    config = write_yaml(tmp_path / "audit.yaml", raw)

    submit = subprocess.run(
        [RAY, "job", "submit", "--address", ray_cluster, "--working-dir", ".", "--",
         "python", "-m", "jobs.audit", "--config", str(config)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
    assert "succeeded" in submit.stdout
    job_id = re.search(r"raysubmit_\w+", submit.stdout).group(0)

    logs = subprocess.run([RAY, "job", "logs", "--address", ray_cluster, job_id], env=_env(),
                          capture_output=True, text=True, timeout=60).stdout
    assert "memaudit INFO done: shards 6/6, images 22/22" in logs  # plain lines, readable in `ray job logs`
    assert "report: s3://" in logs and os.environ["AWS_SECRET_ACCESS_KEY"] not in logs

    results, rejects, samples, run_info = read_output(f"s3://{bucket}/out",
                                                      storage_options={"client_kwargs": {"endpoint_url": moto_server}})
    assert results.num_rows == 12 + 6 + 4 and rejects.num_rows == 0
    assert run_info["status"] == "done" and run_info["ray_address"] != "local"
    assert samples is not None and s3.exists(f"{bucket}/out/report.html")
