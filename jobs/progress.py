"""Progress of one invocation: shards and images done, images/s, ETA, as plain log lines.

The driver logs `Progress.line()` every job.progress_seconds; the same line reads well in a terminal and
in `ray job logs`. Images count as the actors finish them, inside a shard (issue 11).
"""

from __future__ import annotations

import logging
import sys
import time

from .actors import ShardReport

log = logging.getLogger("memaudit")


class Progress:
    """Shards and images done in this invocation, images/s since the first dispatch, ETA.

    Images count at image granularity: finished shards' images plus, for each running shard, the images its
    actor reports done (`partial`, polled by the dispatch loop), so a long shard moves the count and the ETA.
    In a terminal (stderr a tty) a progress bar is redrawn in place between the log lines.
    """

    def __init__(self, *, total_shards: int, total_images: int, bar: bool | None = None) -> None:
        self.total_shards, self.total_images = total_shards, total_images
        self.shards = self.finished_images = self.rejects = 0
        self.partial: dict[str, int] = {}  # running shard id -> images done in it
        self.started: float | None = None  # the first dispatch: actor start-up is not part of the rate
        self.bar = sys.stderr.isatty() if bar is None else bar
        self._drawn = False

    @property
    def images(self) -> int:
        return self.finished_images + sum(self.partial.values())

    def begin(self) -> None:
        if self.started is None:
            self.started = time.time()

    def add(self, report: ShardReport) -> None:
        self.partial.pop(report.shard_id, None)
        self.shards += 1
        self.finished_images += report.images
        self.rejects += report.rejects

    def rate(self) -> tuple[float, float]:
        """(seconds since the first dispatch, images/s)."""
        elapsed = max(1e-9, time.time() - self.started) if self.started is not None else 0.0
        return elapsed, (self.images / elapsed if elapsed else 0.0)

    def line(self, final: bool = False) -> str:
        elapsed, rate = self.rate()
        left = self.total_images - self.images
        eta = duration(left / rate) if rate > 0 else "unknown"
        head = "done:" if final else "progress:"
        return (f"{head} shards {self.shards}/{self.total_shards}, images {self.images}/{self.total_images} "
                f"({self.rejects} rejected), {rate:.1f} images/s, elapsed {duration(elapsed)}"
                + ("" if final else f", ETA {eta}"))

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
        done = min(self.images, self.total_images)
        filled = int(30 * done / self.total_images)
        eta = duration((self.total_images - done) / rate) if rate > 0 else "unknown"
        sys.stderr.write(f"\r[{'#' * filled}{'-' * (30 - filled)}] {100 * done / self.total_images:3.0f}% "
                         f"{done}/{self.total_images} images, {rate:.1f}/s, ETA {eta}\033[K")
        sys.stderr.flush()
        self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._drawn = False


def duration(seconds: float) -> str:
    """1h02m03s / 2m03s / 3s."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
