"""The companion detectors' work on an actor: features per shard, kNN per train block, image pairs.

    <out>/features/<fkey>/split=<split>/part-<shard>.parquet   image_id, split, feature (list<float32>)
    <out>/features/<fkey>/knn-<kkey>/part-<block>.parquet      query_id, query_split, train_id, distance,
                                                               mifid_distance: one train block's top-k

fkey hashes the run's fingerprint (the generator, the targets and their listing, the recovery settings that
shape the generated split) with the feature space; kkey hashes fkey with k, the metric and the block sizes.
Each part is one atomic put and is its own done marker: a re-run, or another detector, reuses the parts
that exist. An image that could not be read or decoded has no feature row (it is a rejects row already).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stats import storage
from stats.detect.companions import needs
from .sections import GENERATED
from .plan import Shard, generated_ids
from .sources import read_items


@dataclass(frozen=True)
class KnnBlock:
    """One kNN task: the train feature parts of a block against every query part."""

    id: str
    train_parts: tuple[str, ...]
    query_parts: tuple[str, ...]


@dataclass(frozen=True)
class ImageRef:
    """Where one image of a pair is: generated (source_index -1) or a source file and row."""

    split: str
    image_id: str
    source_index: int
    source: str
    row: int


def features_key(fingerprint: str, features: Any, net_identity: str | None) -> str:
    """The features' folder: the run's fingerprint and the space (the net by its identity, as in fingerprints)."""
    space = {"space": features.space, "crop": features.crop, "net": net_identity}
    return storage.cache_key({"fingerprint": fingerprint, "features": space})


def knn_key(fkey: str, features: Any, mifid: bool) -> str:
    return storage.cache_key({"features": fkey, "k": features.k, "metric": features.metric, "train_block": features.train_block,
                  "mifid": mifid})


def features_url(out: str, fkey: str, split: str, shard_id: str) -> str:
    return storage.join(out, "features", fkey, f"split={split}", f"part-{shard_id}.parquet")


def knn_url(out: str, fkey: str, kkey: str, block_id: str) -> str:
    return storage.join(out, "features", fkey, f"knn-{kkey}", f"part-{block_id}.parquet")


def read_table(url: str, endpoint: str | None) -> pa.Table:
    return pq.read_table(pa.BufferReader(storage.read_bytes(url, endpoint)))


def features_table(ids: list[str], split: str, feats: np.ndarray) -> pa.Table:
    """ids and features [N, D] float32 as a part (a fixed-size list column, so reading back is one reshape)."""
    dim = feats.shape[1] if feats.ndim == 2 and len(feats) else 0
    values = pa.array(np.ascontiguousarray(feats, np.float32).reshape(-1), pa.float32())
    return pa.table({"image_id": pa.array(ids, pa.string()), "split": pa.array([split] * len(ids), pa.string()),
                     "feature": pa.FixedSizeListArray.from_arrays(values, dim) if dim else
                     pa.array([[]] * len(ids), pa.list_(pa.float32()))})


def read_features(urls: list[str] | tuple[str, ...], endpoint: str | None) -> tuple[list[str], list[str], np.ndarray]:
    """(image ids, splits, [N, D] float32) of feature parts; empty parts (every image of a shard rejected)
    are skipped, so their column type does not matter."""
    ids, splits, mats = [], [], []
    for url in urls:
        table = read_table(url, endpoint)
        if table.num_rows:
            ids += table.column("image_id").to_pylist()
            splits += table.column("split").to_pylist()
            mats.append(to_matrix(table))
    return ids, splits, np.concatenate(mats) if mats else np.zeros((0, 0), np.float32)


def to_matrix(table: pa.Table) -> np.ndarray:
    """A features table's `feature` column as [N, D] float32."""
    column = table.column("feature").combine_chunks()
    if table.num_rows == 0:
        return np.zeros((0, 0), np.float32)
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, np.float32).reshape(table.num_rows, -1)


# ---------------------------------------------------------------------------------------------------------
# On the actor. `actor` is a jobs.actors.AuditActor: its config, fingerprint, generator and audit shape.


def _extractor(actor):
    """The actor's feature extractor, built once (the user's network loaded from features.net)."""
    found = getattr(actor, "_feature_extractor", None)
    if found is None:
        from recovery.features import FeatureExtractor, load_feature_extractor_net

        features = actor.config.features
        net = None
        if features.space == "net":
            endpoint = actor.config.storage.endpoint_url
            net = load_feature_extractor_net(features.net, device=actor.generator.device,
                                             storage_options=storage.storage_options(features.net, endpoint))
        found = FeatureExtractor(features.spec(), net=net, device=actor.generator.device)
        actor._feature_extractor = found
    return found


