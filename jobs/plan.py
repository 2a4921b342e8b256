"""The shard plan: every split's selected rows cut into shards (split, source, row range) with stable ids.

    plan = make_plan(config)     # lists sources, draws the limit subsample, checks ids; no Ray
    for shard in plan.shards: ...

A shard covers positions [start, stop) of one source's selected rows (or of the generated split's image
indices) and carries the files and rows they map to, so an actor reads exactly those. Its id,
`<split>-<sha1(source)[:8]>-<start:09d>`, depends only on the config (the source's identity, see
AuditConfig.identity) and the data listing, so re-runs of the same config get the same ids: the key of
resume and of the part file names.

targets.shard_size "auto" (the default) is made definite here, once per plan, from the planned images
alone (auto_shard_size: about AUTO_SHARDS shards, each of AUTO_MIN to AUTO_MAX images), never from
resources.actors, so a resume with other actors cuts the same shards. The fingerprint hashes the resolved
size (`auto` that resolves to 16 and an explicit 16 cut the same shards and share a fingerprint), and
the driver runs with the resolved config (sized()), so run.json records it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from typing import Iterable, Sequence

from .sections import AUTO, GENERATED, AuditConfig
from .errors import ConfigError
from .fingerprint import fingerprint
from .redact import redact_text, strip_secrets
from .formats import FORMATS, SourceError
from .formats import SourceListing
from .sources import list_source, read_ids, select_rows

AUTO_SHARDS = 64  # targets.shard_size auto: about this many shards (finer than the actors: none idles at the end)
AUTO_MIN = 16  # ... but no shard smaller than this (per-shard overhead: a task, two part files)
AUTO_MAX = 256  # ... nor larger than this (the unit of retry and resume)


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
    fingerprint: str  # the run's fingerprint (jobs.fingerprint): the config's and the source listing's
    shards: tuple[Shard, ...]
    images: dict[str, int]  # split -> images selected (what the results and rejects will hold)
    available: dict[str, int]  # split -> rows in the sources, before targets.limit
    listings: dict[str, tuple[SourceListing, ...]] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict, repr=False)  # real split -> its ids, in shard order
    offsets: dict[str, int] = field(default_factory=dict, repr=False)  # shard id -> where its source starts in ids
    shard_size: int = 0  # targets.shard_size as resolved for this plan (AUTO made definite)
    shard_size_auto: bool = False  # whether it was resolved from AUTO

    def image_ids(self, shard: Shard) -> list[str] | None:
        """The ids planned for one shard, in order (None when the plan was made without ids, check=False)."""
        if shard.generated:
            return generated_ids(shard.start, shard.stop)
        if shard.split not in self.ids:
            return None
        base = self.offsets[shard.id]
        return self.ids[shard.split][base + shard.start:base + shard.stop]

    @property
    def total_images(self) -> int:
        return sum(self.images.values())

    def describe(self) -> str:
        """A few plain lines for --dry-run and the log."""
        lines = [f"fingerprint {self.fingerprint[:16]}, {len(self.shards)} shards, {self.total_images} images",
                 f"  shard size {self.shard_size}" + (f" (targets.shard_size {AUTO}: ceil({self.total_images} images / "
                                                      f"{AUTO_SHARDS}) kept within [{AUTO_MIN}, {AUTO_MAX}])"
                                                      if self.shard_size_auto else "")]
        for split, n in self.images.items():
            shards = sum(1 for s in self.shards if s.split == split)
            lines.append(f"  {split}: {n} images of {self.available[split]} in {shards} shards")
            for listing in self.listings.get(split, ()):
                lines.append(f"    [{listing.index}] {redact_text(listing.source.uri)}: {len(listing.files)} files, "
                             f"{listing.total} rows")
        return "\n".join(lines)


def shard_id(split: str, source_key: str, start: int) -> str:
    return f"{split}-{hashlib.sha1(source_key.encode()).hexdigest()[:8]}-{start:09d}"


def generated_ids(start: int, stop: int) -> list[str]:
    """The generated split's image ids; sample_generated seeds each image by (seed, id)."""
    return [f"{GENERATED}-{i:07d}" for i in range(start, stop)]


