"""A shard's real images as targets: read, decoded, and (in a checkpoint sweep) shared between checkpoints.

    shard_targets = load_targets(shard, config, shape=(3, 64, 64), cache=TargetCache(root, data_key))
    shard_targets.targets        # [N, C, H, W] float32 in generator.output_range; N = images kept
    shard_targets.rejects        # [(Item, "read" | "decode", reason)]

Decoding (reading the rows from the store, decoding PNG/JPEG, resizing to the audit resolution) depends only
on the data and on the target's shape, range and upscale rule, not on the generator's weights. A checkpoint
sweep audits the same targets with every checkpoint, so the first checkpoint's actors write each shard's
decoded targets to `<sweep out>/cache/targets/<key>/part-<shard>.parquet` (float32, exact: the results are
the same as from a fresh decode) and the other checkpoints' actors read them instead of the sources.
The key covers the sources' listed files with their versions, the targets section, the shape,
the output range and the upscale rule, so a changed file, another resolution or another range is a miss,
never a wrong target. A part that is missing, unreadable or of another key is decoded again and rewritten.
`job.target_cache: false` turns it off (it stores 4 x C x H x W bytes per image).
Sources and reasons are stored redacted (jobs.redact), like everything else in the output.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa

from stats import storage
from .errors import JobError
from .fingerprint import hash_listings, targets_section
from .redact import redact_text
from .formats import Item
from .sources import SourceImage, describe_image, read_items

if TYPE_CHECKING:
    import torch

    from .sections import AuditConfig
    from .plan import Plan, Shard

log = logging.getLogger("memaudit")
VERSION = "memaudit.targets/2"  # bump when to_target's output for the same bytes changes


@dataclass
class ShardTargets:
    """A real shard's images after decoding: the kept ones in shard order, and the rejected ones."""

    items: list[Item]  # kept images (data dropped once decoded: only id, source, row, label are used)
    described: list[SourceImage]  # each kept image's format and original size
    targets: "torch.Tensor"  # [N, C, H, W] float32, N = len(items)
    rejects: list[tuple[Item, str, str]] = field(default_factory=list)  # (item, stage, reason)
    from_cache: bool = False


@dataclass(frozen=True)
class TargetCache:
    """Where a sweep keeps its decoded targets: root URL (`<sweep out>/cache/targets`) and the data's key."""

    root: str
    data_key: str  # data_key(config, plan): the sources as listed and the targets section
    endpoint_url: str | None = None

    def url(self, shard_id: str, shape: Sequence[int], config: "AuditConfig") -> str:
        return storage.join(self.root, self.key(shape, config), f"part-{shard_id}.parquet")

    def key(self, shape: Sequence[int], config: "AuditConfig") -> str:
        return storage.cache_key([VERSION, self.data_key, list(shape), list(config.generator.output_range),
                                  config.targets.upscale])


