"""Dispatch: the loop that hands the job's actors (jobs.fleet) shards as they free up.

    actors = AuditActors(config, fingerprint, count=2)
    reports, failed = run_shards(actors, pending, config)

A shard that raises in memaudit's code is retried on the next free actor up to job.shard_retries times,
then reported as failed. A shard whose actor died with it (its process or its node) goes back to the front
of the queue at once, so a surviving actor takes it; whether that used up an attempt is settled later
(jobs.losses): a lost node or a lost connection does not, a process that died on a node that lived on
does. The lost actor comes back (jobs.fleet) when Ray has restarted it on a node with room. While no actor
is alive the loop waits for one, up to job.actor_start_timeout; then JobError says how to resume. A shard
run twice rewrites its own parts (one atomic put each), so every image still ends as one row.

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

from recovery.batching import BatchOutputError

from . import raylink
from .actors import PROGRESS_GROUP, GeneratorStalled, ShardReport
from .sections import AuditConfig
from .errors import JobError
from .fleet import AuditActors
from .losses import SETTLE_SECONDS, Lost, LostShards
from .plan import Shard
from .progress import ActorUsage, Progress
from .raylink import reason

log = logging.getLogger("memaudit")

__all__ = ["AuditActors", "dispatch_order", "prepare_encoder", "reason", "run_shards"]


def prepare_encoder(actors: AuditActors, config: AuditConfig) -> None:
    """recovery.start: encoder: one actor trains the learned start's encoder (or finds it cached beside the
    outputs) before any shard runs, so that every shard, retry and resume uses the same one."""
    if config.recovery.start != "encoder":
        return
    import ray

    actor = actors.any_ready(config.job.actor_start_timeout)
    if actor is None:
        raise JobError(f"no actor started within {config.job.actor_start_timeout:g}s, so the learned start's encoder "
                       "could not be trained (see `ray status`); re-run the same command to resume")
    t = time.time()
    url = ray.get(actor.prepare_encoder.remote())
    log.info("learned start: encoder ready at %s (%.1fs)", url, time.time() - t)


def run_shards(actors: AuditActors, shards: list[Shard], config: AuditConfig, *,
               lease: Any = None, start_cap: int | None = None) -> tuple[list[ShardReport], dict[str, str]]:
    """Run shards on the job's actors as they free up; returns (reports of done shards, {failed shard id: why}).

    lease: the run's jobs.lease.Lease; the loop stops (LeaseLost) as soon as another run took the output over.
    start_cap: recovery.start_cap "auto" as measured on the generated split (jobs.start_cap), for real shards.
    A second call on the same actors (the real splits after the generated one) adds to the same usage.

    Raises:
        JobError: no actor was alive for job.actor_start_timeout (no node could host one).
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
    """The dispatch loop's state: queued, running and lost shards, attempts, progress polls."""

    def __init__(self, actors: AuditActors, shards: list[Shard], config: AuditConfig, lease: Any,
                 start_cap: int | None = None) -> None:
        self.actors, self.config, self.lease, self.start_cap = actors, config, lease, start_cap
        self.queue: deque[Shard] = deque(dispatch_order(shards))
        self.attempts: Counter[str] = Counter()  # shard id -> failed attempts (the shard's own failures)
        self.running: dict = {}  # ref -> (actor, shard)
        self.began: dict = {}  # ref -> when its shard was dispatched
        self.usage = ActorUsage()
        self.lost = LostShards(raylink.alive_nodes)
        self.waiting = False  # no actor alive, and the log said so
        self.polls: dict = {}  # progress() ref -> shard id
        self.reports: list[ShardReport] = []
        self.done: set[str] = set()
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
            for actor, entry, cause in self.lost.due():
                self._settled(entry, cause)
            if not (self.running or self.actors.starting):
                for shard in self.queue:
                    self.failed[shard.id] = "no actor is left to run it"
                self.queue.clear()
                break
            self._check_capacity()
            waiting = list(self.running) + list(self.actors.starting) + list(self.polls)
            timeout = min(next_line, next_poll) - time.time()
            if self.lost:
                timeout = min(timeout, SETTLE_SECONDS)
            for ref in ray.wait(waiting, num_returns=1, timeout=max(0.05, timeout))[0]:
                self._handle(ref)
            if time.time() >= next_poll:
                self._poll()
                self.progress.draw()
                next_poll = time.time() + poll_every
            if time.time() >= next_line:
                self.progress.log(self._actors_line())
                next_line = time.time() + every
        self.progress.log(final=True)
        self.usage.actors.update(id(a) for a in self.actors.idle)  # ready but never given a shard: idle too
        log.info("%s", self.usage.describe())
        return self.reports, self.failed

    def _actors_line(self) -> str:
        busy = len({id(a) for a, _ in self.running.values()})
        restarting = len(self.actors.restarting)
        starting = len(self.actors.starting) - restarting
        return (f", actors {busy} busy/{len(self.actors.idle)} idle/{starting} starting"
                + (f"/{restarting} restarting" if restarting else ""))

    def _dispatch(self) -> None:
        while self.actors.idle and self.queue:
            actor = self.actors.idle.popleft()
            shard = self.queue.popleft()
            # No retry by Ray: if the actor dies, its shard comes back to this queue (see the module doc)
            ref = actor.run_shard.options(max_task_retries=0).remote(shard, self.start_cap)
            self.running[ref], self.began[ref] = (actor, shard), time.time()
            self.progress.begin(shard)

    def _check_capacity(self) -> None:
        """While no actor is alive, wait for Ray to start or restart one (an autoscaler may be adding a node),
        up to job.actor_start_timeout from when one was last alive; then stop with JobError."""
        now = time.time()
        if self.actors.idle or self.running:
            self.actors.last_alive, self.waiting = now, False
            return
        timeout = self.config.job.actor_start_timeout
        res = self.config.resources
        needs = (f"each needs {res.cpus_per_actor:g} CPUs and {res.gpus_per_actor:g} GPUs, the cluster has "
                 f"{raylink.resources()}")
        if now - self.actors.last_alive > timeout:
            raise JobError(f"no node could host an actor for {timeout:g}s ({needs}; see `ray status`). "
                           "Finished shards are kept: re-run the same command to resume")
        if not self.waiting and self.actors.first_ready is not None:
            log.warning("no actor is running: waiting up to %.0fs for a node that can host one (%s)",
                        timeout - (now - self.actors.last_alive), needs)
            self.waiting = True

    def _poll(self) -> None:
        """Ask every busy actor (without a poll in flight) how far its shard is: images, not shards."""
        asked = set(self.polls.values())
        for actor, shard in self.running.values():
            if shard.id not in asked:
                self.polls[actor.progress.options(concurrency_group=PROGRESS_GROUP).remote()] = shard.id

    def _handle(self, ref) -> None:
        import ray

        if ref in self.actors.starting:
            actor = self.actors.starting[ref]
            placement = self.actors.on_ready(ref, actor)
            if actor in self.lost and (placement is not None or actor not in self.actors.handles):
                self._settled(*self.lost.came_back(actor, placement))
        elif ref in self.polls:
            shard_id = self.polls.pop(ref)
            try:
                state = ray.get(ref)
            except ray.exceptions.RayError:
                return  # the actor is busy dying: its shard's fate comes through run_shard
            if state.get("shard") == shard_id and any(s.id == shard_id for _, s in self.running.values()):
                self.progress.partial[shard_id] = int(state.get("done", 0))
        else:
            self._finished(ref)

    def _finished(self, ref) -> None:
        import ray

        actor, shard = self.running.pop(ref)
        self.usage.ran(id(actor), self.began.pop(ref), time.time())
        self.progress.partial.pop(shard.id, None)
        try:
            report = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # raised by our code in the actor (a storage outage among them)
            if isinstance(exc.cause, BatchOutputError):  # G itself changes with the batch size: no retry can help
                raise exc.cause from None
            if isinstance(exc.cause, GeneratorStalled):  # G is still inside a forward pass there: a fresh process
                ray.kill(actor, no_restart=False)
                self.actors.rejoin(actor)
            else:
                self.actors.idle.append(actor)  # at the back: a retry goes to another actor when there is one
            self._failed_attempt(shard, reason(exc))
            return
        except ray.exceptions.RayError as exc:  # the actor's process or node died, or it lost contact
            self._lose(actor, shard, exc)
            return
        self.actors.idle.append(actor)
        if shard.id not in self.done:  # (a shard run twice after a lost connection reports once)
            self.done.add(shard.id)
            self.failed.pop(shard.id, None)
            self.reports.append(report)
            self.progress.add(report)

    def _failed_attempt(self, shard: Shard, why: str) -> None:
        """The shard itself failed once more: retried at the front of the queue up to job.shard_retries times."""
        self.attempts[shard.id] += 1
        attempt, retries = self.attempts[shard.id], self.config.job.shard_retries
        if shard.id in self.done:
            return
        if attempt <= retries:
            log.warning("shard %s failed (%s); retry %d of %d", shard.id, why, attempt, retries)
            if not self._pending(shard):
                self.queue.appendleft(shard)
            return
        self.failed[shard.id] = why
        if shard in self.queue:
            self.queue.remove(shard)
        log.error("shard %s failed after %d attempts: %s", shard.id, attempt, why)

    def _pending(self, shard: Shard) -> bool:
        return shard in self.queue or any(s.id == shard.id for _, s in self.running.values())

    def _lose(self, actor, shard: Shard, exc: BaseException) -> None:
        """run_shard died with its actor: the shard goes back to the queue now, uncounted (settled later:
        jobs.losses), and the actor waits for Ray's restart."""
        entry = self.lost.add(actor, shard, self.actors.placed.get(actor), reason(exc))
        self.progress.running.pop(shard.id, None)
        self.polls = {r: s for r, s in self.polls.items() if s != shard.id}
        self.actors.rejoin(actor)
        if shard.id not in self.failed and not self._pending(shard):
            self.queue.appendleft(shard)
        log.warning("the actor on node %s stopped while running shard %s (%s): the shard goes back to the queue",
                    entry.placement.label() if entry.placement else "?", shard.id, entry.why)

    def _settled(self, entry: Lost, cause: str) -> None:
        """What the lost shard's actor turned out to be: its node lost, its process dead, or contact lost."""
        where = entry.placement.label() if entry.placement else "?"
        if cause == "process":
            self._failed_attempt(entry.shard, f"actor died on node {where}, which is still up: {entry.why}")
            return
        self.actors.losses.append({"cause": cause, "node": where, "shard": entry.shard.id,
                                   "settled_s": round(time.time() - entry.since, 1)})
        if cause == "contact":
            log.warning("the actor on node %s answers again: shard %s lost only its connection", where,
                        entry.shard.id)
            return
        running, count = self.actors.alive(), self.actors.count
        log.warning("node %s lost: shard %s went back to the queue without using up a retry; %d of %d actors "
                    "running%s", where, entry.shard.id, running, count,
                    ", waiting for capacity" if running < count else "")
