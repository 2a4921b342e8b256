"""The run's fingerprint: the one key that says whether two runs write the same rows into the same shards.

    fp = fingerprint(config, listings)    # sha256 hex; in run.json and in every part's Parquet metadata

It hashes, in canonical JSON, everything that changes a results or rejects row or the shard cut, and
nothing else: `generator`, `targets` (with `shard_size`, `limit`, the sources' identities and resolved
formats), `recovery` (with `feature_net`, without `batch_size`: recover()'s rows do not depend on it),
and the source files the plan listed with their row counts (files added under a glob change it). Not
`output`, `resources`, `job`, `storage` or `stats` (every run re-reduces). Locations enter through
storage.identity, so the same config in another checkout keeps its fingerprint.

`settings_hash(config)` is the config half alone (no listing needed); nothing else is called a
fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Mapping, Sequence

from stats import storage
from .typed import plain

if TYPE_CHECKING:
    from .sections import AuditConfig
    from .formats import SourceListing

VERSION = "memaudit.fingerprint/1"  # bump when the meaning of a results row changes


def settings_hash(config: "AuditConfig") -> str:
    """sha256 of the fingerprinted config sections (see the module docstring)."""
    targets = targets_section(config)
    generator = plain(config.generator)
    for key in ("torchscript", "checkpoint", "pickle", "diffusers"):
        if isinstance(generator.get(key), dict):  # a style-based generator's {mapping, synthesis}
            generator[key] = {k: config.identity(v) for k, v in generator[key].items()}
        elif generator.get(key):
            generator[key] = config.identity(generator[key])
    recovery = plain(config.recovery)
    recovery.pop("batch_size", None)
    payload = {
        "version": VERSION,
        "generator": generator,
        "targets": targets,
        "recovery": recovery,
        "feature_net": config.identity(config.feature_net) if config.feature_net else None,
    }
    if getattr(config, "discriminator", None) is not None:  # D's scores are results columns
        d = plain(config.discriminator)
        payload["discriminator"] = {k: config.identity(v) if k in ("torchscript", "checkpoint", "pickle") and v else v
                                    for k, v in d.items()}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def targets_section(config: "AuditConfig") -> dict:
    """The targets section as plain data, each source's uri by its identity (location-independent)."""
    targets = plain(config.targets)
    targets["splits"] = {
        split: [{**plain(src), "uri": config.identity(src.uri)} for src in sources]
        for split, sources in config.targets.splits.items()
    }
    return targets


def hash_listings(digest: "hashlib._Hash", config: "AuditConfig",
                  listings: Mapping[str, Sequence["SourceListing"]]) -> None:
    """Feed every listed source file (split, source index, identity, row count, version) into digest."""
    for split, found in listings.items():
        for listing in found:
            versions = listing.versions or ("",) * len(listing.files)
            for url, rows, version in zip(listing.files, listing.rows, versions):
                digest.update(f"{split}\0{listing.index}\0{config.identity(url)}\0{rows}\0{version}\n".encode())


def fingerprint(config: "AuditConfig", listings: Mapping[str, Sequence["SourceListing"]]) -> str:
    """The run's fingerprint: settings_hash and every listed source file with its row count."""
    digest = hashlib.sha256(settings_hash(config).encode())
    hash_listings(digest, config, listings)
    for url in model_files(config):  # a generator retrained in place is another run
        digest.update(f"model\0{config.identity(url)}\0{storage.file_version(url, config.storage.endpoint_url)}\n".encode())
    return digest.hexdigest()


def model_files(config: "AuditConfig") -> list[str]:
    """The generator's (and discriminator's, feature net's) file URLs, for their version tokens."""
    found = []
    for section in (config.generator, getattr(config, "discriminator", None)):
        for key in ("torchscript", "checkpoint", "pickle"):
            value = getattr(section, key, None) if section is not None else None
            if isinstance(value, str):
                found.append(value)
            elif isinstance(value, dict):  # a style-based generator's {mapping, synthesis}
                found.extend(v for v in value.values() if isinstance(v, str))
    diffusers = getattr(config.generator, "diffusers", None)
    if diffusers and not storage.is_glob(diffusers):  # a save_pretrained folder: every file in it (a sweep: per folder)
        found.extend(storage.find_files(diffusers, config.storage.endpoint_url))
    if config.feature_net:
        found.append(config.feature_net)
    return found
