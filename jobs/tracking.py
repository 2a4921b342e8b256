"""Scheduled audits: the exit code a scheduler sees, and the run's row in `output.history`.

    code = exit_code(outcome, fail_on="memorization")      # stats.exit_codes: 0, 1, 3, 4
    record_history(config, outcome)                        # when output.history is set

The history row is built by stats.history.runs from what the run wrote (run.json and the stats
tables), plus the generator file's sha256, which only the job can read cheaply (it has the
resolved URL and the store's endpoint). Appending is idempotent, so a re-submitted run
(which skips its finished shards and reduces again) replaces its own row instead of adding one.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from stats.exit_codes import ERROR, verdict_exit_code

from stats import storage

log = logging.getLogger("memaudit")
GENERATOR_FILES = ("torchscript", "pickle", "checkpoint")  # the fields of a generator spec that name a file
CHUNK = 1 << 22


def exit_code(outcome: Any, fail_on: str | None) -> int:
    """The job's exit code: its own error code (1) first, else the verdict's under --fail-on.

    A run stopped by --max-shards has no verdict yet: it counts as inconclusive under
    --fail-on inconclusive (a gate must not pass a run that has not decided).
    """
    if outcome.exit_code != 0:
        return outcome.exit_code
    label = outcome.reduction.verdict.label if outcome.reduction is not None else None
    return verdict_exit_code(label, fail_on)


def generator_sha256(generator: Any, endpoint_url: str | None = None) -> str | None:
    """sha256 of the generator's file (TorchScript, network pickle or checkpoint; a style-based TorchScript pair's
    two files in key order; a diffusers folder's files with their names), streamed; None for a built-in or
    factory generator without a checkpoint."""
    value = next((getattr(generator, k, None) for k in GENERATOR_FILES if getattr(generator, k, None)), None)
    folder = getattr(generator, "diffusers", None)
    if not value and not folder:
        return None
    if folder:  # a save_pretrained folder: its files in sorted order, each preceded by its name inside the folder
        urls = storage.find_files(folder, endpoint_url)
    else:
        urls = [value[k] for k in sorted(value)] if isinstance(value, dict) else [value]  # {mapping, synthesis}
    digest = hashlib.sha256()
    for url in urls:
        if folder:
            digest.update(url[len(folder.rstrip("/")):].encode() + b"\0")
        fs, path = storage.filesystem(str(url), endpoint_url)

        def read() -> None:
            with fs.open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)

        storage.retrying(read, f"reading {url}")
    return digest.hexdigest()


def check_history(config: Any) -> None:
    """Raise ConfigError (exit 2, before Ray starts) when nothing can be written under output.history."""
    if not getattr(config, "history", None):
        return
    from .errors import ConfigError

    try:
        storage.check_writable(config.history, config.storage.endpoint_url)
    except Exception as exc:  # noqa: BLE001 - any failure here means the history is unusable
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ConfigError(f"output.history: cannot write to {config.history} ({reason})") from None


def record_history(config: Any, outcome: Any) -> str | None:
    """Append the finished run's row to config.history (stats.history.runs); returns the file written.

    Only a reduced run enters the history (failed, refused and partial runs have no verdict).

    Raises:
        stats.StatsError, OSError: the row could not be built or written; the audit itself is complete.
    """
    history = getattr(config, "history", None)
    if not history or outcome.reduction is None:
        return None
    from stats.history.runs import append, history_row

    endpoint = config.storage.endpoint_url
    run = getattr(config, "run", None)
    row = history_row(config.output, storage_options=storage.storage_options(config.output, endpoint),
                      model=getattr(run, "model", None), tags=getattr(run, "tags", None))  # generator_sha256: run.json's
    written = storage.retrying(
        lambda: append(row, history, storage_options=storage.storage_options(history, endpoint)),
        f"appending to the history at {history}")
    log.info("history: run %s of model %s appended to %s", row.column("run_id")[0].as_py(),
             row.column("model")[0].as_py(), history)
    return written


def record_or_fail(config: Any, outcome: Any, code: int) -> int:
    """record_history, turning a failure into exit code 1 with a line saying how to append again."""
    try:
        record_history(config, outcome)
    except Exception as exc:  # noqa: BLE001 - any failure here leaves a finished audit without its row
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        outage = isinstance(exc, storage.StorageError) or storage.transient(exc)  # an outage that outlasted the retries
        again = ("Run the same command again to append it" if outage else
                 "Running the same command again fails the same way: fix that first, then run it again")
        log.error("the audit finished (%s) but appending to the history %s failed: %s. %s: every shard is done, so "
                  "it only reduces and appends.", outcome.reduction.verdict.label, config.history, reason, again)
        return ERROR
    return code