def auto_shard_size(total_images: int) -> int:
    """targets.shard_size auto for an audit of `total_images` planned images (all splits, after
    targets.limit): ceil(total / AUTO_SHARDS) within [AUTO_MIN, AUTO_MAX], i.e. at least ~64 shards up to
    16k images. It depends on nothing else (not resources.actors), so every run of a config cuts alike."""
    return min(AUTO_MAX, max(AUTO_MIN, -(-max(0, total_images) // AUTO_SHARDS)))


def resolve_shard_size(config: AuditConfig, total_images: int) -> int:
    """targets.shard_size made definite: an int as given; AUTO by auto_shard_size(total_images)."""
    size = config.targets.shard_size
    return auto_shard_size(total_images) if size == AUTO else int(size)


def sized(config: AuditConfig, shard_size: int) -> AuditConfig:
    """The config with targets.shard_size set to the plan's resolved size (what the fingerprint hashes and
    run.json records); the config itself when it already is (or when shard_size is 0: unknown)."""
    if not shard_size or config.targets.shard_size == shard_size:
        return config
    return dataclasses.replace(config, targets=dataclasses.replace(config.targets, shard_size=shard_size))


def make_plan(config: AuditConfig, *, check: bool = True) -> Plan:
    """List every source, select rows (targets.limit), check ids (check=True), size and cut shards.

    Cost: O(n log n) in the n listed rows (one binary search per selected row to find its file; ids and
    shards are built in one pass), plus the store's listing (benchmarks/plan_scaling.py).

    Raises:
        ConfigError: a source with no files or a bad column, duplicate ids, train/val id overlap.
    """
    targets = config.targets
    images: dict[str, int] = {}
    available: dict[str, int] = {}
    listings: dict[str, tuple[SourceListing, ...]] = {}
    selected: dict[str, list] = {}  # split -> [(listing, positions inside it)]
    ids_by_split: dict[str, list[str | None]] = {}
    for split, sources in targets.splits.items():
        listings[split] = _list_split(config, split, sources)
    check_redacted_apart(listings)
    for split in targets.splits:
        selected[split], available[split], images[split] = _select(config, split, listings[split])
        if check:
            ids_by_split[split] = _ids(config, selected[split])
    if targets.generated is not None and targets.generated.count > 0:
        available[GENERATED] = images[GENERATED] = targets.generated.count
    size = resolve_shard_size(config, sum(images.values()))  # from the planned images only: resumes cut alike
    config = sized(config, size)
    shards, offsets = _cut_all(config, selected, size)
    if check:
        check_ids(ids_by_split, config.stats.pairs)
    ids = [s.id for s in shards]
    if len(set(ids)) != len(ids):
        raise ConfigError("targets: two sources of one split name the same files; list each source once")
    return Plan(fingerprint(config, listings), tuple(shards), images, available, listings, ids_by_split, offsets,
                shard_size=size, shard_size_auto=targets.shard_size == AUTO)


def _cut_all(config: AuditConfig, selected: dict[str, list], size: int) -> tuple[list[Shard], dict[str, int]]:
    """Every split's shards of `size` images, in plan order (real splits, then generated), and for each real
    shard where its source starts in the split's ids."""
    shards: list[Shard] = []
    offsets: dict[str, int] = {}
    for split, per_source in selected.items():
        offset = 0
        for listing, positions in per_source:
            cut = _cut(config, split, listing, positions, size)
            offsets.update((s.id, offset) for s in cut)
            shards.extend(cut)
            offset += len(positions)
    generated = config.targets.generated
    if generated is not None and generated.count > 0:
        key = f"seed={generated.seed}"
        for start in range(0, generated.count, size):
            stop = min(generated.count, start + size)
            shards.append(Shard(shard_id(GENERATED, key, start), GENERATED, -1, start, stop))
    return shards, offsets


def _list_split(config: AuditConfig, split: str, sources) -> tuple[SourceListing, ...]:
    found = []
    for i, src in enumerate(sources):
        try:
            found.append(list_source(split, i, src, config.storage.endpoint_url))
        except SourceError as exc:
            raise ConfigError(f"targets.{split}[{i}].{exc}") from None
    return tuple(found)


def check_redacted_apart(listings: dict[str, tuple[SourceListing, ...]]) -> None:
    """Two files whose URLs differ only in what redaction removes (a token, a signature, userinfo) would be one
    image id and one `source` in every table and report: refuse them before any work, naming both sources.

    Raises:
        ConfigError: naming the two sources and the URL as memaudit shows it.
    """
    seen: dict[str, tuple[str, str]] = {}
    for split, found in listings.items():
        for listing in found:
            at = f"targets.{split}[{listing.index}]"
            for url in listing.files:
                if "?" not in url and "#" not in url and "@" not in url:
                    continue
                first = seen.setdefault(strip_secrets(url), (at, url))  # what a derived image id is made of
                if first[1] != url:
                    raise ConfigError(f"{first[0]} and {at}: two files differ only in secret parts of their URLs "
                                      f"(userinfo or query parameters such as a token or signature): "
                                      f"{redact_text(first[1])} and {redact_text(url)}, which memaudit shows and "
                                      "stores without them, would share an image id. Give them distinct paths or a "
                                      "query parameter that names the file (e.g. ?file=a.png)")


def _select(config: AuditConfig, split: str, found: tuple[SourceListing, ...]):
    """([(listing, sorted positions inside it)], rows available, rows selected) after targets.limit."""
    total = sum(listing.total for listing in found)
    selected = select_rows(total, config.targets.limit_for(split), config.targets.limit_seed, split)  # split-wide
    offset = 0
    per_source = []
    for listing in found:
        lo, hi = np.searchsorted(selected, [offset, offset + listing.total])
        per_source.append((listing, selected[lo:hi] - offset))  # positions inside this source
        offset += listing.total
    return per_source, total, len(selected)


def _ids(config: AuditConfig, per_source) -> list[str | None]:
    endpoint = config.storage.endpoint_url
    with ThreadPoolExecutor(max_workers=8) as pool:  # id columns of many Parquet files: fetch concurrently
        parts = list(pool.map(lambda lp: read_ids(lp[0], lp[1], config.base_dir, endpoint), per_source))
    return [i for part in parts for i in part]


def _cut(config: AuditConfig, split: str, listing: SourceListing, positions: np.ndarray, size: int) -> list[Shard]:
    """One source's selected positions cut into shards of `size` images, each with its file segments."""
    key = config.identity(listing.source.uri)
    fmt = FORMATS[listing.source.format]
    shards = []
    for start in range(0, len(positions), size):
        chunk = positions[start:start + size]
        segments = fmt.segments(listing, chunk)
        shards.append(Shard(shard_id(split, key, start), split, listing.index, start, start + len(chunk), segments))
    return shards


def check_ids(ids_by_split: dict[str, Sequence[str | None]], pairs: Iterable[Sequence[str]] = (("train", "val"),), *,
              examples: int = 3) -> None:
    """The one check of input ids, before any work: every row has an id, no id occurs twice in a split, and no
    id is in both splits of a memorization pair (a held-out image must not be a training image).

    After the run, stats.checks verifies the *output* (each planned image exactly one row; equal content by
    target_hash), which ids alone cannot show.

    Raises:
        ConfigError: naming the split, the count and a few examples.
    """
    for split, ids in ids_by_split.items():
        missing = sum(1 for i in ids if i is None)
        if missing:
            raise ConfigError(f"targets.{split}: {missing} rows have no id (null in the id column)")
        dups = [(i, c) for i, c in Counter(ids).items() if c > 1]
        if dups:
            shown = ", ".join(f"{i!r} x{c}" for i, c in dups[:examples])
            raise ConfigError(f"targets.{split}: {len(dups)} ids occur more than once, e.g. {shown}")
    for a, b in pairs:
        if a in ids_by_split and b in ids_by_split:
            both = sorted(set(ids_by_split[a]) & set(ids_by_split[b]))
            if both:
                shown = ", ".join(repr(i) for i in both[:examples])
                raise ConfigError(f"targets: {len(both)} ids are in both {a} and {b}, e.g. {shown}; "
                                  "a held-out image must not be a training image")
