"""One audit's configuration: YAML plus command-line overrides -> one frozen, validated AuditConfig.

    config = load_config("audit.yaml", overrides=["recovery.iterations=20"], out="s3://b/audits/x/")

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
from pathlib import Path
from typing import Any, Mapping

from recovery.discriminator import DiscriminatorSpec
from recovery.settings import GeneratorSpec, RecoverySettings

from .detector_config import FeaturesConfig, check_detectors
from .errors import ConfigError
from .locations import check_locations
from .names import check_run_text, check_split_name
from .overrides import TARGET_KEYS, read_raw
from .sections import (AUTO, AuditConfig, GeneratedConfig, JobConfig, ResourcesConfig, RunConfig,
                       SourceConfig, StorageConfig, TargetsConfig)
from .typed import convert, mapping, reject_unknown, shown

DEFAULT_OUTPUT = "memaudit-out"  # under the current directory, when neither --out nor `output:` is given
DEMO_CONFIG = Path(__file__).resolve().parent / "assets" / "demo.yaml"  # `memaudit audit` with no --config


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


def check_models(config: "AuditConfig") -> None:
    """The conditional / discriminator fields agree with each other (no file is read)."""
    classes = config.generator.classes
    for split, sources in config.targets.splits.items():
        for i, src in enumerate(sources):
            if src.label_column and classes is None:
                raise ConfigError(f"targets.{split}[{i}].label_column: the generator is unconditional (no generator.classes); "
                                  "a label column needs a conditional G(z, c): give generator.classes {names: [...], encoding: ...}")
    d = config.discriminator
    if d is not None and d.conditional and classes is None:
        raise ConfigError("discriminator.conditional: a conditional D needs generator.classes for its labels")
    if config.generator.builtin and config.generator.space in ("w", "w_plus"):
        raise ConfigError(f"generator.space: {config.generator.space!r} needs a style-based generator (a mapping network); "
                          f"builtin {config.generator.builtin!r} is a plain G(z): use space: z")


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
