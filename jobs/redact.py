"""Secrets never leave: URLs lose their userinfo, secret query parameters and fragment before they are shown or stored.

Users hand memaudit pre-signed URLs (``?X-Amz-Signature=...``), URLs with ``user:password@`` and
endpoints with tokens in their query. The full URL is needed to read the bytes, but nothing written
for people or for analytics needs the secret part: ``run.json``, ``report.html``, the results'
``source`` column, log lines and error messages all go through :func:`redact_text` or
:func:`redact_value`; image ids derived from a URL go through :func:`strip_secrets`. A redacted URL
keeps its scheme, host, path and the query parameters that name data rather than grant access
(``/get?file=a.png`` stays, so two such sources stay apart), and marks what was removed, so a reader
knows the original carried a credential. A parameter is secret by its name (SECRET_NAME) or when its
value looks like a token (TOKEN_VALUE: long, no '.' or '/'); when in doubt it is removed.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

REDACTED = "<redacted>"

# Query parameter names that carry or accompany credentials: AWS / GCS / Azure SAS signing, OAuth, API keys.
SECRET_NAME = re.compile(r"^(x-amz-|x-goog-|x-ms-)|sig|token|key|secret|pass|pwd|cred|auth|session|policy|expir"
                         r"|^(se|sp|sv|sr|st|ss|srt|spr|skoid|sktid|skt|ske|sks|skv|sdd|code|state|nonce|jwt|hmac)$",
                         re.IGNORECASE)
TOKEN_VALUE = re.compile(r"^[A-Za-z0-9+=_%~-]{16,}$")  # long, and no '.' or '/': a token, not a file name

# scheme://[userinfo@]rest-up-to-whitespace-or-quote; the query (?...) and fragment (#...) are cut from rest.
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s@'\"<>]*@)?(?P<rest>[^\s'\"<>]*)"
                  r"(?P<done><redacted>)?")  # a query redacted before: kept as it is (redacting twice changes nothing)


def _secret(param: str) -> bool:
    name, _, value = param.partition("=")
    return _secret_name(name) or bool(TOKEN_VALUE.match(value))


@functools.lru_cache(maxsize=1024)
def _secret_name(name: str) -> bool:  # a listing repeats the same few names per URL: cached
    return not name or bool(SECRET_NAME.search(name))


def _split_query(rest: str) -> tuple[str, list[str], bool]:
    """(path, the query's kept parameters, whether anything was removed: secret parameters or a fragment)."""
    rest, hash_, _ = rest.partition("#")
    path, question, query = rest.partition("?")
    params = [p for p in query.split("&") if p]
    kept = [p for p in params if not _secret(p)]
    return path, kept, bool(hash_) or len(kept) < len(params)


def _strip(match: re.Match) -> str:
    if match.group("done") and match.group("rest").endswith(("?", "&")):
        return match.group(0)  # redacted before: what is left of its query was kept then
    rest = match.group("rest")
    tail = rest[len(rest.rstrip(":,;.)]")):]  # punctuation after a URL in a sentence is not part of it
    rest = rest[: len(rest) - len(tail)]
    userinfo = f"{REDACTED}@" if match.group("userinfo") else ""
    path, kept, removed = _split_query(rest)
    query = "&".join(kept + ([REDACTED] if removed else []))
    rest = f"{path}?{query}" if query else path
    return f"{match.group('scheme')}{userinfo}{rest}{tail}{match.group('done') or ''}"


def strip_secrets(url: str) -> str:
    """A URL without its userinfo, secret query parameters and fragment, and without a marker: what an image id
    derived from the URL is made of, so that it stays the same when the URL is signed again (a pre-signed URL's
    signature and expiry change every time) and never carries a credential into the tables or the report."""
    scheme, sep, rest = url.partition("://")
    if not sep or REDACTED in rest:
        return url
    authority, slash, tail = rest.partition("/")
    rest = authority.rpartition("@")[2] + slash + tail  # without user:password@
    path, kept, _ = _split_query(rest)
    return f"{scheme}://{path}" + (f"?{'&'.join(kept)}" if kept else "")


def redact_text(text: str) -> str:
    """Every URL inside ``text`` with its userinfo and query string replaced by a marker."""
    if "://" not in text:
        return text
    return _URL.sub(_strip, text)


def redact_value(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with every URL in every string redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that redacts URLs in a record's formatted message (installed on the handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_redaction(logger: logging.Logger) -> None:
    """Redact URLs in everything ``logger`` (and its children, through its handlers) emits."""
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
