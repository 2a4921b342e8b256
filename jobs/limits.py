"""Upper bounds for every number in an audit config, checked before any cluster work.

A typo such as `restarts: 1.0e12` or `generated.count: 1e12` must be refused with the field's name,
not accepted and then sit at "0/7, ETA unknown" or exhaust memory after every shard has run. Each
bound is far above any real audit (README, "Limits"); a number without its own bound gets
MAX_INT / MAX_FLOAT. NaN and infinities are refused everywhere (jobs.typed).
"""

from __future__ import annotations

import re

MAX_INT = 10**9
MAX_FLOAT = 1e12

BOUNDS: dict[str, float] = {
    "generator.w_avg_samples": 10**7,
    "targets.generated.count": 10**7,
    "targets.limit": 10**9,
    "targets.shard_size": 10**6,
    "recovery.iterations": 10**5,
    "recovery.restarts": 1_000,
    "recovery.budget": 10**7,
    "recovery.screening": 4_096,
    "recovery.encoder_steps": 10**6,
    "recovery.patience": 10**5,
    "recovery.batch_size": 65_536,
    "recovery.history": 1_000,
    "recovery.resolution": 8_192,
    "recovery.operator.factor": 1_024,
    "resources.actors": 10_000,
    "resources.gpus_per_actor": 64,
    "resources.cpus_per_actor": 1_024,
    "stats.top_images": 10_000,
    "stats.bootstrap": 100_000,
    "stats.bins": 10_000,
    "stats.curve_sample": 10**6,
    "stats.ct_cells": 10_000,
    "stats.ct_max_train": 10**7,
    "stats.birthday_size": 100_000,
    "job.shard_retries": 100,
    "job.progress_seconds": 86_400,
    "job.storage_retries": 100,
    "job.storage_retry_seconds": 3_600,
    "job.actor_start_timeout": 7 * 86_400,
    "features.k": 1_000,
    "features.train_block": 10**7,
    "features.query_block": 10**6,
    "features.batch_size": 65_536,
    "features.crop": 8_192,
    # seeds: any 32-bit unsigned value
    "targets.generated.seed": 2**32 - 1,
    "targets.limit_seed": 2**32 - 1,
    "recovery.seed": 2**32 - 1,
    "stats.seed": 2**32 - 1,
}

_INDEX = re.compile(r"\[\d+\]")


def bound(at: str, *, integer: bool) -> float:
    """The largest value allowed at the dotted field `at` (list indices ignored)."""
    return BOUNDS.get(_INDEX.sub("", at), MAX_INT if integer else MAX_FLOAT)
