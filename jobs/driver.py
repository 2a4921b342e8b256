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

from stats import storage

from . import encoders, labels_and_scores, outputs, preflight, samples, start_cap
from .sections import GENERATED, AuditConfig
from .detectors import run_detectors
from .dispatch import AuditActors
from .errors import ConfigError, JobError
from .lease import Lease
from .plan import Plan, generated_ids, make_plan, sized
from .redact import redact_value
from .runinfo import finished, new_run_info, now
from .tracking import generator_sha256

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
              local: bool = True, address: str | None = None, generator: Any = None,
              target_cache: Any = None) -> Outcome:
    """Run (or resume) one audit on the Ray instance this process is connected to.

    Args:
        config: the validated config.
        plan: its plan (make_plan(config)) if already made.
        overwrite: replace an output that holds another audit (else ConfigError).
        max_shards: run at most this many of the shards not yet done, then stop (resume later).
        local: Ray was started by this process for this job (resources are then checked strictly).
        address: the Ray address, for run.json.
        generator: the generator loaded on the CPU by preflight.load_generator_cpu (loaded here if None); it
            renders the report's samples.
        target_cache: a checkpoint sweep's jobs.target_cache.TargetCache: real shards' decoded targets are read
            from it when there, else decoded and written to it.

    Returns:
        Outcome with the exit code and run.json's contents.

    Raises:
        ConfigError: the output holds another audit or is in use by a live run; a resource no node can
            provide (local); a local output on a multi-node cluster.
        recovery.RecoveryError: the generator cannot be loaded.
    """
    started, t0 = now(), time.time()
    storage.configure(config.job.storage_retries, config.job.storage_retry_seconds)
    plan = plan or make_plan(config)
    config = sized(config, plan.shard_size)  # targets.shard_size auto made definite, as the fingerprint hashes it
    config, start = encoders.resolve_start(config, plan.total_images)  # "auto": the encoder for a large audit
    labels_and_scores.check_labels(config, plan)  # a label outside generator.classes is refused before any actor starts
    out = config.output
    fitting = fit_actors(config, local=local)  # before anything is written: a resource no node has is a user error
    _check_placement(config)  # a local output on a multi-node cluster: refused before any actor starts
    generator = generator if generator is not None else preflight.load_generator_cpu(config)
    lease, done, info = _take_output(config, plan, overwrite=overwrite, started=started, address=address)
    info["search"] = {**labels_and_scores.search_info(generator), "start": start}  # the space searched, the start
    info["generator_sha256"] = generator_sha256(config.generator, config.storage.endpoint_url)  # the report's header
    log.info("search start: %s", start)
    pending = start_cap.order([s for s in plan.shards if s.id not in done], config)  # generated first under start_cap auto
    log.info("plan: %s", plan.describe().replace("\n", "\n  "))
    log.info("output: %s (%d shards already done%s)", out, len(done), ", overwritten" if overwrite else "")
    if max_shards is not None:
        pending = pending[:max_shards]
    lease.start_heartbeat()

    pool = AuditActors(config, plan.fingerprint, count=max(1, min(fitting, len(pending))), target_cache=target_cache)
    try:
        started_shards = time.time()
        info["timing_s"] = {"prepare": round(started_shards - t0, 3)}
        reports, failed = start_cap.run_pending(pool, pending, config, plan, info, lease=lease, done=done)
        info["timing_s"]["shards"] = round(time.time() - started_shards, 3)  # includes actor_start
        _record_shards(info, pool, reports, failed, target_cache)
        ran = {r.shard_id for r in reports}  # once: a set per shard made this quadratic
        remaining = [s.id for s in plan.shards if s.id not in done and s.id not in ran]
        if failed:
            shown = "; ".join(f"{k} ({v})" for k, v in list(failed.items())[:5])
            log.error("%d shards failed: %s. The other shards' results are kept; re-run the same command to retry "
                      "only the missing shards.", len(failed), shown)
            return _finish(info, lease, t0, "failed", 1, failed=failed)
        if remaining:
            log.info("stopped after %d shards (--max-shards); %d shards remain: re-run the same command to finish",
                     len(reports), len(remaining))
            info["shards_remaining"] = len(remaining)
            return _finish(info, lease, t0, "partial", 0)
        return _reduce(pool, config, plan, info, t0, lease, generator)
    except BaseException as exc:  # a bad generator, no actor, Ctrl-C: run.json says so, then the error goes on
        info["error"] = f"{type(exc).__name__}: {exc}"
        try:
            _finish(info, lease, t0, "failed", 1)
        except Exception:  # noqa: BLE001 - the original error matters more than this bookkeeping
            log.warning("could not record the failure in run.json")
        raise
    finally:
        pool.close()


