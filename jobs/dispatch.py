"""Dispatch: the loop that hands the job's actors (jobs.fleet) shards as they free up.

    actors = AuditActors(config, fingerprint, count=2)
    reports, failed = run_shards(actors, pending, config)

A shard that raises in memaudit's code is retried on the next free actor up to job.shard_retries times,
then reported as failed. A shard whose actor died with it (its process or its node) is lost until the
driver knows which (settle): once the GCS holds the actor's node dead, the node was lost and the shard goes
back to the front of the queue as it was, whatever its attempts; once Ray restarted the actor after its
process died on a node that lived on, the shard used an attempt; an actor that answers again from the same
process only lost contact, and the shard goes back as it was. Meanwhile the other actors keep taking
shards, and the lost actor comes back (jobs.fleet) when Ray has restarted it on a node with room. While no
actor is alive the loop waits for one, up to job.actor_start_timeout; then JobError says how to resume.
A re-run shard rewrites its own parts (one atomic put each), so every image still ends as one row.

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
from dataclasses import dataclass
from typing import Any, Iterable

from . import raylink
from .actors import PROGRESS_GROUP, ShardReport
from .config import AuditConfig
from .errors import JobError
from .fleet import AuditActors, Placement
from .plan import Shard
from .progress import ActorUsage, Progress
from .raylink import reason

log = logging.getLogger("memaudit")

__all__ = ["AuditActors", "dispatch_order", "prepare_encoder", "reason", "run_shards"]
SETTLE_SECONDS = 1.0  # how often the GCS is asked which nodes live while a shard is lost


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


@dataclass(frozen=True)
class Lost:
    """A shard whose run_shard call died with its actor, until the driver knows whether the node was lost."""

    shard: Shard
    attempt: int
    placement: Placement | None  # where the actor ran it
    why: str  # the Ray error, one line
    since: float


class _ShardLoop:
    """The dispatch loop's state: queued, running and lost shards, progress polls."""

    def __init__(self, actors: AuditActors, shards: list[Shard], config: AuditConfig, lease: Any,
                 start_cap: int | None = None) -> None:
        self.actors, self.config, self.lease, self.start_cap = actors, config, lease, start_cap
        self.queue: deque[tuple[Shard, int]] = deque((s, 0) for s in dispatch_order(shards))
        self.running: dict = {}  # ref -> (actor, shard, attempt)
        self.began: dict = {}  # ref -> when its shard was dispatched
        self.usage = ActorUsage()
        self.lost: dict = {}  # actor -> Lost
        self.next_settle = 0.0
        self.waiting = False  # no actor alive, and the log said so
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
        while self.queue or self.running or self.lost:
            if self.lease is not None:
                self.lease.check()
            self._dispatch()
            self._settle()
            if not (self.running or self.actors.starting or self.lost):
                for shard, _ in self.queue:
                    self.failed[shard.id] = "no actor is left to run it"
                self.queue.clear()
                break
            self._check_capacity()
            waiting = list(self.running) + list(self.actors.starting) + list(self.polls)
            timeout = min(next_line, next_poll) - time.time()
            if self.lost:
                timeout = min(timeout, SETTLE_SECONDS)
            ready = ray.wait(waiting, num_returns=1, timeout=max(0.05, timeout))[0] if waiting else []
            for ref in ready:
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
        busy = len({id(a) for a, _, _ in self.running.values()})
        restarting = len(self.actors.restarting)
        starting = len(self.actors.starting) - restarting
        return (f", actors {busy} busy/{len(self.actors.idle)} idle/{starting} starting"
                + (f"/{restarting} restarting" if restarting else ""))

    def _dispatch(self) -> None:
        while self.actors.idle and self.queue:
            actor = self.actors.idle.popleft()
            shard, attempt = self.queue.popleft()
            # No retry by Ray: if the actor dies, the shard comes back here at once (see the module doc)
            ref = actor.run_shard.options(max_task_retries=0).remote(shard, self.start_cap)
            self.running[ref], self.began[ref] = (actor, shard, attempt), time.time()
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
        """Ask every busy actor (without a poll in flight) how far its shard is: images, not shards (issue 11)."""
        asked = set(self.polls.values())
        for actor, shard, _ in self.running.values():
            if shard.id not in asked:
                self.polls[actor.progress.options(concurrency_group=PROGRESS_GROUP).remote()] = shard.id

    def _handle(self, ref) -> None:
        import ray

        if ref in self.actors.starting:
            actor = self.actors.starting[ref]
            placement = self.actors.on_ready(ref, actor)
            if actor in self.lost and (placement is not None or actor not in self.actors.handles):
                self._came_back(actor, placement)
        elif ref in self.polls:
            shard_id = self.polls.pop(ref)
            try:
                state = ray.get(ref)
            except ray.exceptions.RayError:
                return  # the actor is busy dying: its shard's fate comes through run_shard
            if state.get("shard") == shard_id and any(s.id == shard_id for _, s, _ in self.running.values()):
                self.progress.partial[shard_id] = int(state.get("done", 0))
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
            self._retry_or_fail(shard, attempt, reason(exc))
            return
        except ray.exceptions.RayError as exc:  # the actor's process or node died, or it lost contact
            self._lose(actor, shard, attempt, exc)
            return
        self.actors.idle.append(actor)
        self.reports.append(report)
        self.progress.add(report)

    def _retry_or_fail(self, shard: Shard, attempt: int, why: str) -> None:
        """The shard itself failed: retried at the front of the queue up to job.shard_retries times."""
        retries = self.config.job.shard_retries
        if attempt < retries:
            log.warning("shard %s failed (%s); retry %d of %d", shard.id, why, attempt + 1, retries)
            self.queue.appendleft((shard, attempt + 1))
        else:
            self.failed[shard.id] = why
            log.error("shard %s failed after %d attempts: %s", shard.id, attempt + 1, why)

    # -- lost shards: the node or the shard? ---------------------------------------------------------------

    def _lose(self, actor, shard: Shard, attempt: int, exc: BaseException) -> None:
        """run_shard died with its actor: hold the shard until settled, and wait for Ray's restart."""
        placement = self.actors.placed.get(actor)
        self.lost[actor] = Lost(shard, attempt, placement, reason(exc), time.time())
        self.progress.running.pop(shard.id, None)
        self.polls = {r: s for r, s in self.polls.items() if s != shard.id}
        self.actors.rejoin(actor)
        self.next_settle = 0.0  # ask the GCS now
        log.info("the actor on node %s stopped while running shard %s (%s)",
                 placement.label() if placement else "?", shard.id, reason(exc))

    def _settle(self) -> None:
        """Lost shards whose actor's node the GCS now holds dead go back to the queue as they were."""
        if not self.lost or time.time() < self.next_settle:
            return
        self.next_settle = time.time() + SETTLE_SECONDS
        alive = raylink.alive_nodes()
        for actor, lost in list(self.lost.items()):
            if lost.placement is not None and lost.placement.node_id not in alive:
                self._settled(actor, "node")

    def _came_back(self, actor, placement: Placement | None) -> None:
        """The lost shard's actor answered ready() again (restarted, or never gone), or is gone for good."""
        old = self.lost[actor].placement
        if old is not None and old.node_id not in raylink.alive_nodes():
            self._settled(actor, "node")
        elif placement is not None and old is not None and (placement.pid, placement.node_id) == (old.pid, old.node_id):
            self._settled(actor, "contact")
        else:
            self._settled(actor, "process")

    def _settled(self, actor, cause: str) -> None:
        """The lost shard's fate: back to the queue as it was (node, contact), or as a failed attempt (process)."""
        lost = self.lost.pop(actor)
        where = lost.placement.label() if lost.placement else "?"
        if cause == "process":
            self._retry_or_fail(lost.shard, lost.attempt, f"actor died on node {where}, which is still up: {lost.why}")
            return
        self.queue.appendleft((lost.shard, lost.attempt))
        self.actors.losses.append({"cause": cause, "node": where, "shard": lost.shard.id,
                                   "settled_s": round(time.time() - lost.since, 1)})
        if cause == "contact":
            log.warning("lost contact with the actor on node %s (%s): shard %s goes back to the queue", where,
                        lost.why, lost.shard.id)
            return
        running, count = self.actors.alive(), self.actors.count
        log.warning("node %s lost: shard %s goes back to the queue; %d of %d actors running%s", where,
                    lost.shard.id, running, count, ", waiting for capacity" if running < count else "")
