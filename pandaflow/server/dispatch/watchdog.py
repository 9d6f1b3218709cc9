"""Watchdog: pilots that stop heartbeating are declared lost. Their running jobs fail the
attempt with LOST_HEARTBEAT (and are retried while attempts are left); the jobs they held but
never started go back to their queue with the attempt given back, as do jobs a live pilot says
it never received. A pilot reports starts promptly, so the server knows which is which."""

from __future__ import annotations

from sqlalchemy import Connection

from pandaflow.errorcodes import ErrorCode
from pandaflow.server.dispatch.completion import Completed, give_back, held_by, outcome, record
from pandaflow.server.jobs import pilots
from pandaflow.server.jobs.states import DISPATCHED, RUNNING
from pandaflow.server.store.statements import Sql, chunks, marks

_HELD_BY = (
    "SELECT id, uid, client, status, attempt, queue, pilot_id FROM jobs"
    " WHERE pilot_id IN ({}) AND status IN ('dispatched','running')"
)


def sweep(conn: Connection, now: float, heartbeat_timeout: float) -> tuple[list[int], Completed]:
    """Declare silent pilots lost and settle their jobs; returns (lost pilot ids, what changed)."""
    lost = pilots.silent_since(conn, now - heartbeat_timeout)
    if not lost:
        return [], Completed()
    for pilot_id in lost:
        pilots.depart(conn, pilot_id, now, status=pilots.LOST)
    sql = Sql(conn)
    lock = " FOR UPDATE" if sql.pg else ""
    rows = []
    for part in chunks(lost):
        rows += sql.maps(_HELD_BY.format(marks(len(part))) + lock, part)
    done = give_back(
        conn, [r for r in rows if r["status"] == DISPATCHED], now,
        "its pilot was lost before starting it",
    )  # fmt: skip
    failures = [
        outcome(r["id"], r["attempt"], ErrorCode.LOST_HEARTBEAT,
                f"pilot {r['pilot_id']} sent no heartbeat for {heartbeat_timeout:g} s")
        for r in rows
        if r["status"] == RUNNING
    ]  # fmt: skip
    _add(done, record(conn, failures, now))
    return lost, done


def unacknowledged(
    conn: Connection, pilot_id: int, known: set[int], dispatched_before: float, now: float
) -> Completed:
    """Settle jobs dispatched to a live pilot that the pilot says it does not hold: those it was
    never seen to start go back to their queue (the jobs message was lost, e.g. with a server
    that died before sending it); those reported running fail with LOST_IN_DISPATCH."""
    sql = Sql(conn)
    lock = " FOR UPDATE" if sql.pg else ""
    rows = [
        r
        for r in sql.maps(
            "SELECT id, uid, client, status, attempt, queue, pilot_id FROM jobs WHERE pilot_id=?"
            f" AND status IN ('dispatched','running') AND dispatched_at < ?{lock}",
            (pilot_id, dispatched_before),
        )
        if r["id"] not in known
    ]
    if not rows:
        return Completed()
    done = give_back(
        conn, [r for r in rows if r["status"] == DISPATCHED], now, f"pilot {pilot_id} never received it"
    )
    failures = [
        outcome(r["id"], r["attempt"], ErrorCode.LOST_IN_DISPATCH,
                f"pilot {pilot_id} no longer holds the job it was running")
        for r in rows
        if r["status"] == RUNNING
    ]  # fmt: skip
    _add(done, record(conn, failures, now))
    return done


def settle_departed(conn: Connection, pilot_id: int, now: float) -> Completed:
    """A pilot said goodbye still holding jobs (a report of it was lost): those it never started
    go back to their queue, those it ran end their attempt with PILOT_TERMINATED."""
    rows = held_by(conn, pilot_id)
    done = give_back(conn, [r for r in rows if r["status"] == DISPATCHED], now, f"pilot {pilot_id} exited")
    failures = [
        outcome(
            r["id"], r["attempt"], ErrorCode.PILOT_TERMINATED, f"pilot {pilot_id} exited while running it"
        )
        for r in rows
        if r["status"] == RUNNING
    ]
    _add(done, record(conn, failures, now))
    return done


def _add(total: Completed, more: Completed) -> None:
    total.effects.merge(more.effects)
    total.final += more.final
    total.retried += more.retried
    total.returned += more.returned
    total.stale += more.stale