def _record_shards(info: dict, pool: AuditActors, reports: list, failed: dict[str, str], target_cache: Any) -> None:
    """The dispatch's stats into run.json: shards run and failed, actor start-up, the actors' peak memory and
    how much of their time dispatch left unused (actor_idle_share: 1 - busy / (actors x span), from the first
    dispatch to the last shard's end; null when no shard ran)."""
    info["timing_s"]["actor_start"] = None if pool.first_ready is None else round(pool.first_ready, 3)
    info["shards_run"] = [r.shard_id for r in reports]
    if target_cache is not None:  # how many shards' targets a sweep's cache spared decoding
        info["target_cache"] = {"url": target_cache.root, "shards_read": sum(r.targets_from_cache for r in reports),
                                "shards_decoded": sum(not r.targets_from_cache and r.split != GENERATED
                                                      for r in reports)}
    info["failed_shards"] = failed
    info["node_losses"] = list(getattr(pool, "losses", []))  # shards lost with their node, settled
    info["memory_mb"] = {"actors_peak": max((r.peak_rss_mb for r in reports), default=None)}
    usage = pool.usage
    share = None if usage is None else usage.idle_share
    info["actor_idle_share"] = None if share is None else round(share, 4)
    info["actor_busy_s"] = None if share is None else sorted((round(b, 3) for b in usage.busy.values()), reverse=True)
    info["timing_s"]["shards_span"] = None if share is None else round(usage.span, 3)


def _take_output(config: AuditConfig, plan: Plan, *, overwrite: bool, started: str,
                 address: str | None) -> tuple[Lease, set[str], dict]:
    """Take the run lease on the output (refused while another run is live) and find the shards already done;
    with overwrite, clear the output's other memaudit files first. Returns (the lease, done shard ids, the
    run.json written)."""
    out, endpoint = config.output, config.storage.endpoint_url
    planned = {s.id: s.split for s in plan.shards}
    found: dict = {"done": set()}

    def make_info(previous: dict | None) -> dict:
        if not overwrite:
            by_id = {s.id: s for s in plan.shards}
            found["done"] = outputs.prepare(out, fingerprint=plan.fingerprint, config=config.to_dict(),
                                            previous=previous, planned=planned, endpoint_url=endpoint,
                                            expected=lambda sid: plan.image_ids(by_id[sid]))
        found["info"] = new_run_info(config, plan, started=started, previous=None if overwrite else previous,
                                     address=address)
        return found["info"]

    lease, _ = Lease.acquire(out, endpoint, timeout=config.job.lease_timeout, make_info=make_info, replace=overwrite)
    if overwrite:
        outputs.clear(out, endpoint)  # after the lease is ours: never under a live run
    return lease, found["done"], found["info"]


def _check_placement(config: AuditConfig) -> None:
    import ray

    preflight.check_placement(config, ray.nodes(), ray.get_runtime_context().get_node_id())


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


