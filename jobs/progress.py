"""Progress of one invocation: shards and images done, images/s, evaluations/s, ETA, as plain log lines.

The driver logs `Progress.line()` every job.progress_seconds; the same line reads well in a terminal and
in `ray job logs`. Images count as the actors finish them, inside a shard.

The ETA is the work left over the work rate, not images over images/s: a real image costs the search
~5-10x the generator evaluations of a generated one, so counting images promised "56s" for a val shard
that took ten more minutes. Each split's cost per image is the mean evaluations per image of its
finished shards (ShardReport.evaluations; a split with none yet takes the mean over all finished shards,
and before any shard finished the ETA counts images, as before): eta_seconds(), a pure function.

ActorUsage measures how much of the actors' time dispatch left unused (run.json's actor_idle_share).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .actors import ShardReport

log = logging.getLogger("memaudit")


class Progress:
    """Shards and images done in this invocation, images/s since the first dispatch, ETA from the work left.

    planned: split -> images this invocation runs. Images count at image granularity: finished shards'
    images plus, for each running shard, the images its actor reports done (`partial`, shard id -> images,
    polled by the dispatch loop; the shard's split is known from begin()), so a long shard moves the count
    and the ETA. In a terminal (stderr a tty) a progress bar is redrawn in place between the log lines.
    clock: the time source (tests inject one).
    """

    def __init__(self, *, total_shards: int, planned: Mapping[str, int], bar: bool | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.total_shards, self.planned = total_shards, dict(planned)
        self.total_images = sum(self.planned.values())
        self.shards = self.finished_images = self.rejects = 0
        self.finished: dict[str, int] = {}  # split -> images of its finished shards
        self.evaluations: dict[str, int] = {}  # split -> generator evaluations of its finished shards
        self.partial: dict[str, int] = {}  # running shard id -> images done in it
        self.running: dict[str, str] = {}  # running shard id -> its split
        self.clock = clock
        self.started: float | None = None  # the first dispatch: actor start-up is not part of the rate
        self.bar = sys.stderr.isatty() if bar is None else bar
        self._drawn = False

    @property
    def images(self) -> int:
        return self.finished_images + sum(self.partial.values())

    def begin(self, shard: Any = None) -> None:
        """A shard (anything with .id and .split) was dispatched."""
        if self.started is None:
            self.started = self.clock()
        if shard is not None:
            self.running[shard.id] = shard.split

    def add(self, report: ShardReport) -> None:
        self.partial.pop(report.shard_id, None)
        self.running.pop(report.shard_id, None)
        self.shards += 1
        self.finished_images += report.images
        self.rejects += report.rejects
        self.finished[report.split] = self.finished.get(report.split, 0) + report.images
        self.evaluations[report.split] = self.evaluations.get(report.split, 0) + report.evaluations

    def done(self) -> dict[str, int]:
        """split -> images done: finished shards' and running shards' partial counts."""
        done = dict(self.finished)
        for shard_id, n in self.partial.items():
            split = self.running.get(shard_id)
            if split is not None:
                done[split] = done.get(split, 0) + n
        return done

    def rate(self) -> tuple[float, float]:
        """(seconds since the first dispatch, images/s)."""
        elapsed = max(1e-9, self.clock() - self.started) if self.started is not None else 0.0
        return elapsed, (self.images / elapsed if elapsed else 0.0)

    def eta(self) -> tuple[float | None, float | None]:
        """(seconds left or None when unknown, evaluations/s or None before any shard finished)."""
        elapsed, _ = self.rate()
        return eta_seconds(self.planned, self.done(), self.finished, self.evaluations, elapsed)

    def line(self, final: bool = False) -> str:
        elapsed, rate = self.rate()
        left, evals = self.eta()
        head = "done:" if final else "progress:"
        return (f"{head} shards {self.shards}/{self.total_shards}, images {self.images}/{self.total_images} "
                f"({self.rejects} rejected), {rate:.1f} images/s"
                + ("" if evals is None else f", {evals:.0f} evaluations/s") + f", elapsed {duration(elapsed)}"
                + ("" if final else f", ETA {'unknown' if left is None else duration(left)}"))

    def log(self, suffix: str = "", *, final: bool = False) -> None:
        """One log line (the bar is cleared first and redrawn after)."""
        self.clear()
        log.info("%s", self.line(final) + ("" if final else suffix))
        if not final:
            self.draw()

    def draw(self) -> None:
        """Redraw the terminal bar: [#####-----] 50% 1234/2468 images, 12.3/s, ETA 1m40s."""
        if not self.bar or not self.total_images:
            return
        _, rate = self.rate()
        left, _ = self.eta()
        done = min(self.images, self.total_images)
        filled = int(30 * done / self.total_images)
        eta = "unknown" if left is None else duration(left)
        sys.stderr.write(f"\r[{'#' * filled}{'-' * (30 - filled)}] {100 * done / self.total_images:3.0f}% "
                         f"{done}/{self.total_images} images, {rate:.1f}/s, ETA {eta}\033[K")
        sys.stderr.flush()
        self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._drawn = False


def eta_seconds(planned: Mapping[str, int], done: Mapping[str, int], finished: Mapping[str, int],
                evaluations: Mapping[str, int], elapsed: float) -> tuple[float | None, float | None]:
    """(seconds left, evaluations/s) from the work left per split.

    planned / done: split -> images planned / done so far (finished shards' and running shards' partial
    images); finished / evaluations: split -> images and generator evaluations of the finished shards;
    elapsed: seconds since the first dispatch. A split's cost per image is its finished shards' mean
    evaluations per image, else the mean over every finished shard; the work done (done images x cost)
    over elapsed is the rate, the work left (images left x cost) over the rate the ETA. Before any shard
    finished (or when no evaluation is recorded) it falls back to images left over images/s, and the rate
    is None. The seconds left are None when nothing is done yet.
    """
    images, spent = sum(finished.values()), sum(evaluations.values())
    if images <= 0 or spent <= 0:
        done_images = sum(done.values())
        if done_images <= 0 or elapsed <= 0:
            return None, None
        left = sum(max(0, n - done.get(s, 0)) for s, n in planned.items())
        return left / (done_images / elapsed), None
    mean = spent / images
    cost = {s: evaluations.get(s, 0) / finished[s] if finished.get(s) else mean for s in {**planned, **done}}
    work_done = sum(cost[s] * n for s, n in done.items())
    work_left = sum(cost[s] * max(0, n - done.get(s, 0)) for s, n in planned.items())
    if work_done <= 0 or elapsed <= 0:
        return None, None
    rate = work_done / elapsed
    return work_left / rate, rate


@dataclass
class ActorUsage:
    """How busy the actors were while shards ran, for run.json's actor_idle_share.

    busy: per actor (a key), the seconds it spent running shards (dispatch to result, failures included);
    first / last: the first dispatch and the last shard's end; actors: every actor ready during the loop
    (those that ran a shard and those that waited idle). idle_share = 1 - busy / (actors x span).
    """

    busy: dict = field(default_factory=dict)
    actors: set = field(default_factory=set)
    first: float | None = None
    last: float | None = None

    def ran(self, actor: Any, began: float, ended: float) -> None:
        """One shard ran on `actor` from `began` to `ended`."""
        self.busy[actor] = self.busy.get(actor, 0.0) + max(0.0, ended - began)
        self.actors.add(actor)
        self.first = began if self.first is None else min(self.first, began)
        self.last = ended if self.last is None else max(self.last, ended)

    @property
    def span(self) -> float:
        return 0.0 if self.first is None or self.last is None else max(0.0, self.last - self.first)

    @property
    def idle_share(self) -> float | None:
        """1 - busy / (actors x span), in [0, 1]; None when no shard ran."""
        if not self.actors or self.span <= 0:
            return None
        return min(1.0, max(0.0, 1.0 - sum(self.busy.values()) / (len(self.actors) * self.span)))

    def describe(self) -> str:
        share = self.idle_share
        if share is None:
            return "actors: no shard ran"
        busy = ", ".join(duration(b) for b in sorted(self.busy.values(), reverse=True))
        return (f"actor idle share {100 * share:.0f}% ({len(self.actors)} actors over {duration(self.span)} "
                f"from the first dispatch to the last shard's end; busy {busy})")


def duration(seconds: float) -> str:
    """1h02m03s / 2m03s / 3s."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
