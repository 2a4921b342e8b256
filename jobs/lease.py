"""The run lease: one live run per output, recorded in run.json.

    lease, previous = Lease.acquire(out, endpoint_url, timeout=120, make_info=build)  # refuses a live output
    lease.write(info)           # run.json, only while this run still holds the output
    lease.start_heartbeat()     # a thread renews `lease.heartbeat` every timeout / 4 seconds
    lease.release(info)         # the final run.json; the output is free

run.json carries `lease: {run_id, host, pid, heartbeat, timeout_s}` while a run works on the output. A
second run (or an --overwrite) finds a lease whose heartbeat is younger than its timeout and is refused,
naming the holder; a lease whose heartbeat is older, or whose driver process is gone from this host, is
stale: the new run takes it over and says so in the log. Every write of run.json is conditional on the
version this run last wrote (stats.conditional.put_if: S3's If-Match / If-None-Match, a file lock on local disk),
so two runs racing for one output cannot both win, and a run whose lease was taken over notices at its
next write (JobError) instead of mixing its parts into another run's output.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import socket
import threading
import uuid
from typing import Any, Callable

from stats import conditional, storage
from .errors import ConfigError, JobError
from .outputs import run_info_bytes

log = logging.getLogger("memaudit")
RUN_JSON = "run.json"


class LeaseLost(JobError):
    """Another run took this output over (this run's heartbeat had stopped); this run must stop writing."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def holder(info: dict | None, *, now: dt.datetime | None = None) -> tuple[dict | None, str]:
    """(the live lease in a run.json, or None; why it is not live, for the log)."""
    lease = (info or {}).get("lease")
    if not isinstance(lease, dict) or (info or {}).get("status") != "running":
        return None, ""
    try:
        beat = dt.datetime.fromisoformat(lease["heartbeat"])
        age = ((now or _now()) - beat).total_seconds()
        timeout = float(lease["timeout_s"])
    except (KeyError, TypeError, ValueError):
        return None, "its lease is unreadable"
    if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int) and not _alive(lease["pid"]):
        return None, f"its driver (pid {lease['pid']} on this host) is gone"
    if age > timeout:
        return None, f"its last heartbeat was {age:.0f}s ago (lease timeout {timeout:g}s)"
    return {**lease, "age_s": round(age, 1)}, ""


def check_free(out: str, endpoint_url: str | None) -> None:
    """Refuse (ConfigError) an output a live run holds, before Ray starts; Lease.acquire checks again, atomically."""
    data, _ = conditional.read_versioned(storage.join(out, RUN_JSON), endpoint_url)
    try:
        live, _ = holder(_parse(data, out))
    except ConfigError:
        return  # an unreadable run.json is Lease.acquire's to judge (--overwrite replaces it)
    if live is not None:
        raise ConfigError(_in_use(out, live))


