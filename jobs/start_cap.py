"""recovery.start_cap: auto in the job: the generated split first, then the real splits with a measured cap.

An unseen real image never reaches the exact level, so without a cap it restarts until its budget is gone.
Under "auto" the driver runs the generated split's shards first with no cap, measures from their results how
many starts find an in-range image with the recall asked for (stats.start_cap), and runs the train, val and
other real shards with that cap. Every real shard waits for every generated shard, so each real row has the
same cap in every run, resume and retry of a config (the cap is a function of the generated rows, which are
deterministic). With no generated split, or none of its images recovered, there is no cap.
"""

from __future__ import annotations

import logging
from typing import Any

from . import outputs
from .sections import AuditConfig
from .dispatch import AuditActors, run_shards
from .features import read_table
from .plan import Plan, Shard

log = logging.getLogger("memaudit")


def measures(config: AuditConfig) -> bool:
    """Whether this run measures the cap: start_cap auto with adaptive restarts (a fixed count needs no cap)."""
    return config.recovery.start_cap == "auto" and config.recovery.plan().restarts is None


def describe_cap(config: AuditConfig, plan: Plan) -> str:
    """What --dry-run says of the cap."""
    cap = config.recovery.start_cap
    if config.recovery.plan().restarts is not None:
        return "none (a fixed number of starts)"
    if cap is None:
        return "none (every image that is not recovered runs its whole budget)"
    if cap != "auto":
        return f"{cap} starts per image that is not recovered"
    if not any(s.generated for s in plan.shards):
        return "auto, but there is no generated split to measure it on: none"
    return (f"auto: measured on the generated split (searched first), the starts that find an in-range image with "
            f"probability {config.recovery.start_cap_recall:g}; then the real splits")


def order(pending: list[Shard], config: AuditConfig) -> list[Shard]:
    """Generated shards first when the cap is measured (so that --max-shards cuts the real ones first)."""
    return sorted(pending, key=lambda s: not s.generated) if measures(config) else pending


def run_pending(pool: AuditActors, pending: list[Shard], config: AuditConfig, plan: Plan, info: dict, *,
                lease: Any, done: set[str]) -> tuple[list, dict[str, str]]:
    """run_shards over the pending shards; under start_cap auto in two phases with the measured cap between."""
    if not measures(config):
        return run_shards(pool, pending, config, lease=lease)
    first = [s for s in pending if s.generated]
    reports, failed = run_shards(pool, first, config, lease=lease)
    rest = [s for s in pending if not s.generated]
    ran = {r.shard_id for r in reports}
    waiting = [s.id for s in plan.shards if s.generated and s.id not in ran and s.id not in done]
    if failed or waiting or not rest:
        return reports, failed  # the real shards wait for every generated one (a resume runs them)
    cap = measure(config, plan)
    info.setdefault("search", {})["start_cap"] = cap
    more, failed = run_shards(pool, rest, config, lease=lease, start_cap=cap["cap"])
    return reports + more, failed


def measure(config: AuditConfig, plan: Plan) -> dict:
    """The cap from every generated shard's results part (done in this run or an earlier one), as run.json keeps it."""
    import pyarrow as pa

    import stats

    out, endpoint = config.output, config.storage.endpoint_url
    parts = [read_table(outputs.results_url(out, s.split, s.id), endpoint).select(["mse", "restarts"])
             for s in plan.shards if s.generated]
    table = pa.concat_tables(parts) if parts else pa.table({"mse": pa.array([], pa.float64()),
                                                           "restarts": pa.array([], pa.int32())})
    found = stats.measure_start_cap(table, exact_level=config.recovery.exact_level,
                                    recall=config.recovery.start_cap_recall).to_dict()
    if found["cap"] is None:
        log.warning("start cap: %s", found["reason"])
    else:
        log.info("start cap: at most %d starts for a real image that is not recovered (%s)", found["cap"], found["reason"])
    return found
