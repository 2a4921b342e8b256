"""Conditional writes: replace an object only if it is still the version read (compare and swap).

The run lease in run.json (jobs.lease) rests on these: S3's If-Match / If-None-Match through s3fs, a file
lock on a local disk, and on a store with neither a checked-then-written fallback with a warning. A lost
write is read from the store's answer (storage.precondition_failed), never from an error's text.
"""

from __future__ import annotations

import logging
import os

from fsspec.core import split_protocol

from stats.storage import filesystem, is_local, precondition_failed, put_atomic, retrying

log = logging.getLogger("memaudit")


def read_versioned(url: str, endpoint_url: str | None = None) -> tuple[bytes | None, object]:
    """(the object's bytes or None if absent, its version token for put_if).

    The token is S3's ETag, a local file's (inode, size, mtime_ns), or None for an absent object. It is read
    before the bytes, so a change in between makes the later put_if fail (safe: the caller re-reads).
    """
    fs, path = filesystem(url, endpoint_url)
    fs.invalidate_cache(path)
    if is_local(url):
        try:
            st = os.stat(path)
            with open(path, "rb") as f:
                return f.read(), (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            return None, None
    try:
        info = retrying(lambda: fs.info(path), f"checking {url}")
    except FileNotFoundError:
        return None, None
    token = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
    try:
        return retrying(lambda: fs.cat_file(path), f"reading {url}"), token
    except FileNotFoundError:
        return None, None


def put_if(url: str, data: bytes, version: object, endpoint_url: str | None = None) -> object | None:
    """Write `data` to `url` only if the object is still at `version` (None: only if absent).

    Returns the new version token, or None when the object changed since (another writer won). S3 uses
    If-Match / If-None-Match; a local file is compared and replaced under an exclusive lock on a sibling
    `.lock` file. Other stores have no conditional write: the object is compared and then written, which
    leaves a short race (logged once).
    """
    if is_local(url):
        return _put_if_local(split_protocol(url)[1], data, version)
    fs, path = filesystem(url, endpoint_url)
    if split_protocol(url)[0] in ("s3", "s3a"):
        match = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            out = retrying(lambda: fs.pipe_file(path, data, **match), f"writing {url}")
        except Exception as exc:  # noqa: BLE001 - a failed precondition is an answer, not an error
            if precondition_failed(exc):
                return None
            raise
        fs.invalidate_cache(path)
        return (out or {}).get("ETag") or read_versioned(url, endpoint_url)[1]
    _, current = read_versioned(url, endpoint_url)
    if current != version:
        return None
    _warn_unconditional(url)
    put_atomic(url, data, endpoint_url)
    return read_versioned(url, endpoint_url)[1]


def _put_if_local(path: str, data: bytes, version: object) -> object | None:
    import fcntl

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            st = os.stat(path)
            current = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            current = None
        if current != version:
            return None
        put_atomic(path, data)
        st = os.stat(path)
        return (st.st_ino, st.st_size, st.st_mtime_ns)


_WARNED: set[str] = set()


def _warn_unconditional(url: str) -> None:
    protocol = split_protocol(url)[0] or "file"
    if protocol not in _WARNED:
        _WARNED.add(protocol)
        log.warning("storage: %s:// has no conditional writes; the run lease in run.json is checked, then written", protocol)
