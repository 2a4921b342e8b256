"""The shard plan: every split's selected rows cut into shards (split, source, row range) with stable ids.

    plan = make_plan(config)     # lists sources, draws the limit subsample, checks ids; no Ray
    for shard in plan.shards: ...

A shard covers positions [start, stop) of one source's selected rows (or of the generated split's image
indices) and carries the files and rows they map to, so an actor reads exactly those. Its id,
`<split>-<sha1(source)[:8]>-<start:09d>`, depends only on the config (the source's identity, see
AuditConfig.identity) and the data listing, so re-runs of the same config get the same ids: the key of
resume and of the part file names.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .config import GENERATED, AuditConfig, ConfigError
from .sources import SourceError, SourceListing, check_ids, list_source, read_ids, select_rows



@dataclass(frozen=True)
class Shard:
    """One unit of work, of retry and of resume.

    segments: (file URL, rows inside it) in order; rows is a range when contiguous. Empty for generated.
    """

    id: str
    split: str
    source_index: int  # index into targets.<split>; -1 for the generated split
    start: int
    stop: int
    segments: tuple[tuple[str, range | tuple[int, ...]], ...] = ()

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def generated(self) -> bool:
        return self.split == GENERATED


@dataclass(frozen=True)
class Plan:
    fingerprint: str  # plan_fingerprint: the config's and the source listing's
    shards: tuple[Shard, ...]
    images: dict[str, int]  # split -> images selected (what the results and rejects will hold)
    available: dict[str, int]  # split -> rows in the sources, before targets.limit
    listings: dict[str, tuple[SourceListing, ...]] = field(default_factory=dict)

    @property
    def total_images(self) -> int:
        return sum(self.images.values())

    def describe(self) -> str:
        """A few plain lines for --dry-run and the log."""
        lines = [f"fingerprint {self.fingerprint[:16]}, {len(self.shards)} shards, {self.total_images} images"]
        for split, n in self.images.items():
            shards = sum(1 for s in self.shards if s.split == split)
            lines.append(f"  {split}: {n} images of {self.available[split]} in {shards} shards")
            for listing in self.listings.get(split, ()):
                lines.append(f"    [{listing.index}] {listing.source.uri}: {len(listing.files)} files, {listing.total} rows")
        return "\n".join(lines)


def shard_id(split: str, source_key: str, start: int) -> str:
    return f"{split}-{hashlib.sha1(source_key.encode()).hexdigest()[:8]}-{start:09d}"


def generated_ids(start: int, stop: int) -> list[str]:
    """The generated split's image ids; sample_generated seeds each image by (seed, id)."""
    return [f"{GENERATED}-{i:07d}" for i in range(start, stop)]


def make_plan(config: AuditConfig, *, check: bool = True) -> Plan:
    """List every source, select rows (targets.limit), check ids (check=True) and cut shards.

    Raises:
        ConfigError: a source with no files or a bad column, duplicate ids, train/val id overlap.
    """
    targets = config.targets
    endpoint = config.storage.endpoint_url
    shards: list[Shard] = []
    images: dict[str, int] = {}
    available: dict[str, int] = {}
    listings: dict[str, tuple[SourceListing, ...]] = {}
    ids_by_split: dict[str, list[str | None]] = {}
    for split, sources in targets.splits.items():
        found = []
        for i, src in enumerate(sources):
            try:
                found.append(list_source(split, i, src, endpoint))
            except SourceError as exc:
                raise ConfigError(f"targets.{split}[{i}].{exc}") from None
        listings[split] = tuple(found)
        total = sum(listing.total for listing in found)
        selected = select_rows(total, targets.limit_for(split), targets.limit_seed, split)  # split-wide positions
        available[split], images[split] = total, len(selected)
        offset = 0
        per_source = []
        for listing in found:
            lo, hi = np.searchsorted(selected, [offset, offset + listing.total])
            per_source.append((listing, selected[lo:hi] - offset))  # positions inside this source
            offset += listing.total
        if check:
            with ThreadPoolExecutor(max_workers=8) as pool:
                parts = list(pool.map(lambda lp: read_ids(lp[0], lp[1], config.base_dir, endpoint), per_source))
            ids_by_split[split] = [i for part in parts for i in part]
        for listing, positions in per_source:
            key = config.identity(listing.source.uri)
            for start in range(0, len(positions), targets.shard_size):
                chunk = positions[start:start + targets.shard_size]
                segments = tuple((listing.files[f], _compact(rows)) for f, rows in listing.locate(chunk))
                shards.append(Shard(shard_id(split, key, start), split, listing.index, start, start + len(chunk), segments))
    if targets.generated is not None and targets.generated.count > 0:
        count = targets.generated.count
        available[GENERATED] = images[GENERATED] = count
        key = f"seed={targets.generated.seed}"
        for start in range(0, count, targets.shard_size):
            stop = min(count, start + targets.shard_size)
            shards.append(Shard(shard_id(GENERATED, key, start), GENERATED, -1, start, stop))
    if check:
        try:
            check_ids(ids_by_split)
        except SourceError as exc:
            raise ConfigError(str(exc)) from None
    ids = [s.id for s in shards]
    if len(set(ids)) != len(ids):
        raise ConfigError("targets: two sources of one split name the same files; list each source once")
    return Plan(plan_fingerprint(config, listings), tuple(shards), images, available, listings)


def plan_fingerprint(config: AuditConfig, listings: dict[str, tuple[SourceListing, ...]]) -> str:
    """The run's fingerprint: the config's (AuditConfig.fingerprint) and the source files with their row
    counts, so that files added under a glob are not mistaken for the shards an earlier run wrote."""
    digest = hashlib.sha256(config.fingerprint.encode())
    for split, found in listings.items():
        for listing in found:
            for url, rows in zip(listing.files, listing.rows):
                digest.update(f"{split}\0{listing.index}\0{config.identity(url)}\0{rows}\n".encode())
    return digest.hexdigest()


def _compact(rows: np.ndarray) -> range | tuple[int, ...]:
    """Rows inside one file: a range when contiguous (the usual case, no limit), else a tuple."""
    rows = [int(r) for r in rows]
    if rows and rows[-1] - rows[0] + 1 == len(rows):
        return range(rows[0], rows[-1] + 1)
    return tuple(rows)
