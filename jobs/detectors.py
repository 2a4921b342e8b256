"""Companion detectors in the job: the config section, and the driver's pass after the recovery shards.

    detectors: [recovery, neighbours, mifid, ct, birthday]     # default [recovery]
    features: {space: pixel, crop: 48, metric: l2, k: 5}        # or space: net, net: s3://.../sscd.pt

companions = run_detectors(pool, config, plan, results) does, on the job's actors (jobs.features):
  1. features of every train, reference (val) and generated image, one part per shard, reused when present;
  2. the exact k nearest train images of every reference and generated image, one part per train block
     (features.train_block images) against all queries, reused when present;
then on the driver: merges the blocks' top-k (neighbours.parquet), runs the statistics (stats.detect.companions:
detectors.parquet, ct_cells.parquet, birthday.parquet) and has one actor render the closest pairs
(pairs.parquet). Recovery always runs: it is the audit the others sit beside; `detectors` adds the rest.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stats import storage
from stats.detect.companions import evaluate, needs
from .errors import JobError
from .sections import GENERATED
from .raylink import reason
from .features import (TASKS, ImageRef, KnnBlock, features_key, features_url, knn_key, knn_url, read_features, read_table,
                       to_matrix)

log = logging.getLogger("memaudit")

FILES = ("neighbours.parquet", "detectors.parquet", "ct_cells.parquet", "birthday.parquet", "pairs.parquet")
PAIRS_SHOWN = {"neighbours": 8, "birthday": 4}


def companions_selected(config) -> list[str]:
    return [d for d in getattr(config, "detectors", ("recovery",)) if d != "recovery"]


# ---------------------------------------------------------------------------------------------------------
# The driver's pass


def run_detectors(pool, config, plan, results: pa.Table, *, generator=None):
    """Features, kNN, statistics and pairs for the selected companions; None when only recovery is selected.

    generator: G loaded on the driver's CPU, if the driver has it: the closest pairs are then rendered here
    instead of on an actor (a re-run whose parts all exist starts no actor).

    Returns stats.report.companions.CompanionFiles (also written under the output)."""
    selected = companions_selected(config)
    if not selected:
        return None
    from stats.detect.nearest import merge_neighbours
    from stats.report.companions import CompanionFiles

    started = time.time()
    out, endpoint, features = config.output, config.storage.endpoint_url, config.features
    train_split, reference = config.stats.pairs[0]
    fkey = features_key(plan.fingerprint, features, config.identity(features.net) if features.net else None)
    wanted = [s for s in plan.shards if s.split in (train_split, reference, GENERATED)]
    urls = {s.id: features_url(out, fkey, s.split, s.id) for s in wanted}
    present = _present(storage.join(out, "features", fkey), endpoint)  # one listing, not a request per part
    todo = [s for s in wanted if _tail(urls[s.id]) not in present]
    log.info("detectors %s: features (%s) of %d shards, %d already computed", ", ".join(selected), features.name,
             len(wanted), len(wanted) - len(todo))
    _dispatch(pool, config, [("features", (s, fkey)) for s in todo])
    train = [urls[s.id] for s in wanted if s.split == train_split]
    queries = tuple(urls[s.id] for s in wanted if s.split != train_split)
    needed = needs(selected)  # what the selected companions read (stats.detect.companions.REGISTRY)
    kkey = knn_key(fkey, features, "mifid" in needed)
    blocks = _blocks([s for s in wanted if s.split == train_split], train, queries, features.train_block)
    parts = {b.id: knn_url(out, fkey, kkey, b.id) for b in blocks}
    todo_blocks = [b for b in blocks if _tail(parts[b.id]) not in present]
    log.info("detectors: k=%d nearest train images by %s, %d train blocks (%d already computed)", features.k,
             features.metric, len(blocks), len(blocks) - len(todo_blocks))
    _dispatch(pool, config, [("knn", (b, parts[b.id])) for b in todo_blocks])
    tables = [read_table(parts[b.id], endpoint) for b in blocks]
    neighbours, mifid = merge_neighbours(pa.concat_tables(tables), k=features.k, space=features.name) if tables \
        else (None, None)
    loaded = _load_features(config, {s: [urls[x.id] for x in wanted if x.split == s] for s in (reference, GENERATED)},
                            train, train_rows=sum(s.size for s in wanted if s.split == train_split)
                            if "features" in needed else 0)
    found = evaluate(selected, neighbours=neighbours, mifid=mifid, features=loaded, settings=config.stats,
                     metric=features.metric, reference=reference, train=train_split)
    pairs = _pairs(pool, config, plan, results, neighbours, found.birthday, generator)
    files = CompanionFiles(found.table, found.cells, found.birthday, pairs, neighbours)
    for name, table in (("neighbours.parquet", neighbours), ("detectors.parquet", found.table),
                        ("ct_cells.parquet", found.cells), ("birthday.parquet", found.birthday),
                        ("pairs.parquet", pairs)):
        if table is not None:
            storage.put_atomic(storage.join(out, name), storage.parquet_bytes(table), endpoint)
    fired = [r["detector"] for r in found.table.to_pylist() if r["fired"]]
    log.info("detectors done in %.1fs; fired: %s", time.time() - started, ", ".join(fired) or "none")
    return files


def _present(prefix: str, endpoint: str | None) -> set[str]:
    """The parts under a features folder, as their last two path components (split=<s>/part-<id>.parquet)."""
    return {_tail(p) for p in storage.find_files(prefix, endpoint) if p.endswith(".parquet")}


def _tail(url: str) -> str:
    return "/".join(url.rstrip("/").split("/")[-2:])


def _blocks(shards: list, urls: list[str], queries: tuple[str, ...], rows: int) -> list[KnnBlock]:
    """Consecutive train shards, at most `rows` images per block (a shard larger than that is a block alone)."""
    blocks, current, size = [], [], 0
    for shard, url in zip(shards, urls):
        if current and size + shard.size > rows:
            blocks.append(current)
            current, size = [], 0
        current.append((shard.id, url))
        size += shard.size
    if current:
        blocks.append(current)
    return [KnnBlock(storage.cache_key([i for i, _ in b]), tuple(u for _, u in b), queries)
            for b in blocks]


def _load_features(config, by_split: dict[str, list[str]], train: list[str], *, train_rows: int) -> dict:
    """split -> (ids, [N, D]) for the reference and generated splits, and a seeded sample of about
    ct_max_train train rows (train_rows > 0), drawn part by part so the driver never holds every train feature."""
    endpoint = config.storage.endpoint_url
    loaded = {}
    for split, urls in by_split.items():
        ids, _, matrix = read_features(urls, endpoint)
        if ids:
            loaded[split] = (ids, matrix)
    if train_rows <= 0 or not train:
        return loaded
    rng = np.random.default_rng(config.stats.seed)
    share = min(1.0, config.stats.ct_max_train / train_rows)
    ids, kept = [], []
    for url in train:
        table = read_table(url, endpoint)
        chosen = rng.random(table.num_rows) < share
        if chosen.any():
            ids += [i for i, c in zip(table.column("image_id").to_pylist(), chosen) if c]
            kept.append(to_matrix(table)[chosen])
    if kept:
        loaded[config.stats.pairs[0][0]] = (ids, np.concatenate(kept))
    return loaded


def _dispatch(pool, config, calls: list[tuple[str, tuple]]) -> list[Any]:
    """Run actor tasks as actors free up; a task that raises is retried job.shard_retries times, then the
    pass fails (the recovery parts are kept; re-running finishes only what is missing). A task whose actor
    was lost with its node goes back to the queue without using a retry, and the actor rejoins once Ray
    has restarted it."""
    import ray

    if not calls:
        return []
    pool.start()
    queue = [(name, args, 0) for name, args in calls]
    running: dict = {}
    results: list[Any] = []
    deadline = time.time() + config.job.actor_start_timeout
    while queue or running:
        while pool.idle and queue:
            actor = pool.idle.popleft()
            name, args, attempt = queue.pop(0)
            running[actor.detector_task.remote(name, *args)] = (actor, name, args, attempt)
        waiting = list(running) + list(pool.starting)
        if not waiting:
            raise JobError("detectors: no actor is left to compute features; re-run the same command to resume")
        if not running and time.time() > deadline:
            raise JobError(f"detectors: no actor became ready within {config.job.actor_start_timeout:g}s (see `ray status`)")
        ready, _ = ray.wait(waiting, num_returns=1, timeout=1.0)
        for ref in ready:
            if ref in pool.starting:
                pool.on_ready(ref, pool.starting[ref])
                continue
            actor, name, args, attempt = running.pop(ref)
            try:
                results.append(ray.get(ref))
                pool.idle.append(actor)
            except ray.exceptions.RayTaskError as exc:
                pool.idle.append(actor)
                if attempt >= config.job.shard_retries:
                    cause = exc.cause if isinstance(exc.cause, Exception) else exc
                    if isinstance(cause, ValueError):  # RecoveryError and friends: the user's to fix
                        raise cause from None
                    raise JobError(f"detectors: {name} task failed: {cause}") from None
                log.warning("detectors: %s task failed (%s); retry %d", name, exc.cause, attempt + 1)
                queue.insert(0, (name, args, attempt + 1))
            except ray.exceptions.RayError as exc:  # the actor or its node is gone: not the task's fault
                log.warning("detectors: the actor running a %s task was lost (%s); the task goes back to the queue",
                            name, reason(exc))
                pool.rejoin(actor)  # Ray restarts it where there is room; it comes back through `starting`
                queue.insert(0, (name, args, attempt))
    return results


def _pairs(pool, config, plan, results: pa.Table, neighbours: pa.Table | None, birthday: pa.Table,
           generator=None) -> pa.Table | None:
    """pairs.parquet: the closest generated/train pairs and birthday pairs, rendered in the driver with its
    CPU generator when it has one, else by one actor."""
    import ray

    from stats.report.companions import PAIRS_SCHEMA

    train_split = config.stats.pairs[0][0]
    wanted: list[tuple[str, str, str, str, str, float]] = []
    if neighbours is not None:
        nearest = neighbours.filter(pc.and_(pc.equal(neighbours.column("query_split"), GENERATED),
                                            pc.equal(neighbours.column("rank"), 1))).sort_by("distance")
        wanted += [("neighbours", r["query_id"], GENERATED, r["train_id"], train_split, r["distance"])
                   for r in nearest.slice(0, PAIRS_SHOWN["neighbours"]).to_pylist()]
    wanted += [("birthday", r["id_a"], GENERATED, r["id_b"], GENERATED, r["distance"])
               for r in birthday.slice(0, PAIRS_SHOWN["birthday"]).to_pylist()]
    if not wanted:
        return None
    where = _locate(results, plan, {(w[2], w[1]) for w in wanted} | {(w[4], w[3]) for w in wanted})
    wanted = [w for w in wanted if (w[2], w[1]) in where and (w[4], w[3]) in where]
    if not wanted:
        return None
    refs = [(where[(w[2], w[1])], where[(w[4], w[3])]) for w in wanted]
    if generator is not None:
        from types import SimpleNamespace

        from recovery import target_shape

        here = SimpleNamespace(config=config, generator=generator, shape=target_shape(generator, config.recovery))
        pngs = TASKS["pairs"](here, refs)
    else:
        actor = pool.any_ready(config.job.actor_start_timeout)
        if actor is None:
            return None
        pngs = ray.get(actor.detector_task.remote("pairs", refs))
    rows = [dict(zip(("kind", "query_id", "query_split", "other_id", "other_split", "distance"), w),
                 query_png=a, other_png=b) for w, (a, b) in zip(wanted, pngs)]
    return pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA)


def _locate(results: pa.Table, plan, keys: set[tuple[str, str]]) -> dict[tuple[str, str], ImageRef]:
    """ImageRefs of (split, image_id) keys, from the results rows' source and row."""
    source_of = {(split, url): listing.index for split, found in plan.listings.items() for listing in found
                 for url in listing.files}
    ids = pa.array(sorted({i for _, i in keys}), pa.string())
    rows = results.filter(pc.is_in(results.column("image_id").cast(pa.string()), value_set=ids))
    found = {}
    for r in rows.select(["image_id", "split", "source", "row"]).to_pylist():
        key = (r["split"], str(r["image_id"]))
        if key in keys:
            index = -1 if r["split"] == GENERATED else source_of.get((r["split"], r["source"]), -1)
            found[key] = ImageRef(r["split"], str(r["image_id"]), index, r["source"], int(r["row"]))
    return {k: v for k, v in found.items() if k[0] == GENERATED or v.source_index >= 0}
