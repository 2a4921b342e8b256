"""The job's actors over their lifetime: started, ready, lost with a node, restarted when the cluster has room.

    actors = AuditActors(config, fingerprint, count=2)
    actors.start()                                # count actors; each becomes ready once its generator loads
    actors.on_ready(ref, actors.starting[ref])    # a finished ready(): the actor joins `idle`
    actors.rejoin(actor)                          # its shard's call died with it: wait for Ray's restart

An actor whose process or node dies is restarted by Ray (jobs.actors.make_actor_class: max_restarts -1) on
whichever node has room, when one has: at once if another node has free CPUs, or once an autoscaler adds a
node for the pending actor. rejoin() asks the restarted actor ready() again, so it comes back to `idle`
through `starting` like a new one. Its shard went back to the queue meanwhile (jobs.dispatch); whether the
shard or the node failed is settled by jobs.losses. Nothing can run while no actor is alive; `last_alive`
says since when, for job.actor_start_timeout. `losses` records the settled node and connection losses.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from .actors import make_actor_class
from .sections import AuditConfig
from .raylink import reason

log = logging.getLogger("memaudit")


@dataclass(frozen=True)
class Placement:
    """Where an actor runs, from its ready(): the node's id and IP, the host name and the process id."""

    node_id: str
    ip: str
    host: str
    pid: int

    @classmethod
    def of(cls, info: dict) -> "Placement":
        return cls(str(info.get("node_id") or ""), str(info.get("ip") or ""), str(info.get("node") or ""),
                   int(info.get("pid") or 0))

    def label(self) -> str:
        """`10.0.3.7` in the log; with the node id's first 8 hex digits, since nodes on one host share an IP."""
        return f"{self.ip or self.host} ({self.node_id[:8]})" if self.node_id else (self.ip or self.host or "?")


class AuditActors:
    """The AuditActor handles of one job, started lazily; `idle` holds those ready for work.

    (Not ray.util.ActorPool: this one also tracks actors still starting or restarting, drops dead ones, and
    raises a generator that cannot be loaded as the job's error.)"""

    def __init__(self, config: AuditConfig, fingerprint: str, *, count: int, target_cache: Any = None) -> None:
        self.config, self.fingerprint, self.count = config, fingerprint, count
        self.target_cache = target_cache  # jobs.target_cache.TargetCache in a checkpoint sweep
        self.handles: list = []
        self.idle: deque = deque()
        self.starting: dict = {}  # ready() ref -> actor: new actors, and lost ones Ray is restarting
        self.restarting: set = set()  # actors whose last call died with them (rejoin), until ready again
        self.placed: dict = {}  # actor -> Placement, from its latest ready()
        self.created = 0.0
        self.last_alive = 0.0  # when an actor was last known alive (idle or running): the capacity timeout
        self.first_ready: float | None = None  # seconds from start() to the first ready actor
        self.usage: Any = None  # progress.ActorUsage: how busy the actors were while shards ran (run_shards)
        self.losses: list[dict] = []  # settled losses: {cause, node, shard, settled_s} (jobs.dispatch)

    def start(self) -> None:
        if self.handles:
            return
        cls = make_actor_class(self.config)
        res = self.config.resources
        log.info("starting %d actors (%g CPUs, %g GPUs each); each loads the generator once", self.count,
                 res.cpus_per_actor, res.gpus_per_actor)
        self.created = self.last_alive = time.time()
        for _ in range(self.count):
            actor = cls.remote(self.config, self.fingerprint, self.target_cache)
            self.handles.append(actor)
            self.starting[actor.ready.remote()] = actor

    def on_ready(self, ref, actor) -> Placement | None:
        """Handle a finished ready() call: the actor joins `idle` (returns where it runs), or is gone for good
        (None), or the job stops on a generator that cannot be loaded (its RecoveryError is raised)."""
        import ray

        del self.starting[ref]
        try:
            info = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            from recovery import RecoveryError

            if isinstance(exc.cause, RecoveryError):
                raise exc.cause from None
            return self._gone(actor, exc)
        except ray.exceptions.ActorUnavailableError:  # Ray's retries of ready() ran out mid-restart: ask again
            self.starting[actor.ready.remote()] = actor
            return None
        except ray.exceptions.RayError as exc:
            return self._gone(actor, exc)
        placement = Placement.of(info)
        self.placed[actor] = placement
        self.last_alive = time.time()
        if self.first_ready is None:
            self.first_ready = self.last_alive - self.created
        if actor in self.restarting:
            self.restarting.discard(actor)
            log.info("actor restarted on node %s (generator loaded in %.1fs); %d of %d actors running",
                     placement.label(), info["load_seconds"], self.alive(), self.count)
        else:
            log.info("actor ready on %s (%s, generator loaded in %.1fs, search batch %s)", placement.label(),
                     info["device"], info["load_seconds"], info.get("batch_size"))
        self.idle.append(actor)
        return placement

    def _gone(self, actor, exc: BaseException) -> None:
        """An actor that Ray will not restart (its creation failed, or it was killed): dropped."""
        verb = "could not start" if actor not in self.placed else "is gone for good"
        self.drop(actor)
        log.error("an actor %s (%s); %d left", verb, reason(exc), len(self.handles))
        return None

    def rejoin(self, actor) -> None:
        """A call on `actor` died with its process or node: Ray restarts it; wait for its ready() again."""
        if actor in self.idle:
            self.idle.remove(actor)
        if actor not in self.restarting:
            self.restarting.add(actor)
            self.starting[actor.ready.remote()] = actor

    def alive(self) -> int:
        """Actors known to run (idle or busy): every handle but those starting or restarting."""
        waiting = set(self.starting.values())
        return sum(1 for actor in self.handles if actor not in waiting)

    def drop(self, actor) -> None:
        if actor in self.handles:
            self.handles.remove(actor)
        if actor in self.idle:
            self.idle.remove(actor)
        self.restarting.discard(actor)
        self.placed.pop(actor, None)

    def any_ready(self, timeout: float) -> Any:
        """Wait for one actor to be ready (for the encoder's training); None if none is."""
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
                ray.kill(actor)  # no_restart: a restarting actor waiting for room is cancelled too
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.handles.clear()
        self.idle.clear()
        self.starting.clear()
        self.restarting.clear()
