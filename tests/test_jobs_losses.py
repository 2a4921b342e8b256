"""jobs.losses without Ray: a shard lost with its actor is settled as a lost node, a dead process or a lost
connection, from the GCS's live nodes and where the actor answers again."""

from __future__ import annotations

from jobs.fleet import Placement
from jobs.losses import SETTLE_SECONDS, LostShards
from jobs.plan import Shard

SHARD = Shard("train-0", "train", 0, 0, 4)
OLD = Placement("node-a", "10.0.3.7", "host-a", 100)


def _lost(alive: set[str], now: list[float]) -> LostShards:
    lost = LostShards(lambda: set(alive), clock=lambda: now[0])
    lost.add("actor", SHARD, OLD, "ActorUnavailableError: the connection to it was lost")
    return lost


def test_a_dead_node_settles_the_shard_as_a_lost_node_at_the_next_check_only():
    alive, now = {"node-a", "node-b"}, [0.0]
    lost = _lost(alive, now)
    assert list(lost.due()) == []  # the GCS still holds the node alive
    alive.discard("node-a")
    assert list(lost.due()) == []  # checked less than SETTLE_SECONDS ago
    now[0] += SETTLE_SECONDS
    [(actor, entry, cause)] = list(lost.due())
    assert (actor, entry.shard, cause) == ("actor", SHARD, "node") and not lost


def test_an_actor_back_from_its_dead_node_elsewhere_was_a_lost_node():
    lost = _lost({"node-b"}, [0.0])
    assert lost.came_back("actor", Placement("node-b", "10.0.3.8", "host-b", 7))[1] == "node"


def test_a_new_process_on_a_node_that_lived_on_was_the_shards_failure():
    lost = _lost({"node-a"}, [0.0])
    assert lost.came_back("actor", Placement("node-a", "10.0.3.7", "host-a", 101))[1] == "process"
    lost = _lost({"node-a"}, [0.0])
    assert lost.came_back("actor", None)[1] == "process"  # gone for good on a live node


def test_the_same_process_answering_again_only_lost_its_connection():
    lost = _lost({"node-a"}, [0.0])
    assert lost.came_back("actor", OLD)[1] == "contact" and "actor" not in lost
