"""Dispatch without Ray (issue 23): longest work first. Pure functions: no timing."""

from __future__ import annotations

from jobs.dispatch import dispatch_order
from jobs.plan import Shard


def _shard(split: str, start: int, stop: int) -> Shard:
    return Shard(f"{split}-{start}", split, -1 if split == "generated" else 0, start, stop)


def test_dispatch_order_is_real_splits_first_then_larger_shards_and_stable():
    plan = [_shard("train", 0, 16), _shard("train", 16, 20), _shard("val", 0, 16), _shard("val", 16, 28),
            _shard("generated", 0, 16), _shard("generated", 16, 30), _shard("val", 28, 44)]
    order = [s.id for s in dispatch_order(plan)]
    assert order == ["train-0", "val-0", "val-28", "val-16", "train-16", "generated-0", "generated-16"]
    assert [s.id for s in dispatch_order(reversed(plan))] == [
        "val-28", "val-0", "train-0", "val-16", "train-16", "generated-0", "generated-16"]  # ties: given order
    assert [s.id for s in dispatch_order(plan)] == order  # the same every time