def data_key(config: "AuditConfig", plan: "Plan") -> str:
    """sha256 of what a decoded target depends on besides its shape and range: the targets section (sources'
    identities, formats, columns) and every listed real-split file with its row count and version."""
    text = json.dumps([VERSION, targets_section(config)], sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(text.encode())
    hash_listings(digest, config, plan.listings)
    return digest.hexdigest()


def load_targets(shard: "Shard", config: "AuditConfig", *, shape: Sequence[int],
                 cache: TargetCache | None = None) -> ShardTargets:
    """A real shard's targets: from the sweep's cache when it has this shard, else read and decoded (and then
    written to the cache when there is one). Raises what read_items raises (a store outage fails the shard)."""
    url = cache.url(shard.id, shape, config) if cache is not None else None
    if url is not None:
        cached = _read_part(url, shard, shape, cache.endpoint_url)
        if cached is not None:
            return cached
    loaded = decode(shard, config, shape=shape)
    if url is not None:
        storage.put_atomic(url, _part_bytes(loaded, shard), cache.endpoint_url)
    return loaded


def decode(shard: "Shard", config: "AuditConfig", *, shape: Sequence[int]) -> ShardTargets:
    """Read a real shard's rows from its source and turn each into a target (recovery.to_target); an image
    that is gone or cannot be decoded is a rejects entry ("read" / "decode")."""
    import torch

    import recovery

    endpoint = config.storage.endpoint_url
    src = config.targets.splits[shard.split][shard.source_index]
    items = read_items(src, shard.segments, config.base_dir, endpoint)
    if len(items) != shard.size:
        raise JobError(f"shard {shard.id}: read {len(items)} images, planned {shard.size} (did the source change?)")
    kept, tensors, described, rejects = [], [], [], []
    for item in items:
        if item.error is not None:
            rejects.append((item, "read", item.error))
            continue
        try:
            tensors.append(recovery.to_target(item.data, shape=tuple(shape), output_range=config.generator.output_range,
                                              upscale=config.targets.upscale))  # [C, H, W] float32
        except recovery.ImageError as exc:
            rejects.append((item, "decode", str(exc)))
            continue
        described.append(describe_image(item.data))
        kept.append(Item(item.image_id, item.source, item.row, None, label=item.label))
    targets = torch.stack(tensors) if tensors else torch.empty((0, *shape))  # [N, C, H, W]
    return ShardTargets(kept, described, targets, rejects)


# ---------------------------------------------------------------------------------------------------------
# The cache part: one row per image of the shard, kept or rejected, in shard order


def _part_bytes(loaded: ShardTargets, shard: "Shard") -> bytes:
    rows: list[dict[str, Any]] = []
    flat = loaded.targets.reshape(len(loaded.items), -1).numpy()  # [N, C*H*W] float32
    for item, d, vector in zip(loaded.items, loaded.described, flat):  # sources and reasons redacted: no secrets
        rows.append({"image_id": item.image_id, "source": redact_text(item.source), "row": item.row,
                     "label": _label(item.label), "stage": None, "reason": None, "format": d.format, "orig_width": d.width,
                     "orig_height": d.height, "channels": d.channels, "target": vector.astype("<f4").tobytes()})
    for item, stage, reason in loaded.rejects:
        rows.append({"image_id": item.image_id, "source": redact_text(item.source), "row": item.row,
                     "label": _label(item.label), "stage": stage, "reason": redact_text(reason), "format": None, "orig_width": None, "orig_height": None,
                     "channels": None, "target": None})
    table = pa.Table.from_pylist(rows, schema=_SCHEMA)
    meta = {b"memaudit.shard": shard.id.encode(), b"memaudit.images": str(shard.size).encode()}
    return storage.parquet_bytes(table, meta)


_SCHEMA = pa.schema([("image_id", pa.string()), ("source", pa.string()), ("row", pa.int64()), ("label", pa.string()),
                     ("stage", pa.string()), ("reason", pa.string()), ("format", pa.string()),
                     ("orig_width", pa.int64()), ("orig_height", pa.int64()), ("channels", pa.int64()),
                     ("target", pa.binary())])


def _label(value: object) -> str | None:
    """A label as JSON text, so an int class stays an int and a name stays a name when read back."""
    return None if value is None else json.dumps(value.item() if isinstance(value, np.generic) else value)


def _read_part(url: str, shard: "Shard", shape: Sequence[int], endpoint_url: str | None) -> ShardTargets | None:
    """The cached targets of a shard, or None when the part is missing or does not hold exactly this shard."""
    import pyarrow.parquet as pq
    import torch

    try:
        data = storage.read_bytes(url, endpoint_url)
    except FileNotFoundError:
        return None
    try:
        table = pq.read_table(pa.BufferReader(data))
        meta = table.schema.metadata or {}
        if meta.get(b"memaudit.shard") != shard.id.encode() or table.num_rows != shard.size:
            raise ValueError("it holds another shard")
        return _from_table(table, shape, torch)
    except Exception as exc:  # noqa: BLE001 - a bad cache part is decoded again, never trusted
        log.warning("decoded-targets cache: %s is unusable (%s); decoding the shard again", redact_text(url), exc)
        return None


def _from_table(table: pa.Table, shape: Sequence[int], torch: Any) -> ShardTargets:
    kept, described, vectors, rejects = [], [], [], []
    size = int(np.prod(shape))
    for r in table.to_pylist():
        label = None if r["label"] is None else json.loads(r["label"])
        item = Item(r["image_id"], r["source"], r["row"], None, label=label)
        if r["stage"] is not None:
            rejects.append((item, r["stage"], r["reason"]))
            continue
        vector = np.frombuffer(r["target"], dtype="<f4")
        if vector.size != size:
            raise ValueError(f"image {r['image_id']} has {vector.size} values, the shape {tuple(shape)} needs {size}")
        kept.append(item)
        described.append(SourceImage(r["format"], r["orig_width"], r["orig_height"], r["channels"]))
        vectors.append(vector)
    stacked = np.stack(vectors).reshape(len(vectors), *shape) if vectors else np.empty((0, *shape), np.float32)
    return ShardTargets(kept, described, torch.from_numpy(stacked.astype(np.float32)), rejects, from_cache=True)

