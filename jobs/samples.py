"""samples.parquet: the report's sample images (best / median / worst per split, the most memorized
training images), chosen from the results and rendered by one actor.

    requests = pick_samples(results, plan)             # {split: [SampleRequest]}
    data = render(actors, config, plan, results, ranking)   # Parquet bytes, or None
"""

from __future__ import annotations

import logging
import math

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .actors import SampleRequest
from .config import GENERATED, AuditConfig
from .dispatch import AuditActors, reason
from .plan import Plan

log = logging.getLogger("memaudit")


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


def _source_indexes(plan: Plan) -> dict[tuple[str, str], int]:
    return {(split, url): listing.index for split, found in plan.listings.items() for listing in found
            for url in listing.files}


def _request(part: pa.Table, i: int, split: str, rank: str, source_of: dict[tuple[str, str], int]) -> SampleRequest:
    source = part.column("source")[i].as_py()
    index = -1 if split == GENERATED else source_of[(split, source)]
    return SampleRequest(split, rank, part.column("image_id")[i].as_py(), float(part.column("error")[i].as_py()), index,
                         source, int(part.column("row")[i].as_py()))


def render(actors: AuditActors, config: AuditConfig, plan: Plan, results: pa.Table, ranking: pa.Table) -> bytes | None:
    """samples.parquet bytes, rendered by one actor per split; None (logged, and noted in run.json) if impossible."""
    import ray

    requests = pick_samples(results, plan)
    for split, top in pick_top(results, plan, ranking, top_images=config.stats.top_images).items():
        requests.setdefault(split, []).extend(top)
    if not requests:
        return None
    actor = actors.any_ready(config.job.actor_start_timeout)
    if actor is None:
        log.warning("samples: no actor could start; the report has no sample images")
        return None
    tables = []
    for split, reqs in requests.items():
        # One recover() per split: ids are unique within a split, and one image may hold several ranks.
        unique = list({r.image_id: r for r in reqs}.values())
        try:
            data = ray.get(actor.render_samples.remote(unique))
        except ray.exceptions.RayError as exc:
            log.warning("samples: rendering %s failed (%s); the report has no sample images for it", split, reason(exc))
            continue
        table = table_from_parquet(data)
        by_id = {row["image_id"]: row for row in table.to_pylist()}
        rows = [{**by_id[r.image_id], "rank": r.rank} for r in reqs]
        for row in rows:
            if not math.isclose(row["error"], row["results_error"], rel_tol=1e-3, abs_tol=1e-6):
                log.warning("samples: %s re-recovered to error %.6g, its results row says %.6g (recovery is not "
                            "reproducible on this device)", row["image_id"], row["error"], row["results_error"])
        tables.append(pa.Table.from_pylist(rows, schema=table.schema))
    if not tables:
        return None
    buf = pa.BufferOutputStream()
    pq.write_table(pa.concat_tables(tables), buf)
    return buf.getvalue().to_pybytes()


def table_from_parquet(data: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(data))
