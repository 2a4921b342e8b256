"""Dispatch: the job's actors and the loop that hands them shards as they free up.

    actors = AuditActors(config, fingerprint, count=2)
    reports, failed = run_shards(actors, pending, config)

A shard that raises in memaudit's code is retried on the next free actor up to job.shard_retries times,
then reported as failed; a dead actor is Ray's to restart and retry (max_restarts / max_task_retries), and
a shard whose actor died beyond that is reported as failed.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from .actors import ShardReport, make_actor_class
from .config import AuditConfig
from .errors import JobError
from .plan import Shard
from .progress import Progress

log = logging.getLogger("memaudit")


class AuditActors:
    """The AuditActor handles of one job, started lazily; `idle` holds those ready for work.

    (Not ray.util.ActorPool: this one also tracks actors still starting, drops dead ones, and raises a
    generator that cannot be loaded as the job's error.)"""

    def __init__(self, config: AuditConfig, fingerprint: str, *, count: int) -> None:
        self.config, self.fingerprint, self.count = config, fingerprint, count
        self.handles: list = []
        self.idle: deque = deque()
        self.starting: dict = {}  # ready() ref -> actor
        self.created = 0.0
        self.first_ready: float | None = None  # seconds from start() to the first ready actor

    def start(self) -> None:
        if self.handles:
            return
        cls = make_actor_class(self.config)
        res = self.config.resources
        log.info("starting %d actors (%g CPUs, %g GPUs each); each loads the generator once", self.count,
                 res.cpus_per_actor, res.gpus_per_actor)
        self.created = time.time()
        for _ in range(self.count):
            actor = cls.remote(self.config, self.fingerprint)
            self.handles.append(actor)
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
            log.error("an actor could not start: %s", reason(exc))
            self.handles.remove(actor)
            return
        except ray.exceptions.RayError as exc:
            log.error("an actor could not start: %s", reason(exc))
            self.handles.remove(actor)
            return
        if self.first_ready is None:
            self.first_ready = time.time() - self.created
        log.info("actor ready on %s (%s, generator loaded in %.1fs)", info["node"], info["device"], info["load_seconds"])
        self.idle.append(actor)

    def drop(self, actor) -> None:
        if actor in self.handles:
            self.handles.remove(actor)
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

        for actor in self.handles:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.handles.clear()
        self.idle.clear()
        self.starting.clear()


def prepare_encoder(actors: AuditActors, config: AuditConfig) -> None:
    """recovery.start: encoder: one actor trains the learned start's encoder (or finds it cached beside the
    outputs) before any shard runs, so that every shard, retry and resume uses the same one."""
    if config.recovery.start != "encoder":
        return
    import ray

    actor = actors.any_ready(config.job.actor_start_timeout)
    if actor is None:
        raise RuntimeError("no actor started, so the learned start's encoder could not be trained")
    t = time.time()
    url = ray.get(actor.prepare_encoder.remote())
    log.info("learned start: encoder ready at %s (%.1fs)", url, time.time() - t)


def run_shards(actors: AuditActors, shards: list[Shard], config: AuditConfig) -> tuple[list[ShardReport], dict[str, str]]:
    """Run shards on the job's actors as they free up; returns (reports of done shards, {failed shard id: why})."""
    import ray

    if not shards:
        return [], {}
    actors.start()
    prepare_encoder(actors, config)
    retries, every = config.job.shard_retries, config.job.progress_seconds
    queue: deque[tuple[Shard, int]] = deque((s, 0) for s in shards)
    running: dict = {}  # ref -> (actor, shard, attempt)
    probing: dict = {}  # ping ref -> actor, after its task died with it
    reports: list[ShardReport] = []
    failed: dict[str, str] = {}
    progress = Progress(total_shards=len(shards), total_images=sum(s.size for s in shards))
    next_line = time.time() + every
    while queue or running:
        while actors.idle and queue:
            actor = actors.idle.popleft()
            shard, attempt = queue.popleft()
            running[actor.run_shard.remote(shard)] = (actor, shard, attempt)
            progress.begin()
        waiting = list(running) + list(actors.starting) + list(probing)
        if not waiting:
            for shard, _ in queue:
                failed[shard.id] = "no actor is left to run it"
            queue.clear()
            break
        if not actors.idle and not running and time.time() - actors.created > config.job.actor_start_timeout:
            res = config.resources
            raise JobError(f"no actor started within {config.job.actor_start_timeout:g}s; each needs "
                           f"{res.cpus_per_actor:g} CPUs and {res.gpus_per_actor:g} GPUs, the cluster has "
                           f"{_resources()} (see `ray status`)")
        ready, _ = ray.wait(waiting, num_returns=1, timeout=max(0.05, next_line - time.time()))
        for ref in ready:
            if ref in actors.starting:
                actors.on_ready(ref, actors.starting[ref])
                continue
            if ref in probing:
                actor = probing.pop(ref)
                try:
                    ray.get(ref)
                    actors.idle.append(actor)
                except ray.exceptions.RayError:
                    log.warning("an actor is gone for good; %d left", len(actors.handles) - 1)
                    actors.drop(actor)
                continue
            actor, shard, attempt = running.pop(ref)
            try:
                report = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # raised by our code in the actor
                actors.idle.append(actor)  # at the back: a retry goes to another actor when there is one
                if attempt < retries:
                    log.warning("shard %s failed (%s); retry %d of %d", shard.id, reason(exc), attempt + 1, retries)
                    queue.appendleft((shard, attempt + 1))
                else:
                    failed[shard.id] = reason(exc)
                    log.error("shard %s failed after %d attempts: %s", shard.id, attempt + 1, failed[shard.id])
                continue
            except ray.exceptions.RayError as exc:  # the actor died, and Ray's own retries are spent
                failed[shard.id] = f"actor died: {reason(exc)}"
                log.error("shard %s failed: %s", shard.id, failed[shard.id])
                probing[actor.ping.remote()] = actor
                continue
            actors.idle.append(actor)
            reports.append(report)
            progress.add(report)
        if time.time() >= next_line:
            busy = len({id(a) for a, _, _ in running.values()})
            log.info("%s", progress.line() + f", actors {busy} busy/{len(actors.idle)} idle/{len(actors.starting)} starting")
            next_line = time.time() + every
    log.info("%s", progress.line(final=True))
    return reports, failed


def reason(exc: BaseException) -> str:
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
