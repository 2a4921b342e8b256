"""The driver: plan, skip what is done, run the rest on actors, reduce with stats, write the report and run.json.

    outcome = run_audit(config, local=True)     # Ray already initialized by the caller (jobs.audit)
    outcome.exit_code                           # 0 done, 1 failed shards / refused / too many rejects

Shards go to actors as they free up (ray.wait). A shard that raises in our code is retried on the next
free actor up to job.shard_retries times, then reported as failed; a dead actor is Ray's to restart and
retry (max_restarts / max_task_retries), and a shard whose actor died beyond that is reported as failed.
Every other shard's parts are kept, so re-running the same command finishes only what is missing.
Progress is plain log lines (readable in a terminal and in `ray job logs`).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import platform
import time
from collections import deque
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from . import outputs, storage
from .actors import SampleRequest, ShardReport, make_actor_class, peak_rss_mb
from .config import GENERATED, AuditConfig, ConfigError
from .plan import Plan, Shard, make_plan

log = logging.getLogger("memaudit")



class JobError(RuntimeError):
    """The job could not finish (no actor could start, the outputs are inconsistent); exit code 1."""


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
    started, t0 = _now(), time.time()
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
    info = _run_info(config, plan, started=started, previous=previous, address=address)
    outputs.write_run_info(out, info, endpoint)

    pool = ActorPool(config, plan.fingerprint, count=max(1, min(fitting, len(pending))))
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
# Actors and dispatch


class ActorPool:
    """Actors of one job, created lazily; `idle` holds those ready for work."""

    def __init__(self, config: AuditConfig, fingerprint: str, *, count: int) -> None:
        self.config, self.fingerprint, self.count = config, fingerprint, count
        self.actors: list = []
        self.idle: deque = deque()
        self.starting: dict = {}  # ready() ref -> actor
        self.created = 0.0
        self.first_ready: float | None = None  # seconds from start() to the first ready actor

    def start(self) -> None:
        if self.actors:
            return
        cls = make_actor_class(self.config)
        res = self.config.resources
        log.info("starting %d actors (%g CPUs, %g GPUs each); each loads the generator once", self.count,
                 res.cpus_per_actor, res.gpus_per_actor)
        self.created = time.time()
        for _ in range(self.count):
            actor = cls.remote(self.config, self.fingerprint)
            self.actors.append(actor)
            self.starting[actor.ready.remote()] = actor

    def on_ready(self, ref, actor) -> None:
        """Handle a finished ready() call: the actor joins `idle`, or the job stops on a bad generator."""
        import ray

        del self.starting[ref]
        try:
            info = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            from recovery import RecoveryError

            if isinstance(exc.cause, RecoveryError):
                raise exc.cause from None
            log.error("an actor could not start: %s", _reason(exc))
            self.actors.remove(actor)
            return
        except ray.exceptions.RayError as exc:
            log.error("an actor could not start: %s", _reason(exc))
            self.actors.remove(actor)
            return
        if self.first_ready is None:
            self.first_ready = time.time() - self.created
        log.info("actor ready on %s (%s, generator loaded in %.1fs)", info["node"], info["device"], info["load_seconds"])
        self.idle.append(actor)

    def drop(self, actor) -> None:
        if actor in self.actors:
            self.actors.remove(actor)
        if actor in self.idle:
            self.idle.remove(actor)

    def any_ready(self, timeout: float) -> Any:
        """Wait for one actor to be ready (for the samples task); None if none is."""
        import ray

        self.start()
        deadline = time.time() + timeout
        while not self.idle and self.starting and time.time() < deadline:
            ready, _ = ray.wait(list(self.starting), num_returns=1, timeout=max(0.1, deadline - time.time()))
            for ref in ready:
                self.on_ready(ref, self.starting[ref])
        return self.idle[0] if self.idle else None

    def close(self) -> None:
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors.clear()
        self.idle.clear()
        self.starting.clear()


def prepare_encoder(pool: ActorPool, config: AuditConfig) -> None:
    """recovery.start: encoder: one actor trains the learned start's encoder (or finds it cached beside the
    outputs) before any shard runs, so that every shard, retry and resume uses the same one."""
    if config.recovery.start != "encoder":
        return
    import ray

    actor = pool.any_ready(config.job.actor_start_timeout)
    if actor is None:
        raise RuntimeError("no actor started, so the learned start's encoder could not be trained")
    t = time.time()
    url = ray.get(actor.prepare_encoder.remote())
    log.info("learned start: encoder ready at %s (%.1fs)", url, time.time() - t)


def run_shards(pool: ActorPool, shards: list[Shard], config: AuditConfig) -> tuple[list[ShardReport], dict[str, str]]:
    """Run shards on the pool's actors as they free up; returns (reports of done shards, {failed shard id: why})."""
    import ray

    if not shards:
        return [], {}
    pool.start()
    prepare_encoder(pool, config)
    retries, every = config.job.shard_retries, config.job.progress_seconds
    queue: deque[tuple[Shard, int]] = deque((s, 0) for s in shards)
    running: dict = {}  # ref -> (actor, shard, attempt)
    probing: dict = {}  # ping ref -> actor, after its task died with it
    reports: list[ShardReport] = []
    failed: dict[str, str] = {}
    progress = Progress(total_shards=len(shards), total_images=sum(s.size for s in shards))
    next_line = time.time() + every
    while queue or running:
        while pool.idle and queue:
            actor = pool.idle.popleft()
            shard, attempt = queue.popleft()
            running[actor.run_shard.remote(shard)] = (actor, shard, attempt)
            progress.begin()
        waiting = list(running) + list(pool.starting) + list(probing)
        if not waiting:
            for shard, _ in queue:
                failed[shard.id] = "no actor is left to run it"
            queue.clear()
            break
        if not pool.idle and not running and time.time() - pool.created > config.job.actor_start_timeout:
            res = config.resources
            raise JobError(f"no actor started within {config.job.actor_start_timeout:g}s; each needs "
                           f"{res.cpus_per_actor:g} CPUs and {res.gpus_per_actor:g} GPUs, the cluster has "
                           f"{_resources()} (see `ray status`)")
        ready, _ = ray.wait(waiting, num_returns=1, timeout=max(0.05, next_line - time.time()))
        for ref in ready:
            if ref in pool.starting:
                pool.on_ready(ref, pool.starting[ref])
                continue
            if ref in probing:
                actor = probing.pop(ref)
                try:
                    ray.get(ref)
                    pool.idle.append(actor)
                except ray.exceptions.RayError:
                    log.warning("an actor is gone for good; %d left", len(pool.actors) - 1)
                    pool.drop(actor)
                continue
            actor, shard, attempt = running.pop(ref)
            try:
                report = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # raised by our code in the actor
                pool.idle.append(actor)  # at the back: a retry goes to another actor when there is one
                if attempt < retries:
                    log.warning("shard %s failed (%s); retry %d of %d", shard.id, _reason(exc), attempt + 1, retries)
                    queue.appendleft((shard, attempt + 1))
                else:
                    failed[shard.id] = _reason(exc)
                    log.error("shard %s failed after %d attempts: %s", shard.id, attempt + 1, failed[shard.id])
                continue
            except ray.exceptions.RayError as exc:  # the actor died, and Ray's own retries are spent
                failed[shard.id] = f"actor died: {_reason(exc)}"
                log.error("shard %s failed: %s", shard.id, failed[shard.id])
                probing[actor.ping.remote()] = actor
                continue
            pool.idle.append(actor)
            reports.append(report)
            progress.add(report)
        if time.time() >= next_line:
            busy = len({id(a) for a, _, _ in running.values()})
            log.info("%s", progress.line() + f", actors {busy} busy/{len(pool.idle)} idle/{len(pool.starting)} starting")
            next_line = time.time() + every
    log.info("%s", progress.line(final=True))
    return reports, failed


