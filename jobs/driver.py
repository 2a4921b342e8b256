"""The driver: plan, skip what is done, run the rest on actors, reduce with stats, write the report and run.json.

    outcome = run_audit(config, local=True)     # Ray already initialized by the caller (jobs.audit)
    outcome.exit_code                           # 0 done, 1 failed shards / refused / too many rejects

Shards go to actors as they free up (jobs.dispatch); every shard's parts are kept, so re-running the same
command finishes only what is missing. Then the driver reduces the parts with stats, renders the sample
images (jobs.samples) and writes the report and run.json (jobs.runinfo).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from . import outputs, samples, storage
from .config import GENERATED, AuditConfig
from .detectors import run_detectors
from .dispatch import AuditActors, run_shards
from .errors import ConfigError, JobError
from .plan import Plan, make_plan
from .runinfo import finished, new_run_info, now

log = logging.getLogger("memaudit")

__all__ = ["JobError", "Outcome", "fit_actors", "run_audit"]


@dataclass
class Outcome:
    exit_code: int
    run_info: dict
    reduction: Any = None  # stats.Reduction when the run was reduced
    failed: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------


def run_audit(config: AuditConfig, *, plan: Plan | None = None, overwrite: bool = False, max_shards: int | None = None,
              local: bool = True, address: str | None = None) -> Outcome:
    """Run (or resume) one audit on the Ray instance this process is connected to.

    Args:
        config: the validated config.
        plan: its plan (make_plan(config)) if already made.
        overwrite: replace an output that holds another audit (else ConfigError).
        max_shards: run at most this many of the shards not yet done, then stop (resume later).
        local: Ray was started by this process for this job (resources are then checked strictly).
        address: the Ray address, for run.json.

    Returns:
        Outcome with the exit code and run.json's contents.

    Raises:
        ConfigError: the output holds another audit; a resource no node can provide (local).
        recovery.RecoveryError: the generator cannot be loaded.
    """
    started, t0 = now(), time.time()
    storage.configure(config.job.storage_retries, config.job.storage_retry_seconds)
    plan = plan or make_plan(config)
    out, endpoint = config.output, config.storage.endpoint_url
    fitting = fit_actors(config, local=local)  # before anything is written: a resource no node has is a user error
    done, previous = outputs.prepare(out, fingerprint=plan.fingerprint, config=config.to_dict(), overwrite=overwrite,
                                     endpoint_url=endpoint)
    pending = [s for s in plan.shards if s.id not in done]
    log.info("plan: %s", plan.describe().replace("\n", "\n  "))
    log.info("output: %s (%d shards already done%s)", out, len(done & {s.id for s in plan.shards}),
             ", overwritten" if overwrite else "")
    if max_shards is not None:
        pending = pending[:max_shards]
    info = new_run_info(config, plan, started=started, previous=previous, address=address)
    outputs.write_run_info(out, info, endpoint)

    pool = AuditActors(config, plan.fingerprint, count=max(1, min(fitting, len(pending))))
    try:
        started_shards = time.time()
        info["timing_s"] = {"prepare": round(started_shards - t0, 3)}
        reports, failed = run_shards(pool, pending, config)
        info["timing_s"]["actor_start"] = None if pool.first_ready is None else round(pool.first_ready, 3)
        info["timing_s"]["shards"] = round(time.time() - started_shards, 3)  # includes actor_start
        info["shards_run"] = [r.shard_id for r in reports]
        info["failed_shards"] = failed
        info["memory_mb"] = {"actors_peak": max((r.peak_rss_mb for r in reports), default=None)}
        remaining = [s.id for s in plan.shards if s.id not in done and s.id not in {r.shard_id for r in reports}]
        if failed:
            shown = "; ".join(f"{k} ({v})" for k, v in list(failed.items())[:5])
            log.error("%d shards failed: %s. The other shards' results are kept; re-run the same command to retry "
                      "only the missing shards.", len(failed), shown)
            return _finish(info, config, t0, "failed", 1, failed=failed)
        if remaining:
            log.info("stopped after %d shards (--max-shards); %d shards remain: re-run the same command to finish",
                     len(reports), len(remaining))
            info["shards_remaining"] = len(remaining)
            return _finish(info, config, t0, "partial", 0)
        return _reduce(pool, config, plan, info, t0)
    except BaseException as exc:  # a bad generator, no actor, Ctrl-C: run.json says so, then the error goes on
        info["error"] = f"{type(exc).__name__}: {exc}"
        try:
            _finish(info, config, t0, "failed", 1)
        except Exception:  # noqa: BLE001 - the original error matters more than this bookkeeping
            log.warning("could not record the failure in run.json")
        raise
    finally:
        pool.close()


def fit_actors(config: AuditConfig, *, local: bool) -> int:
    """How many actors to start: resources.actors, or on a local instance as many as fit.

    Raises:
        ConfigError: (local) one actor needs more CPUs or GPUs than the machine has. On a cluster this is
            only logged: an autoscaler may add the nodes (job.actor_start_timeout bounds the wait).
    """
    import ray

    res = config.resources
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    short = []
    if res.cpus_per_actor > cpus:
        short.append(f"resources.cpus_per_actor: each actor needs {res.cpus_per_actor:g} CPUs, the cluster has {cpus:g}")
    if res.gpus_per_actor > gpus:
        short.append(f"resources.gpus_per_actor: each actor needs {res.gpus_per_actor:g} GPUs, the cluster has {gpus:g}")
    if short and local:
        raise ConfigError("; ".join(short) + " (lower it, or submit the job to a cluster that has them)")
    if short:
        log.warning("%s; waiting up to %gs for the autoscaler to add nodes", "; ".join(short), config.job.actor_start_timeout)
        return res.actors
    if local:
        fits = int(cpus // res.cpus_per_actor)
        if res.gpus_per_actor > 0:
            fits = min(fits, int(gpus // res.gpus_per_actor))
        if fits < res.actors:
            log.warning("resources: this machine fits %d actors of %g CPUs / %g GPUs; starting %d, not %d",
                        fits, res.cpus_per_actor, res.gpus_per_actor, fits, res.actors)
            return fits
    return res.actors


# ---------------------------------------------------------------------------------------------------------
# Reduce, samples, report


def _reduce(pool: AuditActors, config: AuditConfig, plan: Plan, info: dict, t0: float) -> Outcome:
    import stats
    import stats.checks

    started = time.time()
    out, endpoint = config.output, config.storage.endpoint_url
    options = storage.storage_options(out, endpoint)
    columns = tuple(dict.fromkeys(stats.io.STATS_COLUMNS + ("source", "row", "target_hash")))
    if not _any_results(out, endpoint):
        log.error("every image was rejected, so there is nothing to reduce; see %s", storage.join(out, "rejects"))
        return _finish(info, config, t0, "failed", 1)
    results, rejects, _, _ = stats.read_output(out, storage_options=options, columns=columns)
    try:
        counts = stats.checks.check_complete(results, rejects, plan.images)
    except stats.StatsError as exc:  # the parts do not add up to the plan: the output is inconsistent
        raise JobError(str(exc)) from None
    info["counts"] = counts
    overlap = stats.checks.overlaps(results, config.stats.pairs)
    if overlap:
        message = f"{overlap[0]}. Fix the sources; the parts are kept for inspection."
        log.error("%s", message)
        info["refused"] = message
        return _finish(info, config, t0, "refused", 1)
    log.info("reducing %d results and %d rejects with stats", results.num_rows, 0 if rejects is None else rejects.num_rows)
    companions = run_detectors(pool, config, plan, results)  # None unless `detectors` lists companions (issue 12)
    reduction = stats.reduce(results, rejects, settings=config.stats,
                             detectors=None if companions is None else companions.detectors)
    rendered = samples.render(pool, config, plan, results, reduction.ranking)
    if rendered is not None:
        storage.put_atomic(outputs.file_url(out, "samples.parquet"), rendered, endpoint)
        rendered = samples.table_from_parquet(rendered)
    info["verdict"] = stats.reduction.verdict_dict(reduction.verdict)
    info["timing_s"]["reduce_and_report"] = round(time.time() - started, 3)
    info = finished(info, t0, "done")
    html = stats.render_report(reduction, results=results, rejects=rejects, samples=rendered, run_info=info,
                               companions=companions)
    stats.write_outputs(out, reduction, html, storage_options=options)
    outputs.write_run_info(out, info, endpoint)
    log.info("summary:\n%s", stats.format_summary(reduction))
    real = [s for s in counts if s != GENERATED]
    audited = sum(counts[s]["images"] for s in real)
    rejected = sum(counts[s]["rejects"] for s in real)
    fraction = rejected / audited if audited else 0.0
    log.info("report: %s", outputs.file_url(out, "report.html"))
    if fraction > config.job.max_reject_fraction:
        log.error("%.1f%% of the real images were rejected (job.max_reject_fraction is %.1f%%); see %s",
                  100 * fraction, 100 * config.job.max_reject_fraction, storage.join(out, "rejects"))
        return Outcome(1, info, reduction)
    return Outcome(0, info, reduction)


def _any_results(out: str, endpoint: str | None) -> bool:
    fs, path = storage.filesystem(storage.join(out, "results"), endpoint)
    fs.invalidate_cache(path)
    try:
        return any(p.endswith(".parquet") for p in fs.find(path))
    except FileNotFoundError:
        return False


def _finish(info: dict, config: AuditConfig, t0: float, status: str, code: int, failed: dict | None = None) -> Outcome:
    info = finished(info, t0, status)
    outputs.write_run_info(config.output, info, config.storage.endpoint_url)
    return Outcome(code, info, None, failed or {})
