"""Numeric error codes for job attempts, in the spirit of the PanDA pilot's ``errorcodes`` table.

Every failed attempt carries one code. The code says what went wrong, gives a short human
description, and tells the server whether it may put the job back in the queue by itself.
Codes are stable: they are stored in the database and shown to users, so never renumber one.

Numbering: 0 is success; 1000-1099 the payload itself failed; 1100-1199 a resource limit or
the node's resources were exhausted; 1200-1299 the pilot or its worker process failed or acted;
1300-1399 the server noticed a problem or failed itself.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """An attempt's outcome code, with ``retryable`` and ``description`` attributes on each member."""

    retryable: bool
    description: str

    def __new__(cls, value: int, retryable: bool, description: str) -> ErrorCode:
        member = int.__new__(cls, value)
        member._value_ = value
        member.retryable = retryable
        member.description = description
        return member

    OK = 0, False, "the payload finished successfully"

    # The payload itself failed.
    # Not retried by the server: parsl's DataFlowKernel owns app-level retries and sees the exception.
    PAYLOAD_EXCEPTION = 1001, False, "the Python task raised an exception; it is returned to the client"
    PAYLOAD_NONZERO_EXIT = 1002, True, "the shell command exited with a non-zero exit code"
    BAD_PAYLOAD = 1003, False, "the payload is malformed or could not be deserialized"
    SERIALIZATION_ERROR = 1004, False, "the task's result could not be serialized"

    # Resource limits and exhausted node resources.
    OUT_OF_MEMORY = 1101, True, "the payload was killed for exceeding its memory limit"
    WALLTIME_EXCEEDED = 1102, True, "the payload was killed for exceeding its walltime limit"
    DISK_FULL = 1103, True, "no space left on the pilot's work directory"

    # The pilot or its worker processes.
    WORKER_DIED = 1201, True, "the worker process running the payload died unexpectedly (crash, os._exit)"
    PILOT_TERMINATED = 1202, True, "the pilot was terminated or shut down before the payload finished"
    ENV_CHECK_FAILED = 1203, True, "the pilot's environment check failed"
    KILLED_ON_REQUEST = 1204, False, "the job was cancelled on request"

    # Noticed by, or failures of, the server.
    LOST_HEARTBEAT = 1301, True, "the pilot running the job stopped sending heartbeats"
    LOST_IN_DISPATCH = 1302, True, "the job was handed to a pilot that never acknowledged it"
    SERVER_ERROR = 1399, False, "internal error of the server"


TABLE: list[tuple[int, str, bool, str]] = [(int(c), c.name, c.retryable, c.description) for c in ErrorCode]
"""Rows ``(code, name, retryable, description)`` in code order, for CLIs and monitors."""


def _lookup(code: int) -> ErrorCode | None:
    try:
        return ErrorCode(int(code))
    except ValueError:
        return None


def describe(code: int) -> str:
    """Return ``"NAME: description"`` for ``code``; unknown codes are described as such."""
    member = _lookup(code)
    if member is None:
        return f"UNKNOWN: unknown error code {int(code)}"
    return f"{member.name}: {member.description}"


def is_retryable(code: int) -> bool:
    """True if the server may automatically retry an attempt that failed with ``code``.

    Unknown codes are not retryable: retrying blindly could loop on a permanent failure.
    """
    member = _lookup(code)
    return member is not None and member.retryable
