"""Exit codes of `memaudit audit` and `memaudit report`, for schedulers and CI.

    0    the run finished: no evidence of memorization, or any verdict when --fail-on is not given
    1    error: shards failed, the inputs overlap, too many rejects, the store stayed unreachable
    2    bad input: a config, flag, file or table the user must fix (one line `error: ...`)
    3    memorization, with --fail-on memorization or --fail-on inconclusive
    4    inconclusive (or no verdict yet: a run stopped by --max-shards), with --fail-on inconclusive
    130  interrupted (resumable)

Without --fail-on the verdict does not change the exit code, as before a
scheduler that treats any non-zero code as "the job broke" keeps working, and the verdict
is in run.json, the log and the history. --fail-on names the mildest verdict that fails:
`memorization` fails on memorization only; `inconclusive` also fails when the audit could
not tell (a CI gate that accepts only a clean "no evidence"). Errors (1, 2) come first: a run
that failed has no verdict to report.
"""

from __future__ import annotations

from stats.errors import StatsError
from stats.verdict import INCONCLUSIVE, MEMORIZATION, NO_EVIDENCE

OK = 0
ERROR = 1
BAD_INPUT = 2
MEMORIZATION_FOUND = 3
INCONCLUSIVE_FOUND = 4
INTERRUPTED = 130
FAIL_ON = (MEMORIZATION, INCONCLUSIVE)  # the choices of --fail-on


def verdict_exit_code(label: str | None, fail_on: str | None) -> int:
    """The exit code of a finished run with verdict ``label`` (None: no verdict yet) under ``--fail-on``.

    Raises:
        StatsError: fail_on is not one of FAIL_ON, or label is not a verdict.
    """
    if fail_on is not None and fail_on not in FAIL_ON:
        raise StatsError(f"--fail-on: expected one of {', '.join(FAIL_ON)}, got {fail_on!r}")
    if label not in (None, MEMORIZATION, NO_EVIDENCE, INCONCLUSIVE):
        raise StatsError(f"verdict: expected memorization, no evidence or inconclusive, got {label!r}")
    if fail_on is None or label == NO_EVIDENCE:
        return OK
    if label == MEMORIZATION:
        return MEMORIZATION_FOUND
    return INCONCLUSIVE_FOUND if fail_on == INCONCLUSIVE else OK
