"""Watchdog: pilots that stop heartbeating lose their jobs, which fail with LOST_HEARTBEAT
and are retried; jobs a live pilot never acknowledged fail with LOST_IN_DISPATCH."""

from __future__ import annotations

from sqlalchemy import Connection, select

from pandaflow.errorcodes import ErrorCode
from pandaflow.server import pilots
from pandaflow.server import schema as s
from pandaflow.server.completion import Completed, outcome, record
from pandaflow.server.states import ACTIVE_STATES

_J = s.jobs.c


def sweep(conn: Connection, now: float, heartbeat_timeout: float) -> tuple[list[int], Completed]:
    """Declare silent pilots lost and fail their jobs; returns (lost pilot ids, what changed)."""
    lost = pilots.silent_since(conn, now - heartbeat_timeout)
    if not lost:
        return [], Completed()
    for pilot_id in lost:
        pilots.depart(conn, pilot_id, now, status=pilots.LOST)
    rows = conn.execute(
        select(_J.id, _J.attempt, _J.pilot_id).where(
            _J.pilot_id.in_(lost), _J.status.in_(list(ACTIVE_STATES))
        )
    ).all()
    failures = [
        outcome(
            r.id,
            r.attempt,
            ErrorCode.LOST_HEARTBEAT,
            f"pilot {r.pilot_id} sent no heartbeat for {heartbeat_timeout:g} s",
        )
        for r in rows
    ]
    return lost, record(conn, failures, now)


def unacknowledged(
    conn: Connection, pilot_id: int, known: set[int], dispatched_before: float, now: float
) -> Completed:
    """Fail jobs dispatched to a live pilot that the pilot says it does not hold."""
    rows = conn.execute(
        select(_J.id, _J.attempt).where(
            _J.pilot_id == pilot_id, _J.status.in_(list(ACTIVE_STATES)), _J.dispatched_at < dispatched_before
        )
    ).all()
    missing = [
        outcome(r.id, r.attempt, ErrorCode.LOST_IN_DISPATCH, f"pilot {pilot_id} never received the job")
        for r in rows
        if r.id not in known
    ]
    return record(conn, missing, now)
