"""The object store goes away mid-job.

The output is on S3 (a moto server of this module's own, on 127.0.0.1); the inputs are local. A watcher
thread stops the server as soon as the first shard's done marker (its rejects part) is on it, while the
other shards are still being recovered or written; their part writes (and the driver's later reads) then
fail with connection errors and are retried by stats.storage with backoff.

moto's ThreadedMotoServer keeps its buckets in this process's memory (moto's backends), not in the server
thread, so a server started again on the same port serves the same bucket and objects: the restart looks
to the job like a store that was unreachable for a while, which is the case tested. (A moto server in
another process would come back empty; a real S3 outage does not lose data, so that is not the case.)
Whether a given write hits the outage depends on timing; what is asserted does not: the job's outcome and
that every image is exactly one row.
"""

from __future__ import annotations

import threading
import time
import uuid

import pyarrow.parquet as pq
import pytest
from conftest import tiny_config, write_yaml

from stats import storage
from jobs.audit import main
from stats import read_output

pytestmark = pytest.mark.slow


@pytest.fixture
def store():
    """A moto server of this test's own: (endpoint URL, stop(), start()) on one fixed port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    state = {"server": server}

    def stop() -> None:
        state.pop("server").stop()

    def start() -> None:
        again = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        again.start()
        state["server"] = again

    yield f"http://{host}:{port}", stop, start
    if "server" in state:
        state["server"].stop()


@pytest.fixture(autouse=True)
def _restore_retry_budget(monkeypatch):
    monkeypatch.setattr(storage, "RETRIES", storage.RETRIES)
    monkeypatch.setattr(storage, "RETRY_SECONDS", storage.RETRY_SECONDS)


def _setup(tmp_path, tiny_data, tiny_generator, endpoint, **job):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    targets = {"train": [{"uri": str(tiny_data / "train.parquet"), "image_column": "image", "id_column": "id"}],
               "shard_size": 1}  # 12 shards, so that most of them are still to be written when the store goes
    raw = tiny_config(tiny_generator, targets=targets, storage={"endpoint_url": endpoint}, output=f"s3://{bucket}/out")
    raw["recovery"]["iterations"] = 30
    raw["job"].update(job)
    return fs, bucket, write_yaml(tmp_path / "audit.yaml", raw)


def _outage_after_first_part(fs, bucket, stop, start, *, down_seconds: float | None) -> tuple[threading.Thread, dict]:
    """Stop the store once a shard is done; start it again after `down_seconds` (None: leave it down)."""
    seen: dict = {}

    def watch() -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            fs.invalidate_cache()
            parts = fs.glob(f"{bucket}/out/rejects/part-*.parquet")
            if parts:
                seen["parts_before_outage"] = len(parts)
                stop()
                if down_seconds is not None:
                    time.sleep(down_seconds)
                    start()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, seen


def test_a_short_outage_is_retried_and_the_job_completes(ray_local, tiny_data, tiny_generator, tmp_path, store):
    endpoint, stop, start = store
    fs, bucket, config = _setup(tmp_path, tiny_data, tiny_generator, endpoint,
                                storage_retries=6, storage_retry_seconds=0.2)  # ~12 s of outage tolerated
    watcher, seen = _outage_after_first_part(fs, bucket, stop, start, down_seconds=1.5)
    assert main(["--config", str(config)]) == 0
    watcher.join(5)
    assert 1 <= seen.get("parts_before_outage", 0) < 12, "the store did not go down mid-job"
    results, rejects, _, run_info = read_output(f"s3://{bucket}/out", storage_options={"client_kwargs": {"endpoint_url": endpoint}})
    ids = results.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == 12 and rejects.num_rows == 0
    assert run_info["status"] == "done"


def test_an_outage_beyond_the_retry_budget_fails_naming_the_store(ray_local, tiny_data, tiny_generator, tmp_path, store,
                                                                   capsys):
    endpoint, stop, start = store
    fs, bucket, config = _setup(tmp_path, tiny_data, tiny_generator, endpoint, storage_retries=1,
                                storage_retry_seconds=0.1, shard_retries=0)
    watcher, seen = _outage_after_first_part(fs, bucket, stop, start, down_seconds=None)
    code = main(["--config", str(config)])
    watcher.join(5)
    assert seen.get("parts_before_outage", 0) >= 1
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"s3://{bucket}/out" in errors[0] and "failed after 2 attempts" in errors[0], errors

    start()  # the store is back: every part on it is whole (one PUT each)
    fs.invalidate_cache()
    parts = fs.glob(f"{bucket}/out/**/part-*.parquet")
    assert parts
    for part in parts:
        with fs.open(part, "rb") as f:
            pq.read_table(f)  # a truncated object would fail here