class Progress:
    """Shards and images done in this invocation, images/s since the first shard, ETA."""

    def __init__(self, *, total_shards: int, total_images: int) -> None:
        self.total_shards, self.total_images = total_shards, total_images
        self.shards = self.images = self.rejects = 0
        self.started: float | None = None  # the first dispatch: actor start-up is not part of the rate

    def begin(self) -> None:
        if self.started is None:
            self.started = time.time()

    def add(self, report: ShardReport) -> None:
        self.shards += 1
        self.images += report.images
        self.rejects += report.rejects

    def line(self, final: bool = False) -> str:
        elapsed = max(1e-9, time.time() - self.started) if self.started is not None else 0.0
        rate = self.images / elapsed if elapsed else 0.0
        left = self.total_images - self.images
        eta = _duration(left / rate) if rate > 0 else "unknown"
        head = "done:" if final else "progress:"
        return (f"{head} shards {self.shards}/{self.total_shards}, images {self.images}/{self.total_images} "
                f"({self.rejects} rejected), {rate:.1f} images/s, elapsed {_duration(elapsed)}"
                + ("" if final else f", ETA {eta}"))


# ---------------------------------------------------------------------------------------------------------
# Reduce, samples, report


def _reduce(pool: ActorPool, config: AuditConfig, plan: Plan, info: dict, t0: float) -> Outcome:
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
    reduction = stats.reduce(results, rejects, settings=config.stats)
    samples = _samples(pool, config, plan, results, reduction.ranking)
    if samples is not None:
        storage.put_atomic(outputs.file_url(out, "samples.parquet"), samples, endpoint)
        samples = _table_from_parquet(samples)
    info["verdict"] = stats.reduction.verdict_dict(reduction.verdict)
    info["timing_s"]["reduce_and_report"] = round(time.time() - started, 3)
    info = _finished(info, t0, "done")
    html = stats.render_report(reduction, results=results, rejects=rejects, samples=samples, run_info=info)
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


