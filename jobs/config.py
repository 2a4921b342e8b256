"""One audit's configuration: YAML plus command-line overrides -> one frozen, validated AuditConfig.

    config = load_config("audit.yaml", overrides=["recovery.iterations=20"], out="s3://b/audits/x/")
    config.settings_hash        # the config half of the run's fingerprint (jobs.fingerprint)

Every field is checked here, before Ray starts: an unknown key or a bad value raises ConfigError naming
the dotted field (`targets.train[0].image_column: ...`) and the reason, with the valid choices where
there are some. The generator and recovery sections are built into recovery's own spec classes, whose
checks (and dotted messages) are reused as they are; the stats section into stats.StatsSettings.

Relative local paths in the YAML resolve against the YAML file's directory; paths given on the command
line (--out, --set) against the current directory (jobs.overrides). Defaults live in the dataclasses below
and in DEFAULT_OUTPUT; nowhere else. Everything derived from the YAML is resolved here, once: a source's
format is inferred at construction, paths are absolute, and the rest of the job reads the frozen config.
YAML values become dataclasses through jobs.typed, which puts the dotted name in every error.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from recovery.discriminator import DiscriminatorSpec
from recovery.settings import GeneratorSpec, RecoverySettings

from stats import storage
from .detector_config import FeaturesConfig, check_detectors
from .errors import ConfigError
from .fingerprint import settings_hash
from .locations import check_locations
from .labels_and_scores import check_models
from .names import check_run_text, check_split_name
from .redact import strip_secrets
from .overrides import TARGET_KEYS, read_raw
from .formats import FORMATS, infer_format
from .typed import convert, mapping, plain, reject_unknown, shown

DEFAULT_OUTPUT = "memaudit-out"  # under the current directory, when neither --out nor `output:` is given
DEMO_CONFIG = Path(__file__).resolve().parent / "assets" / "demo.yaml"  # `memaudit audit` with no --config
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

    @property
    def settings_hash(self) -> str:
        """The config half of the run's fingerprint (jobs.fingerprint.settings_hash)."""
        return settings_hash(self)

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


SECTIONS = ("generator", "targets", "recovery", "resources", "stats", "job", "output", "storage", "detectors",
            "features", "discriminator")


SECTIONS += ("run",)  # run: {model, tags} (RunConfig)


# ---------------------------------------------------------------------------------------------------------
# Loading


def _default(name: str) -> Any:
    """AuditConfig's default for a field, so that no default is written twice."""
    return {f.name: f.default for f in dataclasses.fields(AuditConfig)}[name]


def load_config(
    path: str | os.PathLike | None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    out: str | None = None,
    cwd: str | None = None,
) -> AuditConfig:
    """Read a YAML config (None: the bundled demo), apply `dotted.key=value` overrides and --out, validate.

    Args:
        path: the YAML file; relative local paths inside it resolve against its directory.
        overrides: `recovery.iterations=20`, `targets.limit=100`, ...; values are parsed as YAML scalars or
            flow collections; relative paths in them resolve against `cwd`.
        out: the output URL (--out), overriding `output:`; relative to `cwd`.
        cwd: the directory command-line paths are relative to; the process's current directory by default.

    Returns:
        the validated AuditConfig.

    Raises:
        ConfigError: naming the first bad field.
    """
    cwd = os.path.abspath(cwd or os.getcwd())
    path = Path(path) if path is not None else DEMO_CONFIG
    raw = read_raw(path, overrides=overrides, out=out, cwd=cwd, default_output=DEFAULT_OUTPUT, sections=SECTIONS)
    return build_config(raw, base_dir=str(path.resolve().parent), config_path=str(path.resolve()))


