"""memaudit's Ray job: plan shards, run them on actors that each hold one generator, write Parquet parts,
resume, reduce with stats, write the report (DESIGN.md §4-§6).

    python -m jobs.audit --config audit.yaml          # or: memaudit audit --config audit.yaml
    ray job submit --working-dir . -- python -m jobs.audit --config audit.yaml

Modules: config (YAML + flags -> AuditConfig; its sections in sections, the raw YAML and --set in
overrides, YAML -> dataclasses in typed), fingerprint, errors (ConfigError, JobError), formats and sources
(listing, ids, limit), plan (shards, the id checks), outputs (layout, parts, resume), actors (AuditActor),
dispatch and fleet (the shard loop), progress, samples, runinfo (run.json), driver (run_audit), encoders,
audit and cli (entry points). Only this package imports ray.
"""

from .config import load_config
from .errors import ConfigError
from .sections import AuditConfig

__all__ = ["AuditConfig", "ConfigError", "load_config"]