def _targets(actor, shard: Shard):
    """(ids, targets [N, C, H, W]) of a shard's images that decode; the others are rejects rows already."""
    import torch

    import recovery

    config = actor.config
    if shard.generated:
        ids = generated_ids(shard.start, shard.stop)
        _, images = recovery.sample_generated(actor.generator, ids, seed=config.targets.generated.seed,
                                              settings=config.recovery)
        return ids, images
    src = config.targets.splits[shard.split][shard.source_index]
    ids, tensors = [], []
    for item in read_items(src, shard.segments, config.base_dir, config.storage.endpoint_url):
        if item.error is not None:
            continue
        try:
            tensors.append(recovery.to_target(item.data, shape=actor.shape, output_range=config.generator.output_range,
                                              upscale=config.targets.upscale))
        except recovery.ImageError:
            continue
        ids.append(item.image_id)
    return ids, torch.stack(tensors) if tensors else torch.empty((0, *actor.shape))


def run_features(actor, shard: Shard, fkey: str) -> int:
    """Features of one shard's images, written as one part; returns the number of rows."""
    ids, images = _targets(actor, shard)
    feats = _extractor(actor)(images).numpy() if len(ids) else np.zeros((0, 0), np.float32)  # [N, D]
    config = actor.config
    storage.put_atomic(features_url(config.output, fkey, shard.split, shard.id),
                       storage.parquet_bytes(features_table(ids, shard.split, feats)), config.storage.endpoint_url)
    return len(ids)


def run_knn(actor, block: KnnBlock, url: str) -> int:
    """One train block's top-k for every query, written as one part; returns the number of queries."""
    import torch

    from recovery.neighbours import knn

    features, endpoint = actor.config.features, actor.config.storage.endpoint_url
    train_ids, _, t = read_features(block.train_parts, endpoint)  # [T, D]
    query_ids, query_splits, q = read_features(block.query_parts, endpoint)  # [Q, D]
    k = features.k
    if len(t) == 0 or len(q) == 0:
        found_d, found_i, mifid = np.full((len(q), k), np.inf), np.full((len(q), k), -1), np.ones(len(q))
    else:
        found = knn(torch.from_numpy(q), torch.from_numpy(t), k=k, metric=features.metric,
                    mifid="mifid" in needs(actor.config.detectors),  # a pass over every tile: only when asked
                    query_block=features.query_block, device=actor.generator.device)
        found_d, found_i, mifid = found.distances.numpy(), found.indices.numpy(), found.mifid_distance.numpy()
    train_ids = np.array(train_ids + [None], dtype=object)
    part = pa.table({
        "query_id": pa.array(np.repeat(np.array(query_ids, dtype=object), k).tolist(), pa.string()),
        "query_split": pa.array(np.repeat(np.array(query_splits, dtype=object), k).tolist(), pa.string()),
        "train_id": pa.array(train_ids[found_i.reshape(-1)].tolist(), pa.string()),  # -1 -> None
        "distance": pa.array(found_d.reshape(-1).astype(np.float64)),
        "mifid_distance": pa.array(np.repeat(mifid, k).astype(np.float64)),
    })
    storage.put_atomic(url, storage.parquet_bytes(part), endpoint)
    return len(q)


def render_pairs(actor, pairs: list[tuple[ImageRef, ImageRef]]) -> list[tuple[bytes, bytes]]:
    """PNG bytes of both images of each pair, at the audit resolution."""
    import recovery

    config = actor.config
    cache: dict[tuple[str, str], bytes] = {}

    def png(ref: ImageRef) -> bytes:
        key = (ref.split, ref.image_id)
        if key not in cache:
            if ref.split == GENERATED:
                _, image = recovery.sample_generated(actor.generator, [ref.image_id], seed=config.targets.generated.seed,
                                                     settings=config.recovery)
                target = image[0]
            else:
                src = config.targets.splits[ref.split][ref.source_index]
                (item,) = read_items(src, [(ref.source, [ref.row])], config.base_dir, config.storage.endpoint_url)
                target = recovery.to_target(item.data, shape=actor.shape, output_range=config.generator.output_range,
                                            upscale=config.targets.upscale)
            cache[key] = recovery.to_png(target, output_range=config.generator.output_range)
        return cache[key]

    return [(png(a), png(b)) for a, b in pairs]


TASKS = {"features": run_features, "knn": run_knn, "pairs": render_pairs}
