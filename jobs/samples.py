"""samples.parquet: the report's sample images (best / median / worst per split, the most memorized
training images), chosen from the results and rendered in the driver from the latents the parts keep.

    requests = pick_samples(results, plan)                    # {split: [SampleRequest]}
    data = render(generator, config, plan, results, ranking)  # Parquet bytes, or None; no actor, no recovery
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stats import storage
from .sections import GENERATED, AuditConfig
from .errors import JobError
from .plan import Plan
from .redact import redact_text
from .sources import read_items

log = logging.getLogger("memaudit")


@dataclass(frozen=True)
class SampleRequest:
    """One image to render for samples.parquet: where it is, and which rank it holds in its split."""

    split: str
    rank: str  # best | median | worst, or top-<n> for the n-th image of ranking.parquet
    image_id: str
    error: float
    source_index: int  # -1 for generated
    source: str  # file URL (or generated:seed=<n>)
    row: int


def pick_samples(results: pa.Table, plan: Plan) -> dict[str, list[SampleRequest]]:
    """Best, median and worst recovery per split (images with a finite error), as render requests."""
    source_of = _source_indexes(plan)
    chosen: dict[str, list[SampleRequest]] = {}
    for split in pc.unique(results.column("split")).to_pylist():
        part = results.filter(pc.equal(results.column("split"), split))
        errors = part.column("error").to_numpy(zero_copy_only=False)
        order = [int(i) for i in sorted(range(len(errors)), key=lambda i: (errors[i], i)) if math.isfinite(errors[i])]
        if not order:
            continue
        picks = {"best": order[0], "median": order[(len(order) - 1) // 2], "worst": order[-1]}
        chosen[split] = [_request(part, i, split, rank, source_of) for rank, i in picks.items()]
    return chosen


def pick_top(results: pa.Table, plan: Plan, ranking: pa.Table, *, top_images: int) -> dict[str, list[SampleRequest]]:
    """The report's "Most memorized training images" as render requests, rank "top-<n>" (n: the image's rank in
    ranking.parquet): per memorization pair the flagged images, at most top_images, else the min(10, top_images)
    best-ranked. An image ranked against two references is rendered once, under its first pair."""
    source_of = _source_indexes(plan)
    chosen: dict[str, list[SampleRequest]] = {}
    seen: set[tuple[str, str]] = set()
    pairs = ranking.select(["split", "reference"]).group_by(["split", "reference"], use_threads=False).aggregate([])
    for split, reference in zip(pairs.column("split").to_pylist(), pairs.column("reference").to_pylist()):
        mine = ranking.filter(pc.and_(pc.equal(ranking.column("split"), split),
                                      pc.equal(ranking.column("reference"), reference)))
        flagged = int(pc.sum(mine.column("flagged")).as_py() or 0)  # first: the rows are sorted by p-value
        top = mine.slice(0, min(flagged, top_images) if flagged else min(10, top_images)).to_pylist()
        part = results.filter(pc.equal(results.column("split"), split))
        wanted = pa.array([r["image_id"] for r in top], pa.string())
        where = pc.index_in(wanted, value_set=part.column("image_id").combine_chunks().cast(pa.string())).to_pylist()
        for row, i in zip(top, where):
            if (split, row["image_id"]) in seen or i is None:
                continue
            seen.add((split, row["image_id"]))
            chosen.setdefault(split, []).append(_request(part, i, split, f"top-{row['rank']}", source_of))
    return chosen


def _source_indexes(plan: Plan) -> dict[tuple[str, str], tuple[int, str]]:
    """(split, the URL as the parts show it, i.e. redacted) -> (source index, the real URL to read)."""
    return {(split, redact_text(url)): (listing.index, url) for split, found in plan.listings.items()
            for listing in found for url in listing.files}


def _request(part: pa.Table, i: int, split: str, rank: str,
             source_of: dict[tuple[str, str], tuple[int, str]]) -> SampleRequest:
    source = part.column("source")[i].as_py()
    index, source = (-1, source) if split == GENERATED else source_of[(split, source)]
    return SampleRequest(split, rank, part.column("image_id")[i].as_py(), float(part.column("error")[i].as_py()), index,
                         source, int(part.column("row")[i].as_py()))


def render(generator, config: AuditConfig, plan: Plan, results: pa.Table, ranking: pa.Table) -> bytes | None:
    """samples.parquet bytes, rendered in this process (the driver, on the CPU generator it loaded to check
    the config) from the latents the results parts keep: no actor, no second recovery. Targets
    are read again from their sources (generated ones sampled again). None if there is nothing to render.
    """
    requests = pick_samples(results, plan)
    for split, top in pick_top(results, plan, ranking, top_images=config.stats.top_images).items():
        requests.setdefault(split, []).extend(top)
    if not requests:
        return None
    stored = _stored(config, {r.image_id for reqs in requests.values() for r in reqs})
    tables = []
    for split, reqs in requests.items():
        unique = list({r.image_id: r for r in reqs}.values())  # one image may hold several ranks
        missing = [r.image_id for r in unique if (split, r.image_id) not in stored]
        if missing:
            log.warning("samples: no stored latent for %d %s images (e.g. %s; parts written by an older memaudit?); "
                        "the report has no sample images for %s", len(missing), split, missing[0], split)
            continue
        pngs = _render_split(generator, config, unique, [stored[(split, r.image_id)] for r in unique])
        by_id = {r.image_id: png for r, png in zip(unique, pngs)}
        tables.append(pa.table({
            "image_id": pa.array([r.image_id for r in reqs], pa.string()),
            "split": pa.array([split] * len(reqs), pa.string()),
            "rank": pa.array([r.rank for r in reqs], pa.string()),
            "error": pa.array([r.error for r in reqs], pa.float64()),
            "results_error": pa.array([r.error for r in reqs], pa.float64()),  # the same row's: kept for old readers
            "target": pa.array([by_id[r.image_id][0] for r in reqs], pa.binary()),
            "recovery": pa.array([by_id[r.image_id][1] for r in reqs], pa.binary()),
        }))
    if not tables:
        return None
    return storage.parquet_bytes(pa.concat_tables(tables))


def _stored(config: AuditConfig, ids: set[str]) -> dict[tuple[str, str], tuple[list, int | None]]:
    """(split, image id) -> (recovered latent, class label or None) from the results parts, for `ids` only:
    one scan of the parts (pyarrow.dataset) reading the latent column of the matching rows."""
    import pyarrow.dataset as ds

    from . import outputs

    files = outputs.results_files(config.output, config.storage.endpoint_url)
    if not files:
        return {}
    fs, _ = storage.filesystem(config.output, config.storage.endpoint_url)
    found: dict[tuple[str, str], tuple[list, int | None]] = {}
    wanted = pa.array(sorted(ids), pa.string())
    for path in files:  # per file: the parts' schemas differ (z0 on generated parts, label on conditional ones)
        part = ds.dataset(path, filesystem=fs, format="parquet")
        if "latent" not in part.schema.names:
            continue
        columns = ["image_id", "split", "latent"] + (["label"] if "label" in part.schema.names else [])
        table = part.to_table(columns=columns, filter=ds.field("image_id").isin(wanted))
        for row in table.to_pylist():
            found[(row["split"], row["image_id"])] = (row["latent"], row.get("label"))
    return found


def _render_split(generator, config: AuditConfig, requests: list[SampleRequest], stored: list) -> list[tuple[bytes, bytes]]:
    """(target PNG, recovery PNG) per request: G(z*) from the stored latent, the target as audited."""
    import numpy as np
    import torch

    import recovery

    targets = torch.stack([_target(generator, config, r) for r in requests])  # [N, C, H, W]
    latents = torch.from_numpy(np.array([z for z, _ in stored], dtype=np.float32))  # [N, D]
    labels = [c for _, c in stored]
    labels = torch.tensor(labels, dtype=torch.long) if all(c is not None for c in labels) and labels else None
    rendered = recovery.render(generator, latents, settings=config.recovery, labels=labels)  # [N, C, H, W]
    span = config.generator.output_range
    return [(recovery.to_png(t, output_range=span), recovery.to_png(r, output_range=span))
            for t, r in zip(targets, rendered)]


def _target(generator, config: AuditConfig, req: SampleRequest):
    """One request's target, [C, H, W] float32 in the generator's output range, as the actor audited it."""
    import recovery

    if req.source_index < 0:
        _, target = recovery.sample_generated(generator, [req.image_id], seed=config.targets.generated.seed,
                                              settings=config.recovery)
        return target[0]
    src = config.targets.splits[req.split][req.source_index]
    (item,) = read_items(src, [(req.source, [req.row])], config.base_dir, config.storage.endpoint_url)
    if item.image_id != req.image_id or item.data is None:
        raise JobError(f"samples: {req.source} row {req.row} is no longer image {req.image_id!r} (did the source change?)")
    shape = recovery.target_shape(generator, config.recovery)
    return recovery.to_target(item.data, shape=shape, output_range=config.generator.output_range,
                              upscale=config.targets.upscale)


def table_from_parquet(data: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(data))
