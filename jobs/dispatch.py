"""Dispatch: the job's actors and the loop that hands them shards as they free up.

    actors = AuditActors(config, fingerprint, count=2)
    reports, failed = run_shards(actors, pending, config)

A shard that raises in memaudit's code is retried on the next free actor up to job.shard_retries times,
then reported as failed; a dead actor is Ray's to restart and retry (max_restarts / max_task_retries), and
a shard whose actor died beyond that is reported as failed.

Longest work first (dispatch_order): real splits' shards before the generated split's (a real image costs
the search ~5-10x a generated one), larger shards before smaller ones, ties in plan order; a retried shard
goes to the front. With the finer default shards (targets.shard_size auto) no actor then sits idle at the
end behind one long shard; the loop measures it (progress.ActorUsage: AuditActors.usage, run.json's
actor_idle_share).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from typing import Any, Iterable

from .actors import PROGRESS_GROUP, ShardReport, make_actor_class
from .config import AuditConfig
from .errors import JobError
from .plan import Shard
from .progress import ActorUsage, Progress

log = logging.getLogger("memaudit")


class AuditActors:
    """The AuditActor handles of one job, started lazily; `idle` holds those ready for work.

    (Not ray.util.ActorPool: this one also tracks actors still starting, drops dead ones, and raises a
    generator that cannot be loaded as the job's error.)"""

    def __init__(self, config: AuditConfig, fingerprint: str, *, count: int, target_cache: Any = None) -> None:
        self.config, self.fingerprint, self.count = config, fingerprint, count
        self.target_cache = target_cache  # jobs.targets.TargetCache in a checkpoint sweep
        self.handles: list = []
        self.idle: deque = deque()
        self.starting: dict = {}  # ready() ref -> actor
        self.created = 0.0
        self.first_ready: float | None = None  # seconds from start() to the first ready actor
        self.usage: ActorUsage | None = None  # how busy the actors were while shards ran (run_shards)

    def start(self) -> None:
        if self.handles:
            return
        cls = make_actor_class(self.config)
        res = self.config.resources
        log.info("starting %d actors (%g CPUs, %g GPUs each); each loads the generator once", self.count,
                 res.cpus_per_actor, res.gpus_per_actor)
        self.created = time.time()
        for _ in range(self.count):
            actor = cls.remote(self.config, self.fingerprint, self.target_cache)
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
        log.info("actor ready on %s (%s, generator loaded in %.1fs, search batch %s)", info["node"], info["device"],
                 info["load_seconds"], info.get("batch_size"))
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


def run_shards(actors: AuditActors, shards: list[Shard], config: AuditConfig, *,
               lease: Any = None, start_cap: int | None = None) -> tuple[list[ShardReport], dict[str, str]]:
    """Run shards on the job's actors as they free up; returns (reports of done shards, {failed shard id: why}).

    lease: the run's jobs.lease.Lease; the loop stops (LeaseLost) as soon as another run took the output over.
    start_cap: recovery.start_cap "auto" as measured on the generated split (jobs.start_cap), for real shards.
    A second call on the same actors (the real splits after the generated one) adds to the same usage.
    """
    if not shards:
        return [], {}
    actors.start()
    prepare_encoder(actors, config)
    loop = _ShardLoop(actors, shards, config, lease, start_cap)
    if actors.usage is not None:
        loop.usage = actors.usage
    actors.usage = loop.usage
    return loop.run()


def dispatch_order(shards: Iterable[Shard]) -> list[Shard]:
    """Longest work first: real splits' shards before the generated split's, larger before smaller; a stable
    sort, so equal shards keep the plan's order and the order is the same in every run."""
    return sorted(shards, key=lambda s: (s.generated, -s.size))


class _ShardLoop:
    """The dispatch loop's state: queued and running shards, actors being probed, progress polls."""

    def __init__(self, actors: AuditActors, shards: list[Shard], config: AuditConfig, lease: Any,
                 start_cap: int | None = None) -> None:
        self.actors, self.config, self.lease, self.start_cap = actors, config, lease, start_cap
        self.queue: deque[tuple[Shard, int]] = deque((s, 0) for s in dispatch_order(shards))
        self.running: dict = {}  # ref -> (actor, shard, attempt)
        self.began: dict = {}  # ref -> when its shard was dispatched
        self.usage = ActorUsage()
        self.probing: dict = {}  # ping ref -> actor, after its task died with it
        self.polls: dict = {}  # progress() ref -> shard id
        self.reports: list[ShardReport] = []
        self.failed: dict[str, str] = {}
        planned: Counter[str] = Counter()
        for s in shards:
            planned[s.split] += s.size
        self.progress = Progress(total_shards=len(shards), planned=planned)

    def run(self) -> tuple[list[ShardReport], dict[str, str]]:
        import ray

        every = self.config.job.progress_seconds
        poll_every = min(every, 1.0 if self.progress.bar else every / 2)
        next_line, next_poll = time.time() + every, time.time() + poll_every
        while self.queue or self.running:
            if self.lease is not None:
                self.lease.check()
            self._dispatch()
            if not (self.running or self.actors.starting or self.probing):
                for shard, _ in self.queue:
                    self.failed[shard.id] = "no actor is left to run it"
                self.queue.clear()
                break
            self._check_start_timeout()
            waiting = list(self.running) + list(self.actors.starting) + list(self.probing) + list(self.polls)
            ready, _ = ray.wait(waiting, num_returns=1, timeout=max(0.05, min(next_line, next_poll) - time.time()))
            for ref in ready:
                self._handle(ref)
            if time.time() >= next_poll:
                self._poll()
                self.progress.draw()
                next_poll = time.time() + poll_every
            if time.time() >= next_line:
                busy = len({id(a) for a, _, _ in self.running.values()})
                self.progress.log(f", actors {busy} busy/{len(self.actors.idle)} idle/{len(self.actors.starting)} starting")
                next_line = time.time() + every
        self.progress.log(final=True)
        self.usage.actors.update(id(a) for a in self.actors.idle)  # ready but never given a shard: idle too
        log.info("%s", self.usage.describe())
        return self.reports, self.failed

    def _dispatch(self) -> None:
        while self.actors.idle and self.queue:
            actor = self.actors.idle.popleft()
            shard, attempt = self.queue.popleft()
            ref = actor.run_shard.remote(shard, self.start_cap)
            self.running[ref], self.began[ref] = (actor, shard, attempt), time.time()
            self.progress.begin(shard)

    def _check_start_timeout(self) -> None:
        timeout = self.config.job.actor_start_timeout
        if not self.actors.idle and not self.running and time.time() - self.actors.created > timeout:
            res = self.config.resources
            raise JobError(f"no actor started within {timeout:g}s; each needs {res.cpus_per_actor:g} CPUs and "
                           f"{res.gpus_per_actor:g} GPUs, the cluster has {_resources()} (see `ray status`)")

    def _poll(self) -> None:
        """Ask every busy actor (without a poll in flight) how far its shard is: images, not shards (issue 11)."""
        asked = set(self.polls.values())
        for actor, shard, _ in self.running.values():
            if shard.id not in asked:
                self.polls[actor.progress.options(concurrency_group=PROGRESS_GROUP).remote()] = shard.id

    def _handle(self, ref) -> None:
        import ray

        if ref in self.actors.starting:
            self.actors.on_ready(ref, self.actors.starting[ref])
        elif ref in self.polls:
            shard_id = self.polls.pop(ref)
            try:
                state = ray.get(ref)
            except ray.exceptions.RayError:
                return  # the actor is busy dying: its shard's fate comes through run_shard
            if state.get("shard") == shard_id and any(s.id == shard_id for _, s, _ in self.running.values()):
                self.progress.partial[shard_id] = int(state.get("done", 0))
        elif ref in self.probing:
            actor = self.probing.pop(ref)
            try:
                ray.get(ref)
                self.actors.idle.append(actor)
            except ray.exceptions.RayError:
                log.warning("an actor is gone for good; %d left", len(self.actors.handles) - 1)
                self.actors.drop(actor)
        else:
            self._finished(ref)

    def _finished(self, ref) -> None:
        import ray

        actor, shard, attempt = self.running.pop(ref)
        self.usage.ran(id(actor), self.began.pop(ref), time.time())
        self.progress.partial.pop(shard.id, None)
        try:
            report = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # raised by our code in the actor (a storage outage among them)
            self.actors.idle.append(actor)  # at the back: a retry goes to another actor when there is one
            if attempt < self.config.job.shard_retries:
                log.warning("shard %s failed (%s); retry %d of %d", shard.id, reason(exc), attempt + 1,
                            self.config.job.shard_retries)
                self.queue.appendleft((shard, attempt + 1))
            else:
                self.failed[shard.id] = reason(exc)
                log.error("shard %s failed after %d attempts: %s", shard.id, attempt + 1, self.failed[shard.id])
            return
        except ray.exceptions.RayError as exc:  # the actor died, and Ray's own retries are spent
            self.failed[shard.id] = f"actor died: {reason(exc)}"
            log.error("shard %s failed: %s", shard.id, self.failed[shard.id])
            self.probing[actor.ping.remote()] = actor
            return
        self.actors.idle.append(actor)
        self.reports.append(report)
        self.progress.add(report)


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
