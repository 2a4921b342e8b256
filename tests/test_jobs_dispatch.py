"""Dispatch without Ray: longest work first, the ETA from the work left (generator evaluations,
not images), and the actors' idle share. Pure functions and injected clocks: no timing."""

from __future__ import annotations

import pytest

from jobs.actors import ShardReport
from jobs.dispatch import dispatch_order
from jobs.plan import Shard
from jobs.progress import ActorUsage, Progress, eta_seconds


def _shard(split: str, start: int, stop: int) -> Shard:
    return Shard(f"{split}-{start}", split, -1 if split == "generated" else 0, start, stop)


def _report(shard: Shard, evaluations: int) -> ShardReport:
    return ShardReport(shard.id, shard.split, shard.size, shard.size, 0, 0, 1.0, "node", 100.0,
                       evaluations=evaluations)


def test_dispatch_order_is_real_splits_first_then_larger_shards_and_stable():
    plan = [_shard("train", 0, 16), _shard("train", 16, 20), _shard("val", 0, 16), _shard("val", 16, 28),
            _shard("generated", 0, 16), _shard("generated", 16, 30), _shard("val", 28, 44)]
    order = [s.id for s in dispatch_order(plan)]
    assert order == ["train-0", "val-0", "val-28", "val-16", "train-16", "generated-0", "generated-16"]
    assert [s.id for s in dispatch_order(reversed(plan))] == [
        "val-28", "val-0", "train-0", "val-16", "train-16", "generated-0", "generated-16"]  # ties: given order
    assert [s.id for s in dispatch_order(plan)] == order  # the same every time


def test_eta_counts_the_work_left_so_an_expensive_split_is_not_priced_as_a_cheap_one():
    planned = {"val": 100, "generated": 100}
    finished = {"val": 20, "generated": 100}  # all generated images done, 20 val images done in 30 s
    evaluations = {"val": 20 * 100, "generated": 100 * 10}  # a val image costs 100 evaluations, a generated 10
    seconds, rate = eta_seconds(planned, finished, finished, evaluations, elapsed=30.0)
    assert rate == pytest.approx(3000 / 30)  # evaluations/s
    assert seconds == pytest.approx(80 * 100 / rate)  # 80 val images left at 100 evaluations each: 80 s
    by_images = (200 - 120) / (120 / 30.0)  # what counting images said: 20 s
    assert seconds == pytest.approx(4 * by_images)


def test_eta_prices_a_split_without_finished_shards_at_the_mean_and_falls_back_to_images_before():
    planned = {"val": 100, "generated": 100}
    # No shard finished: images left over images/s (150 left at 50 images in 10 s).
    assert eta_seconds(planned, {"val": 10, "generated": 40}, {}, {}, elapsed=10.0) == (pytest.approx(30.0), None)
    assert eta_seconds(planned, {}, {}, {}, elapsed=10.0) == (None, None)  # nothing done yet: unknown
    # Only generated shards finished (10 evaluations per image): val is priced at the mean over all, and its
    # running shard's 10 partial images count as done at that price.
    seconds, rate = eta_seconds(planned, {"val": 10, "generated": 50}, {"generated": 50}, {"generated": 500},
                                elapsed=30.0)
    assert rate == pytest.approx((500 + 10 * 10) / 30)
    assert seconds == pytest.approx((90 * 10 + 50 * 10) / rate)


def test_progress_line_uses_the_work_left_and_shows_evaluations_per_second():
    now = [100.0]
    val = [_shard("val", 0, 20), _shard("val", 20, 100)]
    generated = [_shard("generated", 0, 100)]
    progress = Progress(total_shards=3, planned={"val": 100, "generated": 100}, bar=False, clock=lambda: now[0])
    for shard in (generated[0], val[0]):
        progress.begin(shard)
    now[0] = 110.0
    progress.add(_report(generated[0], 100 * 10))
    assert "ETA " in progress.line() and "evaluations/s" in progress.line()
    progress.add(_report(val[0], 20 * 100))
    progress.begin(val[1])
    progress.partial[val[1].id] = 20  # the running val shard's actor reports 20 images done
    now[0] = 140.0
    left, rate = progress.eta()
    assert rate == pytest.approx((1000 + 2000 + 20 * 100) / 40)
    assert left == pytest.approx(60 * 100 / rate)  # 60 val images left at 100 evaluations each
    line = progress.line()
    assert line.startswith("progress: shards 2/3, images 140/200 (0 rejected), 3.5 images/s, 125 evaluations/s, ")
    assert line.endswith("elapsed 40s, ETA 48s")
    assert progress.line(final=True).startswith("done: shards 2/3")


def test_actor_idle_share_is_the_unused_share_of_the_actors_time():
    usage = ActorUsage()
    assert usage.idle_share is None and "no shard ran" in usage.describe()
    usage.ran("a", 0.0, 60.0)  # one actor runs the long shard for the whole span
    usage.ran("b", 0.0, 10.0)  # the other finishes two small ones and then waits
    usage.ran("b", 10.0, 20.0)
    assert usage.span == 60.0
    assert usage.idle_share == pytest.approx(1 - 80 / 120)
    usage.actors.add("c")  # ready, never given a shard: idle all along
    assert usage.idle_share == pytest.approx(1 - 80 / 180)
    assert usage.describe().startswith("actor idle share 56% (3 actors over 1m00s")
    even = ActorUsage()
    even.ran("a", 5.0, 15.0)
    even.ran("b", 5.0, 15.0)
    assert even.idle_share == 0.0
