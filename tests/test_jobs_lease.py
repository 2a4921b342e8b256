"""The run lease in run.json (jobs.lease): one live run per output, on local disk and on S3 (conditional writes).

No Ray: a lease is taken and renewed by the driver process only. The "other run" of each test is a second
Lease in this process, or a run.json written as a dead or silent run leaves it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import subprocess
import sys

import pytest

from stats import conditional, storage
from jobs.errors import ConfigError
from jobs.lease import Lease, LeaseLost


def _info(**extra) -> dict:
    return {"status": "running", "fingerprint": "f" * 64, "shards_run": [], "failed_shards": {}, **extra}


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    """(output URL, endpoint) on local disk or on the moto S3 server."""
    if request.param == "local":
        return str(tmp_path / "out"), None
    s3, bucket, endpoint = (request.getfixturevalue(n) for n in ("s3", "bucket", "moto_server"))
    return f"s3://{bucket}/out", endpoint


def _run_json(out: str, endpoint: str | None) -> dict:
    return json.loads(storage.read_bytes(storage.join(out, "run.json"), endpoint))


def test_a_live_run_keeps_the_output_and_a_second_run_is_refused(output):
    out, endpoint = output
    first, previous = Lease.acquire(out, endpoint, timeout=60, make_info=lambda prev: _info())
    assert previous is None and _run_json(out, endpoint)["lease"]["run_id"] == first.run_id
    with pytest.raises(ConfigError, match=rf"output: {out} is in use by run {first.run_id} .*last heartbeat"):
        Lease.acquire(out, endpoint, timeout=60, make_info=lambda prev: _info())
    first.release({**_info(), "status": "done"})
    assert _run_json(out, endpoint)["lease"] is None
    second, previous = Lease.acquire(out, endpoint, timeout=60, make_info=lambda prev: _info())  # free again
    assert previous["status"] == "done"
    second.release({**_info(), "status": "done"})


def test_a_stale_lease_is_taken_over_and_the_log_says_so(output, caplog):
    out, endpoint = output
    old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=300)).isoformat()
    crashed = _info(lease={"run_id": "deadbeef", "host": "elsewhere", "pid": 1, "heartbeat": old, "timeout_s": 120})
    storage.put_atomic(storage.join(out, "run.json"), json.dumps(crashed).encode(), endpoint)
    with caplog.at_level(logging.WARNING, logger="memaudit"):
        lease, previous = Lease.acquire(out, endpoint, timeout=120, make_info=lambda prev: _info())
    assert previous["lease"]["run_id"] == "deadbeef"
    assert "taking over" in caplog.text and "deadbeef" in caplog.text and "last heartbeat was 30" in caplog.text
    lease.release({**_info(), "status": "done"})


def test_a_lease_whose_driver_is_gone_from_this_host_is_stale_at_once(tmp_path, caplog):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)  # that process has exited
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    out = str(tmp_path / "out")
    crashed = _info(lease={"run_id": "killed", "host": socket.gethostname(), "pid": pid, "heartbeat": now, "timeout_s": 120})
    storage.put_atomic(storage.join(out, "run.json"), json.dumps(crashed).encode())
    with caplog.at_level(logging.WARNING, logger="memaudit"):
        lease, _ = Lease.acquire(out, None, timeout=120, make_info=lambda prev: _info())
    assert f"pid {pid} on this host) is gone" in caplog.text
    lease.release({**_info(), "status": "done"})


def test_of_two_runs_racing_for_one_output_only_one_wins(output):
    out, endpoint = output
    data, version = conditional.read_versioned(storage.join(out, "run.json"), endpoint)
    assert data is None
    a = Lease(out, endpoint, timeout=60, version=version)
    b = Lease(out, endpoint, timeout=60, version=version)  # both read the output before either wrote
    assert a._put(_info()) is True
    assert b._put(_info()) is False  # the conditional write refuses the loser
    assert _run_json(out, endpoint)["lease"]["run_id"] == a.run_id
    with pytest.raises(LeaseLost, match=f"run {a.run_id} took over"):
        b.write(_info())


def test_a_run_whose_lease_was_taken_over_stops_writing(output):
    out, endpoint = output
    slow, _ = Lease.acquire(out, endpoint, timeout=60, make_info=lambda prev: _info())
    stale = _run_json(out, endpoint)
    stale["lease"]["heartbeat"] = "2000-01-01T00:00:00+00:00"  # as if its heartbeat had stopped long ago
    storage.put_atomic(storage.join(out, "run.json"), json.dumps(stale).encode(), endpoint)
    other, _ = Lease.acquire(out, endpoint, timeout=60, make_info=lambda prev: _info())
    with pytest.raises(LeaseLost, match=f"run {other.run_id} took over"):
        slow.write(_info())
    assert _run_json(out, endpoint)["lease"]["run_id"] == other.run_id  # the slow run wrote nothing
    other.release({**_info(), "status": "done"})


def test_a_lost_conditional_write_is_read_from_the_store_answer(output):
    """put_if returns None only when the store says the precondition failed (If-None-Match or a stale If-Match)."""
    out, endpoint = output
    url = storage.join(out, "probe.json")
    first = conditional.put_if(url, b"1", None, endpoint)
    assert first is not None
    assert conditional.put_if(url, b"2", None, endpoint) is None  # it exists now
    second = conditional.put_if(url, b"3", first, endpoint)
    assert second is not None and conditional.put_if(url, b"4", first, endpoint) is None  # a stale version loses
    assert storage.read_bytes(url, endpoint) == b"3"


def test_an_error_that_names_412_in_its_text_is_an_outage_not_a_lost_write():
    """Issue 26: a connection reset on part-train-000412.parquet is retried like one on 000413, and is never
    read as "another writer won" (the failed precondition comes from the store's error code only)."""
    before = storage.RETRIES, storage.RETRY_SECONDS
    storage.configure(3, 0.001)
    try:
        _retried_like_any_outage()
    finally:
        storage.configure(*before)


def _retried_like_any_outage() -> None:
    for name in ("part-train-000412.parquet", "part-train-000413.parquet"):
        reset = ConnectionResetError(f"Connection reset by peer writing s3://bucket/out/results/{name}")
        wrapped = OSError(f"[Errno 5] writing {name}")
        wrapped.__cause__ = reset
        for exc in (reset, wrapped):
            assert storage.transient(exc), name
            assert not storage.precondition_failed(exc), name
        calls = []

        def flaky():
            calls.append(1)
            if len(calls) == 1:
                raise reset
            return "written"

        assert storage.retrying(flaky, f"writing {name}") == "written" and len(calls) == 2
