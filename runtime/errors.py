"""One exception hierarchy for the whole toolkit.

Every error a user can cause or fix is a :class:`ConvDeployError`. The CLI prints
``str(error)`` as one line (what went wrong, and what to do) and exits with
``error.exit_code``: 2 for bad usage or bad input, 1 for a check that ran and failed.

Anything else is a bug in convdeploy: raise :class:`InternalError` where the code knows
an invariant broke (never ``assert``, which ``python -O`` removes). The CLI prints a
bug's traceback and exits with :data:`EXIT_INTERNAL`, so a script can tell "my input
was wrong" (2) and "the model failed its check" (1) from "the tool broke" (3).

This module is the ground floor: it imports nothing from convdeploy.
"""

from __future__ import annotations


class ConvDeployError(Exception):
    """Base class: a message, a hint, and the CLI's exit code (2 = bad usage or input, 1 = a failed check)."""

    exit_code: int = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}; {hint}")


class UsageError(ConvDeployError):
    """Bad arguments or options."""


class InputError(ConvDeployError):
    """Bad input data: a missing file, a corrupt image, an empty folder."""


class ImageDecodeError(InputError):
    """An image could not be decoded (corrupt, not an image, or too large)."""


class CheckpointError(InputError):
    """A checkpoint that cannot be loaded into the requested model."""


class BundleError(InputError):
    """A bundle that is incomplete, altered (hash mismatch) or of an unknown schema."""


class ProfileError(InputError):
    """A target profile that is missing or invalid."""


class BackendUnavailableError(ConvDeployError):
    """The requested backend or precision cannot run on this machine."""


class EngineMismatchError(BundleError):
    """A TensorRT engine built for another GPU or TensorRT version."""


class CheckFailedError(ConvDeployError):
    """A check ran and failed: a parity gate, an on-device verify."""

    exit_code = 1


EXIT_INTERNAL = 3


class InternalError(Exception):
    """A broken invariant inside convdeploy: a bug, never the user's input.

    Deliberately not a :class:`ConvDeployError`: nothing turns it into a user's one-line
    error; the CLI shows its traceback and exits with :data:`EXIT_INTERNAL`.
    """

    exit_code: int = EXIT_INTERNAL
