"""What a loop raises: bad input found before anything is submitted, and a loop stopped by its
failure policy."""

from __future__ import annotations


class LoopInputError(ValueError):
    """A ``space``, ``bounds`` or option that cannot be used; the message says what and how to fix it.
    Raised before anything is submitted."""


class LoopStopped(RuntimeError):
    """An evaluation failed under ``on_failure="stop"``; ``error`` is the evaluation's own error."""

    def __init__(self, message: str, error: BaseException | str | None = None):
        super().__init__(message)
        self.error = error


class EvaluationError(RuntimeError):
    """An evaluation that ran but gave no usable value (a non-number returned, a command that
    failed or wrote no valid result file); raised where it ran, kept as the trial's error."""
