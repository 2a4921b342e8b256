"""Where an audit may read and write: checks on the config's locations, before any cluster work.

    check_locations(config)    # raises ConfigError naming the field

memory:// is private to one process (Ray actors would see an empty store); an empty output or the root of a
filesystem or bucket is refused (--overwrite there would clear memaudit's files from the root of
everything); so is an output that a source glob reads (the audit's own tables would become its inputs).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fsspec.core import split_protocol

from stats.storage import is_glob

from .errors import ConfigError
from .names import NAME_MAX
from .formats import infer_format

if TYPE_CHECKING:
    from .sections import AuditConfig


def check_locations(config: "AuditConfig") -> None:
    """memory:// lives in one process; Ray actors would see an empty store."""
    places = [("generator.torchscript", config.generator.torchscript), ("generator.checkpoint", config.generator.checkpoint),
              ("generator.pickle", config.generator.pickle),
              ("recovery.feature_net", config.feature_net), ("features.net", config.features.net),
              ("output", config.output)]
    places += [(f"targets.{s}[{i}].uri", src.uri) for s, srcs in config.targets.splits.items() for i, src in enumerate(srcs)]
    if isinstance(config.generator.torchscript, dict):  # a style-based generator's {mapping, synthesis}
        places = [p for p in places if p[0] != "generator.torchscript"]
        places += [(f"generator.torchscript.{k}", v) for k, v in config.generator.torchscript.items()]
    d = config.discriminator
    places += [(f"discriminator.{k}", getattr(d, k)) for k in ("torchscript", "checkpoint", "pickle")] if d is not None else []
    for name, url in places:
        if url and split_protocol(url)[0] == "memory":
            raise ConfigError(f"{name}: memory:// is private to one process, so Ray actors cannot read or write it; use a local path or an object store")
    _check_output_root(config.output)
    for field, place in (("output", config.output), ("output.history", config.history)):
        _check_name_lengths(field, place)
    _check_output_outside_sources(config)


def _check_output_outside_sources(config: "AuditConfig") -> None:
    """An output (or output.history) that a source reads would feed the audit's own parts and tables back in as
    images on the next run: a glob's folder (or below it for a recursive '**' glob), a folder source itself or a
    folder inside it. A folder source inside the output would mix the data with the audit's files (and
    --overwrite's clean-up). Both are refused, naming the source."""
    for field, place in (("output", config.output), ("output.history", config.history)):
        if not place:
            continue
        out = place.rstrip("/") + "/"
        for split, sources in config.targets.splits.items():
            for i, src in enumerate(sources):
                clash = _clash(src.uri, out)
                if clash == "reads":
                    raise ConfigError(f"{field}: {place} is read by targets.{split}[{i}].uri ({src.uri}); the audit's "
                                      "own files would become its inputs: put it elsewhere")
                if clash == "holds":
                    raise ConfigError(f"{field}: {place} holds the folder source targets.{split}[{i}].uri ({src.uri}); "
                                      "the audit's files would mix with its data: put the output elsewhere")


def _clash(uri: str, out: str) -> str | None:
    """"reads" when a source `uri` (a file, a folder or a glob) reads the folder `out` (ending in '/'), "holds" when
    `out` holds a folder source, else None."""
    if is_glob(uri):
        cut = min((uri.find(c) for c in "*?[" if c in uri), default=-1)
        folder = uri[:cut].rsplit("/", 1)[0] + "/"  # the glob's static folder
        return "reads" if out == folder or ("**" in uri and out.startswith(folder)) else None
    plain = uri.split("?", 1)[0] if split_protocol(uri)[0] in ("http", "https") else uri
    folder = plain.rstrip("/") + "/"  # a folder source, or a file (no folder lies inside a file)
    if out.startswith(folder):
        return "reads"
    is_folder = infer_format(plain) is None  # a file source names its format by its extension; a folder does not
    return "holds" if is_folder and folder.startswith(out) else None


def _check_name_lengths(field: str, url: str | None) -> None:
    """A local output whose folder names are too long for the filesystem would pass --dry-run and fail at its first
    write ("File name too long"); name the folder instead. Object stores have no per-folder limit."""
    if not url or split_protocol(url)[0] not in (None, "file", "local"):
        return
    for part in split_protocol(url)[1].split("/"):
        if len(part.encode()) > NAME_MAX:
            raise ConfigError(f"{field}: the folder name {part[:40]}... is {len(part.encode())} bytes; a folder name "
                              f"holds at most {NAME_MAX}")


def _check_output_root(output: str) -> None:
    """An empty output or the root of a filesystem or bucket: --overwrite there would clear memaudit's files
    from the root of everything, and parts would mix with unrelated data. A folder is required."""
    protocol, path = split_protocol(output.strip()) if output.strip() else (None, "")
    rest = path.strip("/")
    if not output.strip():
        raise ConfigError("output: empty; give a folder (a local path or e.g. s3://bucket/audits/run-1/)")
    if protocol in (None, "file", "local") and not os.path.normpath(os.path.abspath(path)).strip("/"):
        raise ConfigError(f"output: {output.rstrip('/') or '/'!r} is the filesystem root; give a folder for this audit")
    if protocol not in (None, "file", "local") and "/" not in rest:
        raise ConfigError(f"output: {output!r} is the root of a bucket; give a folder inside it, e.g. {output.rstrip('/')}/audits/run-1/")
