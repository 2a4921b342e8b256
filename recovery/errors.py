"""The user-facing errors of the recovery package."""


class RecoveryError(ValueError):
    """A generator, setting or target that recovery cannot use; the message names which and why."""


class ImageError(RecoveryError):
    """One target image that cannot be audited (corrupt, too small, wrong depth); becomes a rejects row."""
