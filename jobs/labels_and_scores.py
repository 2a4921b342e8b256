"""The job's side of conditional generators' labels and of the discriminator check's scores.

    check_labels(config, plan)    before any actor starts: every label in every label_column is one of
                                  generator.classes.names (reads only that column of each planned file)
    label_indices(items, ...)     in an actor: the source's labels -> class indices for recovery.recover
    finish(config, detectors)     in the driver: discriminator.parquet from the results' D scores, its row
                                  appended to detectors.parquet (so the verdict's reasons name it)

The actor scores every target with D when `discriminator:` is configured and keeps the scores in two results
columns (discriminator_score, discriminator_real); the driver gathers them here. Generated images are scored
too (their classes are the ones they were drawn with).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stats import storage

from . import outputs
from .errors import ConfigError

if TYPE_CHECKING:
    from .sections import AuditConfig
    from .plan import Plan

SCORE, REAL = "discriminator_score", "discriminator_real"  # results columns written by the actor


def check_labels(config: "AuditConfig", plan: "Plan") -> None:
    """Every value of every planned file's label column names a class; raises ConfigError naming the first that does not."""
    classes = config.generator.classes
    if classes is None:
        return
    names = pa.array(list(classes.names), pa.string())
    seen: set[tuple[str, int, str]] = set()
    for shard in plan.shards:
        if shard.generated:
            continue
        src = config.targets.splits[shard.split][shard.source_index]
        if not src.label_column:
            continue
        for url, _ in shard.segments:
            if (shard.split, shard.source_index, url) in seen:
                continue
            seen.add((shard.split, shard.source_index, url))
            fs, path = storage.filesystem(url, config.storage.endpoint_url)
            with fs.open(path, "rb") as f:
                column = pq.read_table(f, columns=[src.label_column]).column(0)
            values = pc.cast(column, pa.string())
            bad = pc.invert(pc.fill_null(pc.is_in(values, value_set=names), False))
            if pc.any(bad).as_py():
                k = pc.index(bad, True).as_py()
                raise ConfigError(f"targets.{shard.split}[{shard.source_index}].label_column: row {k} of {url} has label "
                                  f"{column[k].as_py()!r}, not one of generator.classes.names ({', '.join(classes.names[:20])})")


def label_indices(labels: Sequence[object], config: "AuditConfig") -> list[int]:
    """Source labels -> class indices (check_labels made sure each one is a class)."""
    classes = config.generator.classes
    return [classes.index(v, "label_column") for v in labels]


def scores_table(results: pa.Table) -> pa.Table | None:
    """discriminator.parquet's rows from the results' D columns; None when D did not run."""
    if SCORE not in results.column_names:
        return None
    return pa.table({"image_id": results.column("image_id"), "split": results.column("split"),
                     "score": pc.cast(results.column(SCORE), pa.float64()), "classified_real": results.column(REAL)})


def finish(config: "AuditConfig", results: pa.Table, detectors: pa.Table | None) -> tuple[pa.Table | None, pa.Table | None]:
    """Write discriminator.parquet and its detectors.parquet row; returns (scores, detectors with the row)."""
    if config.discriminator is None:
        return None, detectors
    from stats.detect.detectors import detectors_table
    from stats.detect.discriminator import discriminator_test

    scores = scores_table(results)
    if scores is None:
        raise ConfigError("discriminator: configured, but the results have no discriminator scores (an output from before it was set?)")
    out, endpoint = config.output, config.storage.endpoint_url
    pair = config.stats.pairs[0] if config.stats.pairs else ("train", "val")
    row = detectors_table([discriminator_test(scores, config.stats, a=pair[0], b=pair[1])])
    if detectors is not None and "detector" in detectors.column_names:
        detectors = detectors.filter(pc.not_equal(detectors.column("detector"), "discriminator"))
        row = pa.concat_tables([detectors, row.cast(detectors.schema)])
    for name, table in (("discriminator.parquet", scores), ("detectors.parquet", row)):
        storage.put_atomic(outputs.file_url(out, name), storage.parquet_bytes(table), endpoint)
    return scores, row


def with_detectors(companions, detectors: pa.Table | None):
    """The companions' files (stats CompanionFiles or None) with detectors replaced, for the report."""
    if detectors is None:
        return companions
    from stats.report.companions import CompanionFiles

    return dataclasses.replace(companions or CompanionFiles(), detectors=detectors)


def load_discriminator(generator, shape: tuple[int, int, int], config: "AuditConfig", device):
    """The configured D on the actor's device (recovery.discriminator), or None; it scores images at G's own size."""
    spec = config.discriminator
    if spec is None:
        return None
    import recovery
    from recovery.discriminator import load_discriminator as load

    if tuple(shape) != tuple(generator.output_shape):
        raise recovery.RecoveryError(f"discriminator: D scores images at the generator's own size {list(generator.output_shape)}; "
                                     f"the audit runs at {list(shape)} (recovery.resolution): unset it to use the discriminator check")
    url = spec.torchscript or spec.pickle or spec.checkpoint or ""
    return load(spec, input_shape=generator.output_shape, classes=config.generator.classes, device=device,
                storage_options=storage.storage_options(url, config.storage.endpoint_url))


def add_scores(table: pa.Table, discriminator, targets, labels, *, batch_size: int, threshold: float) -> pa.Table:
    """recover()'s table with D's score per target and whether D calls it real (score > threshold), scored in
    batches of the actor's resolved batch size (the search's)."""
    if discriminator is None:
        return table
    if labels is None and "label" in table.column_names and discriminator.classes is not None:
        import torch

        labels = torch.tensor(table.column("label").to_pylist())  # the class the search found
    scores = discriminator.score(targets, labels, batch_size=batch_size).numpy()  # [N]
    table = table.append_column(SCORE, pa.array(scores, pa.float64()))
    return table.append_column(REAL, pa.array(scores > threshold, pa.bool_()))


def result_columns(config: "AuditConfig") -> tuple[str, ...]:
    """The results columns the driver reads for this module: D's scores when the check is configured."""
    return (SCORE, REAL) if config.discriminator is not None else ()


def generator_url(spec) -> str:
    """The URL whose store options load the generator: its TorchScript (the mapping's, for a pair), pickle or checkpoint."""
    script = spec.torchscript["mapping"] if isinstance(spec.torchscript, dict) else spec.torchscript
    return script or spec.pickle or spec.checkpoint or spec.diffusers or ""


def search_info(generator) -> dict:
    """What run.json and the report say about the search: the space (z, w, w_plus), noise and classes, as loaded."""
    spec = generator.spec
    return {"space": generator.space, "style_based": generator.latent.prior == "mapped" or generator.space != "z",
            "noise": spec.noise, "classes": len(spec.classes.names) if spec.classes else 0}
