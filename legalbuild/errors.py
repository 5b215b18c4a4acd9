"""User-facing errors. The CLI prints their message (no traceback) and exits with their code."""

from __future__ import annotations


class LegalbuildError(Exception):
    """Base class for errors a user can act on. `hint` says what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class RecipeError(LegalbuildError):
    """The recipe file is missing, is not valid TOML, or fails validation."""

    exit_code = 2


class DataError(LegalbuildError):
    """A data source or rulebook is unreadable or has a bad row (names file:line and field)."""

    exit_code = 3


class LockMismatchError(LegalbuildError):
    """`build --locked` found a stage whose key differs from the lock file."""

    exit_code = 4


class LockFileError(LegalbuildError):
    """The lock file beside the recipe is not a lock legalbuild can read."""

    exit_code = 4


class NotBuiltError(LegalbuildError):
    """A command needs a stage output that is not in the cache yet."""

    exit_code = 5


class StageFailedError(LegalbuildError):
    """A stage ran and failed one of its own checks (merge parity, eval regression...)."""

    exit_code = 6


class ServeError(LegalbuildError):
    """The inference server could not be started or did not become ready."""

    exit_code = 7


class CacheCorruptError(LegalbuildError):
    """`verify` found cached outputs whose digests differ from their manifest."""

    exit_code = 8