class Lease:
    """This run's hold on one output's run.json (see the module docstring)."""

    def __init__(self, out: str, endpoint_url: str | None, *, timeout: float, version: Any) -> None:
        self.out, self.endpoint_url, self.timeout = out, endpoint_url, float(timeout)
        self.url = storage.join(out, RUN_JSON)
        self.run_id = uuid.uuid4().hex[:16]
        self.version = version  # of run.json as this run last read or wrote it
        self.info: dict = {}
        self.lost: LeaseLost | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -----------------------------------------------------------------------------------------------------

    @classmethod
    def acquire(cls, out: str, endpoint_url: str | None, *, timeout: float,
                make_info: Callable[[dict | None], dict], replace: bool = False) -> tuple["Lease", dict | None]:
        """Take the output for this run and write run.json = make_info(previous run.json) with this run's lease.

        make_info runs after the live-lease check and before anything is written: it may refuse the output
        (ConfigError: another audit's fingerprint) and builds the new run.json. replace (--overwrite): a
        run.json that is not valid JSON counts as absent instead of being refused.

        Returns:
            (the lease, the previous run.json or None).

        Raises:
            ConfigError: another run holds a live lease on the output (or won a race for it just now).
        """
        data, version = conditional.read_versioned(storage.join(out, RUN_JSON), endpoint_url)
        try:
            previous = _parse(data, out)
        except ConfigError:
            if not replace:
                raise
            previous = None
        live, stale = holder(previous)
        if live is not None:
            raise ConfigError(_in_use(out, live))
        info = make_info(previous)
        if previous is not None and previous.get("status") == "running" and stale:
            log.warning("output: taking over %s from run %s: %s", out, (previous.get("lease") or {}).get("run_id", "?"),
                        stale)
        lease = cls(out, endpoint_url, timeout=timeout, version=version)
        if not lease._put(info):
            data, _ = conditional.read_versioned(lease.url, endpoint_url)
            now = _parse(data, out)
            live, _ = holder(now)
            raise ConfigError(_in_use(out, live) if live else f"output: {out}: another run wrote run.json while this "
                              "one was starting; run the command again")
        return lease, previous

    def write(self, info: dict) -> None:
        """Write run.json with this run's lease (heartbeat now). Raises LeaseLost if another run took over."""
        if not self._put(info):
            self._lost()

    def start_heartbeat(self) -> None:
        """Renew the heartbeat every timeout / 4 seconds in a daemon thread, until release()."""
        self._thread = threading.Thread(target=self._beat, name="memaudit-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise LeaseLost if the heartbeat found the output taken over."""
        if self.lost is not None:
            raise self.lost

    def release(self, info: dict) -> None:
        """Stop the heartbeat and write the final run.json (status other than running), lease cleared."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        final = {**info, "lease": None}
        if not self._put(final, lease=False):
            self._lost()

    # -----------------------------------------------------------------------------------------------------

    def _put(self, info: dict, *, lease: bool = True) -> bool:
        with self._lock:
            record = dict(info)
            if lease:
                record["lease"] = {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                                   "heartbeat": _now().isoformat(timespec="milliseconds"), "timeout_s": self.timeout}
            record.setdefault("lease", None)
            version = conditional.put_if(self.url, run_info_bytes(record), self.version, self.endpoint_url)
            if version is None:
                return False
            self.version, self.info = version, copy.deepcopy(info)  # the heartbeat's copy: the caller goes on editing
            return True

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout / 4):
            try:
                if not self._put(self.info):
                    self._lost(raise_it=False)
                    return
            except Exception as exc:  # noqa: BLE001 - a store outage: keep trying; a stale lease is found on write
                log.warning("output: could not renew the lease on %s (%s: %s)", self.out, type(exc).__name__, exc)

    def _lost(self, raise_it: bool = True) -> None:
        try:
            data, _ = conditional.read_versioned(self.url, self.endpoint_url)
            other = ((_parse(data, self.out) or {}).get("lease") or {}).get("run_id", "another run")
        except (ConfigError, OSError):  # unreadable now: it is still not this run's
            other = "another run"
        self.lost = LeaseLost(f"output: run {other} took over {self.out} (this run's lease {self.run_id} had gone "
                              "stale); this run stopped writing. The other run's output is kept")
        log.error("%s", self.lost)
        if raise_it:
            raise self.lost


def _parse(data: bytes | None, out: str) -> dict | None:
    if data is None:
        return None
    try:
        info = json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"output: {storage.join(out, RUN_JSON)} is not valid JSON ({exc}); use --overwrite to "
                          "replace this output") from None
    return info if isinstance(info, dict) else None


def _in_use(out: str, live: dict) -> str:
    return (f"output: {out} is in use by run {live.get('run_id')} (driver pid {live.get('pid')} on "
            f"{live.get('host')}, last heartbeat {live.get('age_s')}s ago); wait for it to finish, or choose another "
            f"--out. A run that died without finishing gives up the output {live.get('timeout_s'):g}s after its "
            "last heartbeat")
