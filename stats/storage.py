"""Every byte memaudit reads or writes goes through here: fsspec filesystems for URLs, atomic and conditional
writes, retries, Parquet bytes and the names of cache entries. Used by jobs and by stats alike.

Any URL fsspec can open works (local paths, s3://, gs://, ...). For S3-compatible stores the config's
storage.endpoint_url is passed to s3fs; credentials come from the standard AWS chain (environment,
~/.aws, instance roles) and are never read, stored or logged by memaudit.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import random
import re
import time
import uuid
from typing import Callable, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import split_protocol
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger("memaudit")
T = TypeVar("T")

LOCAL = (None, "file", "local")
RETRIES = 5  # after the first try: retries after 0.5, 1, 2, 4 and 8 s (plus jitter), about 15 s of outage
RETRY_SECONDS = 0.5  # the first delay; each next one doubles
KEY_HEX = 24  # hex digits of a cache key (96 bits): no two entries of one store collide in practice


class StorageError(OSError):
    """A storage operation still failed after every retry; the message names the URL."""


def configure(retries: int, retry_seconds: float) -> None:
    """Set this process's retry budget (job.storage_retries, job.storage_retry_seconds); the driver and every
    actor call it with the job's config."""
    global RETRIES, RETRY_SECONDS
    RETRIES, RETRY_SECONDS = int(retries), float(retry_seconds)


def storage_options(url: str, endpoint_url: str | None) -> dict:
    """The fsspec options for `url`: for s3:// URLs the endpoint and botocore's retries; nothing for others."""
    protocol = split_protocol(url)[0]
    if protocol not in ("s3", "s3a"):
        return {}
    # botocore retries a call once (a pooled connection the server closed, e.g. after a restart); the rest of
    # the budget is job.storage_retries with its backoff, so that an outage's tolerated length is configurable
    options: dict = {"config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}}
    if endpoint_url:
        options["client_kwargs"] = {"endpoint_url": endpoint_url}
    return options


def filesystem(url: str, endpoint_url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URL."""
    fs, path = fsspec.core.url_to_fs(url, **storage_options(url, endpoint_url))
    return fs, path


def is_glob(url: str) -> bool:
    """Whether `url` is a glob pattern. On http(s) a '?' starts the query string (a pre-signed URL's
    signature), not a wildcard: only '*' and '[' in the path make a glob there."""
    protocol, path = split_protocol(url)
    if protocol in ("http", "https"):
        return any(c in path.split("?", 1)[0] for c in "*[")
    return any(c in url for c in "*?[")


def version_token(info: dict) -> str:
    """A file's identity from its listing entry: size plus the store's ETag / version id, else its mtime.
    Object stores change the ETag on every overwrite; local disks change mtime."""
    tag = info.get("VersionId") or info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
    return f"{info.get('size')}:{str(tag).strip(chr(34)) if tag is not None else ''}"


def file_version(url: str, endpoint_url: str | None = None) -> str:
    """version_token of one file (one HEAD request); '' when the store cannot say (the load check reports a
    missing file clearly, later)."""
    fs, path = filesystem(url, endpoint_url)
    try:
        return version_token(retrying(lambda: fs.info(path), f"checking {url}"))
    except Exception:  # noqa: BLE001 - identity is best effort; reading the file is where errors are reported
        return ""


def is_local(url: str) -> bool:
    return split_protocol(url)[0] in LOCAL


def join(base: str, *parts: str) -> str:
    """`base`/`part`/... for URLs and local paths alike."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def resolve_local(url: object, base: str) -> object:
    """A relative local path -> absolute against `base`; URLs with a protocol and non-strings are left alone."""
    if not isinstance(url, str) or not url:
        return url
    protocol, path = split_protocol(url)
    if protocol not in LOCAL:
        return url
    path = os.path.expanduser(path)
    trailing = "/" if url.endswith("/") else ""
    return os.path.normpath(os.path.join(base, path)) + trailing


def identity(url: str, base_dir: str) -> str:
    """A location as it enters fingerprints, shard ids and derived image ids: a local path under `base_dir`
    (the config's folder) relative to it, so that the same config in another checkout (or a `ray job submit`
    working_dir) keeps its ids; anything else is the URL itself."""
    protocol, path = split_protocol(url)
    if protocol not in LOCAL:
        return url
    prefix = base_dir.rstrip("/") + "/"
    if os.sep == "/" and len(path) > len(prefix) and path.startswith(prefix) and not _UNNORMAL.search(path):
        return path[len(prefix):]  # the common case, without relpath's cost (planning calls this per file)
    rel = os.path.relpath(os.path.abspath(path), base_dir)
    return path if rel.startswith("..") else rel.replace(os.sep, "/")


def identities(urls: list[str], base_dir: str) -> list[str]:
    """identity() of many URLs (planning derives an id per image file): plain local paths under `base_dir`
    are cut by prefix in one pass; anything else goes through identity()."""
    prefix = base_dir.rstrip("/") + "/"
    cut = len(prefix)
    return [u[cut:] if os.sep == "/" and u.startswith(prefix) and len(u) > cut and "/." not in u and "//" not in u
            else identity(u, base_dir) for u in urls]


_UNNORMAL = re.compile(r"//|/\.\.?(/|$)")  # a path that relpath would normalize: '//', '/./', '/../'


def with_protocol(like: str, path: str) -> str:
    """A path returned by fs.glob/ls, with the protocol of the URL it came from (s3://bucket/key)."""
    protocol = split_protocol(like)[0]
    if protocol in LOCAL:
        return path
    return f"{protocol}://{path}" if not path.startswith(f"{protocol}://") else path


# OSErrors that a retry cannot fix: the same call fails the same way (a retry only delays the error)
PERMANENT_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EINVAL, errno.ELOOP})


