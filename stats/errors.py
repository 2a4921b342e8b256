"""The one user-facing error type of stats (ARCHITECTURE: each package has one)."""


class StatsError(ValueError):
    """A problem with the inputs to stats that the user can fix.

    The message names the column, field or file at fault, so the CLI can print it as one
    line (``error: ...``) with no traceback.
    """