def build_config(raw: Mapping, *, base_dir: str, config_path: str | None = None) -> AuditConfig:
    """A raw mapping (paths already resolved) -> AuditConfig; see load_config."""
    from stats import StatsSettings  # stats imports no torch/ray; imported here to keep `jobs.config` light

    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: expected a mapping of sections, got {type(raw).__name__}")
    reject_unknown(raw, SECTIONS, "")
    for required in ("generator", "targets"):
        if required not in raw:
            raise ConfigError(f"{required}: required")
    generator = convert(GeneratorSpec, raw["generator"], "generator")
    recovery_raw = mapping(raw.get("recovery") or {}, "recovery")
    recovery_raw = dict(recovery_raw)  # feature_net is the job's (a URL to load), not the search's: taken out here
    feature_net = convert(str | None, recovery_raw.pop("feature_net", None), "recovery.feature_net")
    recovery = convert(RecoverySettings, recovery_raw, "recovery")
    if generator.diffusers:  # a diffusion model is not searched (recovery.diffusion_stats): no learned start, no cap
        recovery = dataclasses.replace(recovery, start="prior", start_cap=None)
    stats_settings = convert(StatsSettings, raw.get("stats") or {}, "stats")
    if generator.diffusers and generator.diffusion.statistic != "inversion" and \
            "min_generated_success" not in (raw.get("stats") or {}):
        # The generated gate checks that a search finds G's own images; a denoising statistic searches nothing.
        # The DDIM inversion's fidelity on the generated split stays in the summary (mse: its reconstruction).
        stats_settings = dataclasses.replace(stats_settings, min_generated_success=0.0)
    if recovery.loss == "features" and not feature_net:
        raise ConfigError("recovery.feature_net: loss: features needs a TorchScript feature network URL")
    if feature_net and recovery.loss != "features":
        raise ConfigError(f"recovery.feature_net: only used with loss: features (loss is {recovery.loss})")
    config = AuditConfig(
        generator=generator,
        targets=_targets(raw["targets"]),
        recovery=recovery,
        stats=stats_settings,
        **_output(raw["output"]),
        run=_run(raw.get("run")),
        feature_net=feature_net,
        resources=convert(ResourcesConfig, raw.get("resources") or {}, "resources"),
        job=convert(JobConfig, raw.get("job") or {}, "job"),
        storage=convert(StorageConfig, raw.get("storage") or {}, "storage"),
        detectors=check_detectors(raw.get("detectors", _default("detectors"))),
        features=convert(FeaturesConfig, raw.get("features") or {}, "features"),
        discriminator=convert(DiscriminatorSpec | None, raw.get("discriminator"), "discriminator"),
        base_dir=base_dir,
        config_path=config_path,
    )
    check_locations(config)
    check_models(config)
    if "pairs" in (raw.get("stats") or {}):  # named by the user: each split must be audited (the default may not be)
        for i, pair in enumerate(config.stats.pairs):
            for split in (s for s in pair if s not in config.targets.splits):
                raise ConfigError(f"stats.pairs[{i}]: split {split!r} is not in targets "
                                  f"({', '.join(config.targets.splits) or 'none'})")
    return config


def _output(raw: Any) -> dict[str, str | None]:
    """`output: URL` or `output: {path: URL, history: URL}` -> the AuditConfig fields output and history."""
    if not isinstance(raw, Mapping):
        return {"output": convert(str, raw, "output"), "history": None}
    reject_unknown(raw, ("path", "history"), "output")
    if "path" not in raw:
        raise ConfigError("output.path: required when output is a mapping (output: {path: URL, history: URL})")
    return {"output": convert(str, raw["path"], "output.path"),
            "history": convert(str | None, raw.get("history"), "output.history")}


def _run(raw: Any) -> RunConfig:
    raw = mapping(raw if raw is not None else {}, "run")
    reject_unknown(raw, ("model", "tags"), "run")
    tags = mapping(raw.get("tags") if raw.get("tags") is not None else {}, "run.tags")
    for key, value in tags.items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"run.tags.{key}: expected text or a number, got {shown(value)}")
    model = convert(str | None, raw.get("model"), "run.model")
    check_run_text(model, tags)
    return RunConfig(model=model, tags={str(k): str(v) for k, v in tags.items()})


def _targets(raw: Any) -> TargetsConfig:
    raw = mapping(raw, "targets")
    splits: dict[str, tuple[SourceConfig, ...]] = {}
    for name, value in raw.items():
        if name in TARGET_KEYS:
            continue
        at = check_split_name(name, splits)
        if isinstance(value, (str, Mapping)):
            value = [value]  # one source may be given without the list
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{at}: expected a list of sources ({{uri: ...}} or a URI string), got {value!r}")
        sources = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                item = {"uri": item}
            sources.append(convert(SourceConfig, item, f"{at}[{i}]"))
        splits[name] = tuple(sources)
    generated = convert(GeneratedConfig | None, raw.get("generated"), "targets.generated")
    limit = raw.get("limit")
    if isinstance(limit, Mapping):
        limit = {str(k): convert(int, v, f"targets.limit.{k}") for k, v in limit.items()}
        for k, v in limit.items():
            if k not in splits:
                raise ConfigError(f"targets.limit.{k}: no such split (splits: {', '.join(splits) or 'none'})")
            if v < 1:
                raise ConfigError(f"targets.limit.{k}: must be >= 1, got {v}")
    else:
        limit = convert(int | None, limit, "targets.limit")
        if limit is not None and limit < 1:
            raise ConfigError(f"targets.limit: must be >= 1, got {limit}")
    shard_size = _shard_size(raw.get("shard_size", AUTO))
    targets = TargetsConfig(
        splits=splits,
        generated=generated,
        limit=limit,
        limit_seed=convert(int, raw.get("limit_seed", 0), "targets.limit_seed"),
        shard_size=shard_size,
        upscale=convert(bool, raw.get("upscale", False), "targets.upscale"),
    )
    if not targets.split_names:
        raise ConfigError("targets: no splits; give at least one split of sources (e.g. train, val) or generated: {count: N}")
    return targets


def _shard_size(value: Any) -> int | str:
    """targets.shard_size: "auto" or an integer >= 1 (under its bound in jobs.limits)."""
    if value == AUTO:
        return AUTO
    if isinstance(value, str) or value is None:
        raise ConfigError(f"targets.shard_size: expected {AUTO} or an integer >= 1, got {shown(value)}")
    size = convert(int, value, "targets.shard_size")
    if size < 1:
        raise ConfigError(f"targets.shard_size: must be >= 1 (or {AUTO}), got {size}")
    return size
