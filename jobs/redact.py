"""Secrets never leave: URLs lose their userinfo and query string before they are shown or stored.

Users hand memaudit pre-signed URLs (``?X-Amz-Signature=...``), URLs with ``user:password@`` and
endpoints with tokens in their query. The full URL is needed to read the bytes, but nothing written
for people or for analytics needs the secret part: ``run.json``, ``report.html``, the results'
``source`` column, log lines and error messages all go through :func:`redact_text` or
:func:`redact_value`. A redacted URL keeps its scheme, host and path (what a user needs to find the
file) and marks what was removed, so a reader knows the original carried a credential.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "<redacted>"

# scheme://[userinfo@]rest-up-to-whitespace-or-quote; the query (?...) and fragment (#...) are cut from rest.
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s@'\"<>]*@)?(?P<rest>[^\s'\"<>]*)"
                  r"(?P<done><redacted>)?")  # a query redacted before: kept as it is (redacting twice changes nothing)


def _strip(match: re.Match) -> str:
    if match.group("done") and match.group("rest").endswith("?"):
        return match.group(0)
    rest = match.group("rest")
    tail = rest[len(rest.rstrip(":,;.)]")):]  # punctuation after a URL in a sentence is not part of it
    rest = rest[: len(rest) - len(tail)]
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    userinfo = f"{REDACTED}@" if match.group("userinfo") else ""
    if cut >= 0:
        rest = f"{rest[:cut]}?{REDACTED}"
    return f"{match.group('scheme')}{userinfo}{rest}{tail}{match.group('done') or ''}"


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
