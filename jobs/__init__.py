"""memaudit's Ray job: plan shards, run them on actors that each hold one generator, write Parquet parts,
resume, reduce with stats, write the report (DESIGN.md §4-§6).

    python -m jobs.audit --config audit.yaml          # or: memaudit audit --config audit.yaml
    ray job submit --working-dir . -- python -m jobs.audit --config audit.yaml

Modules: config (YAML + flags -> AuditConfig; with overrides for the raw YAML and --set, typed for
YAML -> dataclasses), fingerprint (the run's fingerprint), errors (ConfigError, JobError), sources
(formats, ids, limit), plan (shards, the id checks), storage (fsspec, URLs, atomic writes, retries),
outputs (layout, parts, resume), actors (AuditActor), dispatch (AuditActors, the shard loop), progress,
samples (samples.parquet), runinfo (run.json), driver (run_audit: prepare, dispatch, reduce), encoders
(the learned start's cache), audit and cli (entry points). Only this package imports ray.
"""

from .config import AuditConfig, load_config
from .errors import ConfigError

__all__ = ["AuditConfig", "ConfigError", "load_config"]
