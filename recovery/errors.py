"""The user-facing errors of the recovery package."""

import re


class RecoveryError(ValueError):
    """A generator, setting or target that recovery cannot use; the message names which and why."""


class ImageError(RecoveryError):
    """One target image that cannot be audited (corrupt, too small, wrong depth); becomes a rejects row."""


def own_message(exc: BaseException) -> str:
    """The exception's own message in one line. TorchScript wraps a module's error in its interpreter's
    traceback ("The following operation failed in the TorchScript interpreter ... RuntimeError: <message>"):
    the generator's message is the last "SomeError: ..." line, so that is the one kept."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if "TorchScript interpreter" in lines[0]:
        raised = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
        if raised:
            return raised[-1][:500]
    return f"{type(exc).__name__}: {lines[0][:500]}"