def transient(exc: BaseException) -> bool:
    """Errors worth retrying: network and server trouble, not a missing file or a denied request."""
    if isinstance(exc, (StorageError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)):
        return False
    if precondition_failed(exc):  # a conditional write that lost: an answer, not an outage
        return False
    if isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS:  # a name too long, a full or read-only disk
        return False
    if isinstance(exc, (OSError, ConnectionError, TimeoutError)):
        return True
    try:  # botocore's connection errors (EndpointConnectionError, ReadTimeoutError, ...) are not OSErrors
        from botocore.exceptions import ConnectionError as BotoConnectionError, HTTPClientError
    except ImportError:
        return False
    return isinstance(exc, (BotoConnectionError, HTTPClientError))


def retrying(fn: Callable[[], T], what: str) -> T:
    """Run `fn`, retrying transient storage errors with exponential backoff (RETRIES times, the first delay
    RETRY_SECONDS). A transient error that outlasts the budget is raised as StorageError naming `what`;
    any other error is raised at once, as it is."""
    for attempt in range(RETRIES + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified by transient(); anything else re-raised at once
            if not transient(exc):
                raise
            if attempt == RETRIES:
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())
                raise StorageError(f"storage: {what} failed after {RETRIES + 1} attempts ({reason})") from exc
            delay = RETRY_SECONDS * 2**attempt * (1 + 0.25 * random.random())
            log.warning("storage: %s failed (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def put_atomic(url: str, data: bytes, endpoint_url: str | None = None) -> None:
    """Write `data` to `url` so that readers see the whole object or nothing (write_atomic)."""
    fs, path = filesystem(url, endpoint_url)
    write_atomic(fs, path, data, url)


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes, what: str | None = None) -> None:
    """Write `data` at `path` on `fs` so that readers see the whole object or nothing, with the retry budget.

    An object store's single PUT is atomic; a local file is written beside its final name (a hidden
    temporary, skipped by every reader) and renamed.
    """
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = os.path.join(os.path.dirname(path) or ".", f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask's mode, as any file (mkstemp's is 0600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return
    retrying(lambda: fs.pipe_file(path, data), f"writing {what or path}")
    fs.invalidate_cache(os.path.dirname(path))


def parquet_bytes(table: pa.Table, metadata: dict[bytes, bytes] | None = None) -> bytes:
    """`table` as the bytes of one Parquet file, with `metadata` added to its schema's (a part's fingerprint)."""
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update(metadata)
        table = table.replace_schema_metadata(merged)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def cache_key(payload: object, digest: "hashlib._Hash | None" = None) -> str:
    """The name of a cache entry under an output: sha256 over what `digest` was fed (large binary inputs such
    as a generator's weights) and the canonical JSON of `payload`, cut to KEY_HEX hex digits. Every cache
    names its entries this way, so equal inputs give equal names and a changed input a new entry."""
    digest = digest or hashlib.sha256()
    digest.update(json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode())
    return digest.hexdigest()[:KEY_HEX]


def read_bytes(url: str, endpoint_url: str | None = None) -> bytes:
    fs, path = filesystem(url, endpoint_url)
    return retrying(lambda: fs.cat_file(path), f"reading {url}")


def exists(url: str, endpoint_url: str | None = None) -> bool:
    fs, path = filesystem(url, endpoint_url)
    fs.invalidate_cache(path)
    return retrying(lambda: fs.exists(path), f"checking {url}")


def list_files(url: str, endpoint_url: str | None = None, *, suffix: str = "") -> list[str]:
    """Files directly under the directory `url` whose names end with `suffix`, as full URLs, sorted; [] if none."""
    fs, path = filesystem(url, endpoint_url)
    fs.invalidate_cache(path)
    try:
        entries = retrying(lambda: fs.ls(path, detail=True), f"listing {url}")
    except FileNotFoundError:
        return []
    names = [e["name"] for e in entries if e.get("type") == "file" and e["name"].endswith(suffix)]
    return sorted(with_protocol(url, n) for n in names)


def find_files(url: str, endpoint_url: str | None = None) -> list[str]:
    """Every file under the directory `url`, at any depth, as full URLs, sorted; [] if it does not exist."""
    fs, path = filesystem(url, endpoint_url)
    fs.invalidate_cache(path)
    try:
        found = retrying(lambda: fs.find(path), f"listing {url}")
    except FileNotFoundError:
        return []
    return sorted(with_protocol(url, p) for p in found)


def remove(url: str, endpoint_url: str | None = None, *, recursive: bool = False) -> None:
    """Delete a file (or a directory tree); missing is fine."""
    fs, path = filesystem(url, endpoint_url)
    fs.invalidate_cache(path)
    try:
        retrying(lambda: fs.rm(path, recursive=recursive), f"removing {url}")
    except FileNotFoundError:
        pass
    fs.invalidate_cache(path)


PROBE = ".memaudit-write-probe"


def check_writable(url: str, endpoint_url: str | None = None) -> None:
    """Write and delete a small marker under the output directory `url`, so that an output that cannot be
    written (a missing bucket, no credentials, a file where a directory should be, no permission) is found
    before any work starts.

    Raises:
        OSError (or the store's own error): the marker could not be written; the caller reports it.
    """
    marker = join(url, PROBE)
    put_atomic(marker, b"memaudit write probe\n", endpoint_url)
    remove(marker, endpoint_url)


def precondition_failed(exc: BaseException) -> bool:
    """Whether a conditional write lost, read from the store's answer in the exception chain: botocore's
    ClientError response (error code PreconditionFailed, or HTTP status 412; s3fs keeps it as the cause of
    the OSError it raises) or the FileExistsError s3fs makes of a failed If-None-Match. Never from the
    message text: a connection error naming part-...000412.parquet is not an answer."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, FileExistsError):
            return True
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "412") or status == 412:
                return True
        seen = seen.__cause__ or seen.__context__
    return False
