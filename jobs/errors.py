"""The job's user-facing errors, in one module that every other jobs module may import (no cycles).

ConfigError: the run cannot start as configured (exit 2, one line naming the dotted field, file or row).
JobError: the job ran but could not finish (no actor started, the output is inconsistent or held by a
live run); exit 1, resumable unless the message says otherwise.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config field (or an input it points at) that cannot be used; the message starts with its dotted name."""


class JobError(RuntimeError):
    """The job could not finish (no actor could start, the outputs are inconsistent); exit code 1."""
