"""Progress of one invocation: shards and images done, images/s, ETA, as plain log lines.

The driver logs `Progress.line()` every job.progress_seconds; the same line reads well in a terminal and
in `ray job logs`.
"""

from __future__ import annotations

import time

from .actors import ShardReport


class Progress:
    """Shards and images done in this invocation, images/s since the first shard, ETA."""

    def __init__(self, *, total_shards: int, total_images: int) -> None:
        self.total_shards, self.total_images = total_shards, total_images
        self.shards = self.images = self.rejects = 0
        self.started: float | None = None  # the first dispatch: actor start-up is not part of the rate

    def begin(self) -> None:
        if self.started is None:
            self.started = time.time()

    def add(self, report: ShardReport) -> None:
        self.shards += 1
        self.images += report.images
        self.rejects += report.rejects

    def line(self, final: bool = False) -> str:
        elapsed = max(1e-9, time.time() - self.started) if self.started is not None else 0.0
        rate = self.images / elapsed if elapsed else 0.0
        left = self.total_images - self.images
        eta = duration(left / rate) if rate > 0 else "unknown"
        head = "done:" if final else "progress:"
        return (f"{head} shards {self.shards}/{self.total_shards}, images {self.images}/{self.total_images} "
                f"({self.rejects} rejected), {rate:.1f} images/s, elapsed {duration(elapsed)}"
                + ("" if final else f", ETA {eta}"))


def duration(seconds: float) -> str:
    """1h02m03s / 2m03s / 3s."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
