"""run.json's contents: what ran, with which config and versions, when, and how it ended.

    info = new_run_info(config, plan, started=now(), previous=old, address=None)   # status "running"
    info = finished(info, t0, "done")                                               # adds an invocation

jobs.lease writes it (conditionally, with the run lease); this module only builds the dict.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from importlib import metadata

from .actors import peak_rss_mb
from .fingerprint import settings_hash
from .sections import AuditConfig
from .plan import Plan


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("memaudit", "torch", "ray", "pyarrow", "numpy", "fsspec", "s3fs"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def new_run_info(config: AuditConfig, plan: Plan, *, started: str, previous: dict | None, address: str | None) -> dict:
    """run.json at the start of an invocation; `previous` (the output's run.json) contributes its invocations."""
    history = list(previous.get("invocations", [])) if previous else []
    return {
        "status": "running",
        "fingerprint": plan.fingerprint,
        "settings_hash": settings_hash(config),
        "config": config.to_dict(),
        "config_path": config.config_path,
        "versions": versions(),
        "ray_address": address or "local",
        "started": started,
        "finished": None,
        "plan": {"shards": len(plan.shards), "images": plan.images, "available": plan.available,
                 "shard_size": plan.shard_size or config.targets.shard_size, "shard_size_auto": plan.shard_size_auto},
        "shards_run": [],
        "failed_shards": {},
        "counts": None,
        "invocations": history,
    }


def finished(info: dict, t0: float, status: str) -> dict:
    """A copy of `info` that ends this invocation with `status`, its time and the driver's peak memory."""
    info = dict(info)
    info["memory_mb"] = {**info.get("memory_mb", {}), "driver_peak": peak_rss_mb()}
    info["status"] = status
    info["finished"] = now()
    info["seconds"] = round(time.time() - t0, 3)
    info["invocations"] = info["invocations"] + [{
        "started": info["started"], "finished": info["finished"], "status": status,
        "shards_run": len(info["shards_run"]), "failed_shards": sorted(info["failed_shards"]),
    }]
    return info


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
