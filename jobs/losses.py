"""Shards lost with their actor: was it the node, the shard, or only the connection?

    lost = LostShards()
    lost.add(actor, shard, placement, why)        # run_shard raised a Ray error (the actor died or is unreachable)
    for actor, entry, cause in lost.due(): ...     # every second: "node" once the GCS holds its node dead
    entry, cause = lost.came_back(actor, placement)  # its ready() answered again (or it is gone: placement None)

The dispatch loop puts a lost shard back in the queue at once, uncounted, so a surviving actor takes it
without waiting for the verdict; the verdict decides only whether it was a failed attempt. A Ray error on
run_shard comes as soon as the actor's connection drops, before Ray knows why, so it is settled later:
- "node": the actor's node is dead in the GCS's view (its health checks gave up on it, seconds to a minute
  after it went): spot reclamation, a crashed machine. Not the shard's fault: no attempt is used up.
- "process": Ray restarted the actor (a new process) while its node lived on, or the actor is gone for good
  on a live node: the process died running the shard (a segfault, the OOM killer), so it counts against
  job.shard_retries and a shard that keeps killing its actor ends as failed.
- "contact": the same process answers again: only the connection was lost. No attempt is used up.
An actor whose node died is restarted by Ray only once the GCS holds the node dead, so a restarted actor
whose old node is still alive did die in its process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .fleet import Placement
from .plan import Shard

SETTLE_SECONDS = 1.0  # how often the GCS is asked which nodes live while a shard is lost


@dataclass(frozen=True)
class Lost:
    """A shard whose run_shard call died with its actor."""

    shard: Shard
    placement: Placement | None  # where the actor ran it (its latest ready())
    why: str  # the Ray error, one line
    since: float


class LostShards:
    """The lost shards by actor, until each is settled as "node", "process" or "contact" (see the module doc).

    alive_nodes: the GCS's live node ids (jobs.raylink.alive_nodes; a test passes its own); clock: time.time."""

    def __init__(self, alive_nodes: Callable[[], set[str]], clock: Callable[[], float] = time.time) -> None:
        self.alive_nodes, self.clock = alive_nodes, clock
        self.by_actor: dict[Any, Lost] = {}
        self.next_check = 0.0

    def __bool__(self) -> bool:
        return bool(self.by_actor)

    def __contains__(self, actor: Any) -> bool:
        return actor in self.by_actor

    def add(self, actor: Any, shard: Shard, placement: Placement | None, why: str) -> Lost:
        self.by_actor[actor] = entry = Lost(shard, placement, why, self.clock())
        self.next_check = 0.0  # ask the GCS at the next turn
        return entry

    def due(self) -> Iterator[tuple[Any, Lost, str]]:
        """At most every SETTLE_SECONDS: the lost shards whose actor's node the GCS now holds dead ("node")."""
        if not self.by_actor or self.clock() < self.next_check:
            return
        self.next_check = self.clock() + SETTLE_SECONDS
        alive = self.alive_nodes()
        for actor, entry in list(self.by_actor.items()):
            if entry.placement is not None and entry.placement.node_id not in alive:
                del self.by_actor[actor]
                yield actor, entry, "node"

    def came_back(self, actor: Any, placement: Placement | None) -> tuple[Lost, str]:
        """The actor's ready() answered again from `placement`, or it is gone for good (None): settle its shard."""
        entry = self.by_actor.pop(actor)
        old = entry.placement
        if old is not None and old.node_id not in self.alive_nodes():
            return entry, "node"
        if placement is not None and old is not None and (placement.node_id, placement.pid) == (old.node_id, old.pid):
            return entry, "contact"
        return entry, "process"
