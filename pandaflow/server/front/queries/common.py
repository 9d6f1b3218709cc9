"""What every query shares: paging, counts by state, derived statuses, times, error codes,
and the exceptions."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select

from pandaflow import errorcodes
from pandaflow.server.jobs import pilots as pilot_registry
from pandaflow.server.jobs.states import (
    ALL_STATES,
    CANCELLED,
    FINAL_STATES,
    FINISHED,
    RUNNING,
)
from pandaflow.server.store import schema as s

_J = s.jobs.c
_A = s.attempts.c
_T = s.tasks.c
_W = s.workflows.c
_P = s.pilots.c

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PILOT_STATES = (pilot_registry.ACTIVE, pilot_registry.LOST, pilot_registry.EXITED)

# Derived statuses of a workflow or task (see derived_status).
EMPTY = "empty"
SUBFINISHED = "subfinished"
DERIVED_STATES = (EMPTY, RUNNING, FINISHED, SUBFINISHED, "failed", CANCELLED)


class NotFound(LookupError):
    """The workflow, task, job or attempt asked for does not exist."""


# ---------------------------------------------------------------- formatting helpers


def iso(t: float | None) -> str | None:
    """An epoch time as an ISO-8601 UTC string (millisecond precision), or None."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def seconds_between(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, end - start), 3)


def error_info(code: int) -> tuple[str, str]:
    """(name, description) of a pilot/server error code; unknown codes are named ``UNKNOWN_<n>``."""
    try:
        member = errorcodes.ErrorCode(code)
    except ValueError:
        return f"UNKNOWN_{code}", errorcodes.describe(code)
    # describe() prefixes the name, which callers already get on its own.
    return member.name, getattr(member, "description", "") or errorcodes.describe(code)


def error_codes() -> list[dict[str, Any]]:
    """Every error code pilots and the server report: code, name, retryable, description."""
    return [
        {"code": int(code), "name": name, "retryable": bool(retryable), "description": description}
        for code, name, retryable, description in errorcodes.TABLE
    ]


def check_page(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")


def paged(key: str, items: list[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    return {key: items, "total": total, "limit": limit, "offset": offset}


def zero_counts() -> dict[str, int]:
    return dict.fromkeys(ALL_STATES, 0)


def derived_status(counts: dict[str, int]) -> str:
    """The status of a group of jobs (a workflow or a task), from its job counts by state.

    * ``empty``: no jobs;
    * ``running``: some job has not reached a final state (pending, ready, held, dispatched or
      running jobs remain), even if none has started yet;
    * ``finished``: every job finished;
    * ``subfinished``: every job ended, some finished and some did not;
    * ``cancelled``: every job ended, none finished, and every one was cancelled;
    * ``failed``: every job ended, none finished, and at least one failed or was pruned.
    """
    total = sum(counts.values())
    if total == 0:
        return EMPTY
    if any(n for state, n in counts.items() if state not in FINAL_STATES):
        return RUNNING
    finished = counts.get(FINISHED, 0)
    if finished == total:
        return FINISHED
    if finished:
        return SUBFINISHED
    if counts.get(CANCELLED, 0) == total:
        return CANCELLED
    return "failed"


def counts_by(conn: Connection, column, ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """Job counts by state for each id of ``column`` (jobs.workflow_id or jobs.task_id)."""
    ids = list(ids)
    out: dict[int, dict[str, int]] = {i: zero_counts() for i in ids}
    if not ids:
        return out
    rows = conn.execute(
        select(column, _J.status, func.count()).where(column.in_(ids)).group_by(column, _J.status)
    ).all()
    for key, status, n in rows:
        out[key][status] = n
    return out


def with_counts(item: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    item["status"] = derived_status(counts)
    item["n_jobs"] = sum(counts.values())
    item["counts"] = counts
    return item
