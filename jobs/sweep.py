"""Checkpoint sweeps: `generator.torchscript` (or `checkpoint`, `pickle`) as a glob of checkpoints.

    generator: {torchscript: "s3://bucket/run-7/ckpt-*.pt", latent: ...}
    output: s3://bucket/audits/run-7-sweep/

runs one audit per matching file, in name order, each a complete output of its own under
`<out>/checkpoint=<name>/` (name: the file name without its extension), with `run.tags.checkpoint`
set to that name; then writes `<out>/sweep.parquet` (one history row per checkpoint,
stats.history.runs's columns) and `<out>/sweep.html` (the trend plots against the checkpoint's step,
the last number in its name): the paper's question, when in training memorization starts.

What the checkpoints share: the config and its validation, one Ray instance, and the plan: the
sources are listed, their rows selected, their ids checked and the shards cut once (at 10^7 rows
that is most of the driver's own work); each checkpoint's plan differs only in its fingerprint.
Target decoding is shared too (job.target_cache, on by default): the first checkpoint's actors keep each
real shard's decoded targets under `<out>/cache/targets/` and the others read them instead of the sources
(jobs.target_cache). Each checkpoint's output resumes on its own, so a re-submitted sweep runs only what is
missing.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
from typing import Any


from stats import storage
from .sections import AuditConfig
from .errors import ConfigError
from .names import NAME_MAX
from .fingerprint import fingerprint
from .plan import Plan, make_plan, sized
from .target_cache import TargetCache, data_key

log = logging.getLogger("memaudit")
SWEEP_FIELDS = ("torchscript", "checkpoint", "pickle", "diffusers")  # diffusers: a glob of save_pretrained folders


def sweep_field(config: AuditConfig) -> str | None:
    """The generator field that holds a glob of checkpoints, or None for a single-checkpoint audit."""
    for name in SWEEP_FIELDS:
        value = getattr(config.generator, name, None)
        if isinstance(value, str) and storage.is_glob(value):  # a pre-signed URL's '?' is no glob
            return name
    return None


def checkpoints(config: AuditConfig) -> list[tuple[str, str]]:
    """(name, url) of each file the generator glob matches, sorted by name; [] when it is no glob.

    Raises:
        ConfigError: the glob matches no file, or two files have the same name without extension.
    """
    field = sweep_field(config)
    if field is None:
        return []
    pattern = getattr(config.generator, field)
    fs, path = storage.filesystem(pattern, config.storage.endpoint_url)
    folders = field == "diffusers"  # a diffusers checkpoint is a save_pretrained folder, the others are files
    found = sorted(p for p in storage.retrying(lambda: fs.glob(path), f"listing {pattern}") if fs.isdir(p) == folders)
    if not found:
        raise ConfigError(f"generator.{field}: the glob {pattern!r} matches no {'folder' if folders else 'file'}")
    named = [(checkpoint_name(p, folder=folders), storage.with_protocol(pattern, p)) for p in found]
    for name, _ in named:
        if len(checkpoint_folder(name).encode()) > NAME_MAX:
            raise ConfigError(f"generator.{field}: the checkpoint {name[:40]}... makes the output folder "
                              f"checkpoint=<name> of {len(checkpoint_folder(name).encode())} bytes, more than a folder "
                              f"name holds ({NAME_MAX}); rename the file")
    names = [n for n, _ in named]
    folded = [n.lower() for n in names]  # checkpoint=<name> folders: one on a case-insensitive filesystem
    duplicated = sorted({n for n, f in zip(names, folded) if folded.count(f) > 1})
    if duplicated:
        raise ConfigError(f"generator.{field}: several files of {pattern!r} are named {duplicated[0]!r} "
                          "without their extension (or up to case); a sweep names each output after its checkpoint")
    return sorted(named)


def checkpoint_name(path: str, *, folder: bool = False) -> str:
    """A checkpoint's name: its file name without the extension ("ckpt-025000.pt" -> "ckpt-025000"); a folder's
    whole name (a diffusers save_pretrained folder "ddpm.v2" stays "ddpm.v2")."""
    base = posixpath.basename(path.rstrip("/"))
    return base if folder or "." not in base[1:] else base.rsplit(".", 1)[0]


def checkpoint_config(config: AuditConfig, name: str, url: str) -> AuditConfig:
    """The config of one checkpoint's audit: its file, its own output under the sweep's, its checkpoint tag."""
    field = sweep_field(config)
    generator = dataclasses.replace(config.generator, **{field: url})
    changes: dict[str, Any] = {"generator": generator, "output": checkpoint_output(config.output, name)}
    run = config.run
    changes["run"] = dataclasses.replace(run, model=sweep_model(config),
                                         tags={**dict(run.tags or {}), "checkpoint": name})
    return dataclasses.replace(config, **changes)


def sweep_model(config: AuditConfig) -> str:
    """The model every checkpoint of a sweep is recorded under: run.model, else the checkpoints' folder name
    (one model for all of them, so the history shows one trend, not one model per checkpoint)."""
    if config.run.model:
        return config.run.model
    pattern = getattr(config.generator, sweep_field(config) or "torchscript")
    return posixpath.basename(posixpath.dirname(str(pattern).rstrip("/"))) or "sweep"


def checkpoint_folder(name: str) -> str:
    return f"checkpoint={name}"


def checkpoint_output(out: str, name: str) -> str:
    return storage.join(out, checkpoint_folder(name))


def check_checkpoints(config: AuditConfig, found: list[tuple[str, str]]):
    """Load and check every checkpoint of a sweep on this CPU (jobs.preflight: load + one forward pass) before the
    first audit, so a truncated file in the middle is named up front instead of stopping the sweep after hours,
    with the checkpoints after it never audited and no sweep.parquet. Returns the first checkpoint's generator
    (the driver renders its samples with it); the others are dropped once checked.

    Raises:
        ConfigError: naming every checkpoint that fails and why; no audit has started.
    """
    from recovery import RecoveryError

    from .preflight import load_generator_cpu

    first, bad = None, []
    for name, url in found:
        try:
            generator = load_generator_cpu(checkpoint_config(config, name, url))
        except (RecoveryError, ConfigError) as exc:
            bad.append(f"{name} ({exc})")
            continue
        first = first if first is not None else generator
    if bad:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ConfigError(f"generator.{sweep_field(config)}: {len(bad)} of {len(found)} checkpoints cannot be audited: "
                          f"{shown}. Fix or remove them (no checkpoint was audited)")
    return first


def write_sweep(config: AuditConfig, done: list[tuple[str, str]]) -> str | None:
    """sweep.parquet and sweep.html under the sweep's output, from the finished checkpoints' outputs."""
    if not done:
        return None
    import pyarrow as pa

    from stats.history.runs import history_row
    from stats.report.history import render_history

    endpoint = config.storage.endpoint_url
    model = sweep_model(config)
    table = pa.concat_tables([
        history_row(url, storage_options=storage.storage_options(url, endpoint), model=model,
                    tags={**dict(config.run.tags or {}), "checkpoint": name})
        for name, url in done])
    storage.put_atomic(storage.join(config.output, "sweep.parquet"), storage.parquet_bytes(table), endpoint)
    page = render_history(table, title=f"memaudit checkpoint sweep: {model}", gap_threshold=config.stats.gap_threshold)
    url = storage.join(config.output, "sweep.html")
    storage.put_atomic(url, page.encode("utf-8"), endpoint)
    return url


def run_sweep(config: AuditConfig, found: list[tuple[str, str]], *, plan: Plan | None = None, fail_on: str | None,
              **run_options: Any) -> int:
    """One audit per checkpoint (jobs.driver.run_audit with run_options), each appended to output.history when
    set, then sweep.parquet and sweep.html; returns the worst exit code (worst()).

    plan: the first checkpoint's plan when the caller has made it; every checkpoint reuses its listing.
    """
    from .driver import run_audit
    from .tracking import exit_code, record_or_fail

    plan = plan or make_plan(checkpoint_config(config, *found[0]))
    cache = shared_targets(config, plan)
    codes, done = [], []
    for i, (name, url) in enumerate(found, 1):
        one = checkpoint_config(config, name, url)
        log.info("checkpoint %d of %d: %s -> %s", i, len(found), name, one.output)
        outcome = run_audit(one, plan=checkpoint_plan(plan, one), target_cache=cache, **run_options)
        codes.append(record_or_fail(one, outcome, exit_code(outcome, fail_on)))
        if outcome.reduction is not None:
            done.append((name, one.output))
    page = write_sweep(config, done)
    if page:
        log.info("sweep: %d of %d checkpoints audited; %s", len(done), len(found), page)
    return worst(codes)


def shared_targets(config: AuditConfig, plan: Plan) -> TargetCache | None:
    """The sweep's decoded-targets cache under `<out>/cache/targets/` (None with job.target_cache: false)."""
    if not config.job.target_cache:
        return None
    return TargetCache(storage.join(config.output, "cache", "targets"), data_key(config, plan),
                       config.storage.endpoint_url)


def checkpoint_plan(plan: Plan, config: AuditConfig) -> Plan:
    """A plan for another checkpoint of the same sweep: the same listing and shards, this config's fingerprint
    (with the plan's resolved targets.shard_size, as make_plan hashes it)."""
    return dataclasses.replace(plan, fingerprint=fingerprint(sized(config, plan.shard_size), plan.listings))


def worst(codes: list[int]) -> int:
    """One exit code for the sweep: an error (1) first, then memorization (3), inconclusive (4), else 0."""
    for code in (1, 3, 4):
        if code in codes:
            return code
    return max(codes, default=0)


def describe(found: list[tuple[str, str]]) -> str:
    if not found:
        raise ConfigError("sweep: no checkpoints")
    return f"checkpoint sweep over {len(found)} files: " + ", ".join(n for n, _ in found)
