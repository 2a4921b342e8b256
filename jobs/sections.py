"""The audit config's typed sections: what a validated config holds, with no loading logic.

jobs.config loads YAML and flags into these (and checks what needs several sections at once); every other
module of the job reads them. Keeping them apart lets the modules that jobs.config itself uses for its checks
(locations, labels, fingerprints, sources) name these types without importing the loader, so that no import
runs in a circle. Defaults live in these dataclasses and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recovery.discriminator import DiscriminatorSpec
from recovery.settings import GeneratorSpec, RecoverySettings

from stats import storage

from .detector_config import FeaturesConfig
from .errors import ConfigError
from .formats import FORMATS, infer_format
from .redact import strip_secrets
from .typed import plain

GENERATED = "generated"  # the split sampled from the generator itself (DESIGN.md §1)
AUTO = "auto"  # targets.shard_size: sized by jobs.plan from the planned images


# ---------------------------------------------------------------------------------------------------------
# The typed config. Fields here are memaudit's own sections; generator/recovery/stats use the packages' types.


@dataclass(frozen=True)
class SourceConfig:
    """One source of target images for a split.

    uri: a file, a directory or a glob (`s3://bucket/train/*.parquet`, `data/val/*.png`), any fsspec URL.
    format: parquet | png | jpg | jpeg | webp | bmp; None infers it from the uri's extension, at construction
        (so after construction it is set, or _check refuses the source).
    Parquet only: image_column (encoded PNG/JPEG bytes) or array_column (raw uint8 values, a list or
    binary column) with shape ([H, W] or [H, W, C], for every row) or shape_column (per row).
    id_column: the image ids; None derives them from the file path (and row, for Parquet).
    """

    uri: str
    format: str | None = None
    image_column: str | None = None
    array_column: str | None = None
    shape: tuple[int, ...] | None = None
    shape_column: str | None = None
    id_column: str | None = None
    label_column: str | None = None  # each image's class for a conditional generator (generator.classes)

    def __post_init__(self) -> None:
        if self.format is None:
            object.__setattr__(self, "format", infer_format(self.uri))

    def _check(self, at: str) -> None:
        if self.format is None:
            raise ConfigError(f"{at}.format: cannot infer the format from {self.uri!r}; set format: one of {', '.join(FORMATS)}")
        if self.format not in FORMATS:
            raise ConfigError(f"{at}.format: {self.format!r} is not one of {', '.join(FORMATS)}")
        fmt = self.format
        columns = ("image_column", "array_column", "shape", "shape_column", "id_column", "label_column")
        if fmt != "parquet":
            given = [c for c in columns if getattr(self, c) is not None]
            if given:
                raise ConfigError(f"{at}.{given[0]}: only Parquet sources have columns (this source is {fmt} files)")
            return
        if (self.image_column is None) == (self.array_column is None):
            raise ConfigError(f"{at}: a Parquet source needs exactly one of image_column (encoded bytes) or array_column (raw uint8)")
        if self.array_column is not None and (self.shape is None) == (self.shape_column is None):
            raise ConfigError(f"{at}: array_column needs exactly one of shape ([H, W] or [H, W, C]) or shape_column")
        if self.image_column is not None and (self.shape is not None or self.shape_column is not None):
            raise ConfigError(f"{at}.shape: only used with array_column")
        if self.shape is not None and (len(self.shape) not in (2, 3) or any(s <= 0 for s in self.shape)):
            raise ConfigError(f"{at}.shape: expected [H, W] or [H, W, C] of positive ints, got {list(self.shape)}")


@dataclass(frozen=True)
class GeneratedConfig:
    """The generated split: `count` images sampled from G itself, latents seeded by (seed, image id)."""

    count: int
    seed: int = 0

    def _check(self, at: str) -> None:
        if self.count < 0:
            raise ConfigError(f"{at}.count: must be >= 0, got {self.count}")


@dataclass(frozen=True)
class TargetsConfig:
    """Split name -> sources, the generated split, and how targets are subsampled and cut into shards.

    limit: per real split (an int for every split, or {split: int}), a random subsample drawn with limit_seed.
    shard_size: images per shard, the unit of work, of retry and of resume; "auto" (the default) is made
        definite by jobs.plan from the planned images alone (jobs.plan.auto_shard_size), never from resources.
    upscale: allow targets smaller than the audit resolution (upsampled); by default they are rejects.
    """

    splits: dict[str, tuple[SourceConfig, ...]] = field(default_factory=dict)
    generated: GeneratedConfig | None = None
    limit: int | dict[str, int] | None = None
    limit_seed: int = 0
    shard_size: int | str = AUTO  # an int >= 1, or AUTO until jobs.plan resolves it
    upscale: bool = False

    def limit_for(self, split: str) -> int | None:
        if isinstance(self.limit, dict):
            return self.limit.get(split)
        return self.limit

    @property
    def split_names(self) -> tuple[str, ...]:
        names = tuple(self.splits)
        return names + ((GENERATED,) if self.generated is not None and self.generated.count > 0 else ())


@dataclass(frozen=True)
class ResourcesConfig:
    """What each actor reserves; one actor holds one generator (DESIGN.md §6)."""

    actors: int = 2
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0

    def _check(self, at: str) -> None:
        if self.actors < 1:
            raise ConfigError(f"{at}.actors: must be >= 1, got {self.actors}")
        if self.gpus_per_actor < 0:
            raise ConfigError(f"{at}.gpus_per_actor: must be >= 0, got {self.gpus_per_actor}")
        if not self.cpus_per_actor > 0:
            raise ConfigError(f"{at}.cpus_per_actor: must be > 0, got {self.cpus_per_actor}")


@dataclass(frozen=True)
class JobConfig:
    """How the job runs; nothing here changes a results row.

    shard_retries: extra attempts for a shard that fails itself (our code, or its actor's process dying on a node that
        stays up); a shard lost with its node goes back to the queue without using one (jobs.losses).
    max_reject_fraction: the job exits 1 when more than this fraction of real images are rejects (default
        0.01, i.e. 1%).
    progress_seconds: seconds between progress lines.
    storage_retries: retries of a storage read or write that fails with a network or server error (the
        first after storage_retry_seconds, each next one after twice as long); an outage that outlasts them
        fails the shard (or the job) with an error naming the URL.
    storage_retry_seconds: the first retry's delay.
    actor_start_timeout: seconds to wait for an actor while none runs, the first one or after every worker was lost
        (an autoscaling cluster may be adding nodes).
    lease_timeout: seconds after its last heartbeat (renewed every lease_timeout / 4) that a run's lease on
        the output lapses, so that another run may take the output over (jobs.lease).
    target_cache: in a checkpoint sweep, decode each shard's targets once and share them between the
        checkpoints through `<out>/cache/targets/` (jobs.target_cache); false decodes them again per checkpoint.
    batch_timeout: seconds a shard may go without one generator call finishing (a forward pass that never
        returns) before the shard fails naming the generator, the shard and the batch size; 0 turns it off.
    """

    shard_retries: int = 2
    max_reject_fraction: float = 0.01
    progress_seconds: float = 10.0
    storage_retries: int = 5
    storage_retry_seconds: float = 0.5
    actor_start_timeout: float = 900.0
    lease_timeout: float = 120.0
    target_cache: bool = True
    batch_timeout: float = 600.0

    def _check(self, at: str) -> None:
        if not self.batch_timeout >= 0:
            raise ConfigError(f"{at}.batch_timeout: must be >= 0 (0: off), got {self.batch_timeout}")
        if not self.lease_timeout > 0:
            raise ConfigError(f"{at}.lease_timeout: must be > 0, got {self.lease_timeout}")
        if self.shard_retries < 0:
            raise ConfigError(f"{at}.shard_retries: must be >= 0, got {self.shard_retries}")
        if not 0 <= self.max_reject_fraction <= 1:
            raise ConfigError(f"{at}.max_reject_fraction: must be in [0, 1], got {self.max_reject_fraction}")
        if not self.progress_seconds > 0:
            raise ConfigError(f"{at}.progress_seconds: must be > 0, got {self.progress_seconds}")
        if self.storage_retries < 0:
            raise ConfigError(f"{at}.storage_retries: must be >= 0, got {self.storage_retries}")
        if not self.storage_retry_seconds >= 0:
            raise ConfigError(f"{at}.storage_retry_seconds: must be >= 0, got {self.storage_retry_seconds}")
        if not self.actor_start_timeout > 0:
            raise ConfigError(f"{at}.actor_start_timeout: must be > 0, got {self.actor_start_timeout}")


@dataclass(frozen=True)
class StorageConfig:
    """S3-compatible stores: endpoint_url (e.g. MinIO, R2). Credentials come from the standard AWS chain only."""

    endpoint_url: str | None = None


@dataclass(frozen=True)
class RunConfig:
    """What this run is, for output.history and checkpoint sweeps; changes no results row.

    model: the model's name in the history (None: the generator file's name without extension; in a
        checkpoint sweep, the checkpoints' folder name).
    tags: free-form text, e.g. {checkpoint: "025000", branch: main}; the trend plots use the last number of
        `checkpoint` as the training step. Values are kept as text (quote them in YAML: 025000 unquoted is an int).
    """

    model: str | None = None
    tags: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AuditConfig:
    """One audit, validated. `base_dir` is where relative paths in the YAML were resolved (for stable identities)."""

    generator: GeneratorSpec
    targets: TargetsConfig
    recovery: RecoverySettings
    stats: Any  # stats.StatsSettings
    output: str
    feature_net: str | None = None  # recovery.feature_net in the YAML: a TorchScript feature network for loss: features
    resources: ResourcesConfig = ResourcesConfig()
    job: JobConfig = JobConfig()
    storage: StorageConfig = StorageConfig()
    history: str | None = None  # output.history: the Parquet dataset each finished run appends its row to
    run: RunConfig = RunConfig()  # run: {model, tags}, recorded with the run
    detectors: tuple[str, ...] = ("recovery",)  # recovery plus companions (jobs.detector_config)
    features: FeaturesConfig = FeaturesConfig()  # the companions' feature space and kNN
    discriminator: DiscriminatorSpec | None = None  # the discriminator check (jobs.labels_and_scores)
    base_dir: str = "."
    config_path: str | None = None

    def identity(self, url: str) -> str:
        """A location as it enters the fingerprint, shard ids and derived image ids (storage.identity), without
        the URL's credentials (redact.strip_secrets): a pre-signed URL signed again for a resumed run (its
        signature and expiry change) is the same location, and the files' versions still tell a changed file."""
        found = storage.identity(url, self.base_dir)
        return strip_secrets(found) if any(c in found for c in "?#@") else found

    def to_dict(self) -> dict:
        """The resolved config, JSON-ready, as saved in run.json (the storage section holds only endpoint_url)."""
        out = {
            "generator": plain(self.generator),
            "targets": plain(self.targets),
            "recovery": {**plain(self.recovery), "feature_net": self.feature_net},
            "resources": plain(self.resources),
            "stats": plain(self.stats),
            "job": plain(self.job),
            "output": self.output,
            "storage": plain(self.storage),
            "history": self.history,
            "run": plain(self.run),
            "detectors": list(self.detectors),
            "features": plain(self.features),
            "discriminator": plain(self.discriminator),
        }
        splits = out["targets"].pop("splits")
        out["targets"] = {**splits, **out["targets"]}
        return out