def pick_samples(results: pa.Table, plan: Plan) -> dict[str, list[SampleRequest]]:
    """Best, median and worst recovery per split (images with a finite error), as render requests."""
    source_of = _source_indexes(plan)
    chosen: dict[str, list[SampleRequest]] = {}
    for split in pc.unique(results.column("split")).to_pylist():
        part = results.filter(pc.equal(results.column("split"), split))
        errors = part.column("error").to_numpy(zero_copy_only=False)
        order = [int(i) for i in sorted(range(len(errors)), key=lambda i: (errors[i], i)) if math.isfinite(errors[i])]
        if not order:
            continue
        picks = {"best": order[0], "median": order[(len(order) - 1) // 2], "worst": order[-1]}
        chosen[split] = [_request(part, i, split, rank, source_of) for rank, i in picks.items()]
    return chosen


def pick_top(results: pa.Table, plan: Plan, ranking: pa.Table, *, top_images: int) -> dict[str, list[SampleRequest]]:
    """The report's "Most memorized training images" as render requests, rank "top-<n>" (n: the image's rank in
    ranking.parquet): per memorization pair the flagged images, at most top_images, else the min(10, top_images)
    best-ranked. An image ranked against two references is rendered once, under its first pair."""
    source_of = _source_indexes(plan)
    chosen: dict[str, list[SampleRequest]] = {}
    seen: set[tuple[str, str]] = set()
    pairs = ranking.select(["split", "reference"]).group_by(["split", "reference"], use_threads=False).aggregate([])
    for split, reference in zip(pairs.column("split").to_pylist(), pairs.column("reference").to_pylist()):
        mine = ranking.filter(pc.and_(pc.equal(ranking.column("split"), split),
                                      pc.equal(ranking.column("reference"), reference)))
        flagged = int(pc.sum(mine.column("flagged")).as_py() or 0)  # first: the rows are sorted by p-value
        top = mine.slice(0, min(flagged, top_images) if flagged else min(10, top_images)).to_pylist()
        part = results.filter(pc.equal(results.column("split"), split))
        wanted = pa.array([r["image_id"] for r in top], pa.string())
        where = pc.index_in(wanted, value_set=part.column("image_id").combine_chunks().cast(pa.string())).to_pylist()
        for row, i in zip(top, where):
            if (split, row["image_id"]) in seen or i is None:
                continue
            seen.add((split, row["image_id"]))
            chosen.setdefault(split, []).append(_request(part, i, split, f"top-{row['rank']}", source_of))
    return chosen


def _source_indexes(plan: Plan) -> dict[tuple[str, str], int]:
    return {(split, url): listing.index for split, found in plan.listings.items() for listing in found
            for url in listing.files}


def _request(part: pa.Table, i: int, split: str, rank: str, source_of: dict[tuple[str, str], int]) -> SampleRequest:
    source = part.column("source")[i].as_py()
    index = -1 if split == GENERATED else source_of[(split, source)]
    return SampleRequest(split, rank, part.column("image_id")[i].as_py(), float(part.column("error")[i].as_py()), index,
                         source, int(part.column("row")[i].as_py()))


def _samples(pool: ActorPool, config: AuditConfig, plan: Plan, results: pa.Table, ranking: pa.Table) -> bytes | None:
    """samples.parquet bytes, rendered by one actor per split; None (logged, and noted in run.json) if impossible."""
    import ray

    requests = pick_samples(results, plan)
    for split, top in pick_top(results, plan, ranking, top_images=config.stats.top_images).items():
        requests.setdefault(split, []).extend(top)
    if not requests:
        return None
    actor = pool.any_ready(config.job.actor_start_timeout)
    if actor is None:
        log.warning("samples: no actor could start; the report has no sample images")
        return None
    tables = []
    for split, reqs in requests.items():
        # One recover() per split: ids are unique within a split, and one image may hold several ranks.
        unique = list({r.image_id: r for r in reqs}.values())
        try:
            data = ray.get(actor.render_samples.remote(unique))
        except ray.exceptions.RayError as exc:
            log.warning("samples: rendering %s failed (%s); the report has no sample images for it", split, _reason(exc))
            continue
        table = _table_from_parquet(data)
        by_id = {row["image_id"]: row for row in table.to_pylist()}
        rows = [{**by_id[r.image_id], "rank": r.rank} for r in reqs]
        for row in rows:
            if not math.isclose(row["error"], row["results_error"], rel_tol=1e-3, abs_tol=1e-6):
                log.warning("samples: %s re-recovered to error %.6g, its results row says %.6g (recovery is not "
                            "reproducible on this device)", row["image_id"], row["error"], row["results_error"])
        tables.append(pa.Table.from_pylist(rows, schema=table.schema))
    if not tables:
        return None
    buf = pa.BufferOutputStream()
    import pyarrow.parquet as pq

    pq.write_table(pa.concat_tables(tables), buf)
    return buf.getvalue().to_pybytes()


def _table_from_parquet(data: bytes) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data))