def _reduce(pool: AuditActors, config: AuditConfig, plan: Plan, info: dict, t0: float, lease: Lease, generator: Any) -> Outcome:
    import stats
    import stats.checks

    started = time.time()
    out, endpoint = config.output, config.storage.endpoint_url
    options = storage.storage_options(out, endpoint)
    columns = tuple(dict.fromkeys(stats.io.STATS_COLUMNS + ("source", "row", "target_hash") + labels_and_scores.result_columns(config)))
    outputs.check_parts(out, fingerprint=plan.fingerprint, planned={s.id: s.split for s in plan.shards},
                        endpoint_url=endpoint)  # no part of another run or config is ever reduced
    if not _any_results(out, endpoint):
        log.error("every image was rejected, so there is nothing to reduce; see %s", storage.join(out, "rejects"))
        return _finish(info, lease, t0, "failed", 1)
    results, rejects, _, _ = stats.read_output(out, storage_options=options, columns=columns)
    try:
        counts = stats.checks.check_complete(results, rejects, plan.images)
    except stats.StatsError as exc:  # the parts do not add up to the plan: the output is inconsistent
        raise JobError(str(exc)) from None
    _check_written_ids(plan, results, rejects)
    info["counts"] = counts
    overlap = stats.checks.overlaps(results, config.stats.pairs)
    if overlap:
        message = f"{overlap[0]}. Fix the sources; the parts are kept for inspection."
        log.error("%s", message)
        info["refused"] = message
        return _finish(info, lease, t0, "refused", 1)
    log.info("reducing %d results and %d rejects with stats", results.num_rows, 0 if rejects is None else rejects.num_rows)
    # None unless `detectors` lists companions; the closest pairs are drawn with the CPU generator
    companions = run_detectors(pool, config, plan, results, generator=generator)
    scores, detectors = labels_and_scores.finish(config, results, None if companions is None else companions.detectors)
    companions = labels_and_scores.with_detectors(companions, detectors)  # the discriminator check's row joins the detectors'
    reduction = stats.reduce(results, rejects, settings=config.stats, detectors=detectors)
    rendered = samples.render(generator, config, plan, results, reduction.ranking)  # on the CPU, from the parts
    if rendered is not None:
        storage.put_atomic(outputs.file_url(out, "samples.parquet"), rendered, endpoint)
        rendered = samples.table_from_parquet(rendered)
    info["verdict"] = stats.reduction.verdict_dict(reduction.verdict)
    info["timing_s"]["reduce_and_report"] = round(time.time() - started, 3)
    info = finished(info, t0, "done")
    html = stats.render_report(reduction, results=results, rejects=rejects, samples=rendered, run_info=redact_value(info),
                               companions=companions, discriminator=scores)
    lease.check()  # another run took the output over while this one reduced: write nothing more
    stats.write_outputs(out, reduction, html, storage_options=options)
    lease.release(info)
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


def _check_written_ids(plan: Plan, results, rejects) -> None:
    """Every row's id is a planned id of its split (with check_complete's counts and no repeats: the written
    ids are exactly the planned ones). Raises JobError naming a few strays."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for split, n in plan.images.items():
        want = generated_ids(0, n) if split == GENERATED else plan.ids.get(split)
        if want is None:
            continue
        got = [t.filter(pc.equal(t.column("split"), split)).column("image_id").cast(pa.string())
               for t in (results, rejects) if t is not None and t.num_rows]
        if not got:
            continue
        every = pa.chunked_array([c for g in got for c in g.chunks], pa.string())
        stray = every.filter(pc.invert(pc.is_in(every, value_set=pa.array(want, pa.string())))).to_pylist()
        if stray:
            raise JobError(f"output: split {split} has {len(stray)} rows for images the plan does not have, e.g. "
                           f"{stray[:3]}; re-run with --overwrite")


def _any_results(out: str, endpoint: str | None) -> bool:
    """Whether any results part has a row (parts of all-rejected shards are empty), from their footers."""
    import pyarrow.dataset as ds

    files = outputs.results_files(out, endpoint)
    fs, _ = storage.filesystem(out, endpoint)
    return bool(files) and ds.dataset(files, filesystem=fs, format="parquet").count_rows() > 0


def _finish(info: dict, lease: Lease, t0: float, status: str, code: int, failed: dict | None = None) -> Outcome:
    """End this invocation with `status`: the final run.json, and the output's lease given up."""
    info = finished(info, t0, status)
    lease.release(info)
    return Outcome(code, info, None, failed or {})
