"""memaudit's Ray job: plan shards, run them on actors that each hold one generator, write Parquet parts,
resume, reduce with stats, write the report (DESIGN §4-§6).

    python -m jobs.audit --config audit.yaml          # or: memaudit audit --config audit.yaml
    ray job submit --working-dir . -- python -m jobs.audit --config audit.yaml

Modules: config (YAML + flags -> AuditConfig), sources (formats, ids, limit), plan (shards), storage
(fsspec, atomic writes), outputs (layout, parts, resume), actors (AuditActor), driver (dispatch, progress,
reduce, run.json), audit and cli (entry points). Only this package imports ray.
"""

from .config import AuditConfig, ConfigError, load_config

__all__ = ["AuditConfig", "ConfigError", "load_config"]