# ---------------------------------------------------------------------------------------------------------
# run.json


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("memaudit", "torch", "ray", "pyarrow", "numpy", "fsspec", "s3fs"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _run_info(config: AuditConfig, plan: Plan, *, started: str, previous: dict | None, address: str | None) -> dict:
    history = list(previous.get("invocations", [])) if previous else []
    return {
        "status": "running",
        "fingerprint": plan.fingerprint,
        "config_fingerprint": config.fingerprint,
        "config": config.to_dict(),
        "config_path": config.config_path,
        "versions": versions(),
        "ray_address": address or "local",
        "started": started,
        "finished": None,
        "plan": {"shards": len(plan.shards), "images": plan.images, "available": plan.available,
                 "shard_size": config.targets.shard_size},
        "shards_run": [],
        "failed_shards": {},
        "counts": None,
        "invocations": history,
    }


def _finished(info: dict, t0: float, status: str) -> dict:
    info = dict(info)
    info["memory_mb"] = {**info.get("memory_mb", {}), "driver_peak": peak_rss_mb()}
    info["status"] = status
    info["finished"] = _now()
    info["seconds"] = round(time.time() - t0, 3)
    info["invocations"] = info["invocations"] + [{
        "started": info["started"], "finished": info["finished"], "status": status,
        "shards_run": len(info["shards_run"]), "failed_shards": sorted(info["failed_shards"]),
    }]
    return info


def _finish(info: dict, config: AuditConfig, t0: float, status: str, code: int, failed: dict | None = None) -> Outcome:
    info = _finished(info, t0, status)
    outputs.write_run_info(config.output, info, config.storage.endpoint_url)
    return Outcome(code, info, None, failed or {})


# ---------------------------------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """One line for a Ray error: the cause's type and message, without Ray's traceback banner."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        text = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")
    text = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _resources() -> str:
    import ray

    total = ray.cluster_resources()
    return ", ".join(f"{k} {total[k]:g}" for k in ("CPU", "GPU") if k in total) or "nothing"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")

