"""User control of jobs: cancel and retry, by job ids or whole workflows."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from pandaflow.errorcodes import ErrorCode
from pandaflow.server import dag
from pandaflow.server import schema as s
from pandaflow.server.completion import note_pruned
from pandaflow.server.statements import chunks, claim_writes
from pandaflow.server.states import ACTIVE_STATES, CANCELLED, FAILED, FINAL_STATES, PENDING, transition

_J = s.jobs.c


class ControlError(ValueError):
    """A control request names nothing that can be acted on."""


@dataclass(slots=True)
class Changed:
    job_ids: list[int] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"id", "status", "reason"}
    kill: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # pilot id -> job ids
    notify: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    queues: set[str] = field(default_factory=set)


def _select(conn: Connection, job_ids: list[int] | None, workflow_id: int | None):
    if not job_ids and workflow_id is None:
        raise ControlError("name job ids or a workflow id")
    query = select(
        _J.id,
        _J.uid,
        _J.status,
        _J.attempt,
        _J.max_attempts,
        _J.pilot_id,
        _J.client,
        _J.queue,
        _J.error_code,
        _J.stdout_tail,
        _J.dispatched_at,
        _J.started_at,
    ).order_by(_J.id)
    if job_ids:
        query = query.where(_J.id.in_(job_ids))
    if workflow_id is not None:
        query = query.where(_J.workflow_id == workflow_id)
    rows = [dict(r) for r in conn.execute(query).mappings()]
    if job_ids:
        missing = set(job_ids) - {r["id"] for r in rows}
        if missing:
            raise ControlError(f"no such job(s): {sorted(missing)}")
    elif not rows:
        raise ControlError(f"workflow {workflow_id} has no jobs (or does not exist)")
    return rows


def _apply(conn: Connection, moves: list[dict[str, Any]]) -> None:
    by_columns: dict[tuple, list] = defaultdict(list)
    for m in moves:
        by_columns[tuple(sorted(k for k in m if not k.startswith("_")))].append(m)
    for columns, rows in by_columns.items():
        conn.execute(
            update(s.jobs)
            .where(_J.id == bindparam("_id"), _J.status == bindparam("_from"))
            .values({k: bindparam(k) for k in columns}),
            rows,
        )


def cancel(
    conn: Connection, now: float, job_ids: list[int] | None = None, workflow_id: int | None = None
) -> Changed:
    """Cancel every job named that has not ended; running ones are killed on their pilots."""
    out = Changed()
    claim_writes(conn)
    moves = []
    ended: list[dict[str, Any]] = []  # attempts that the cancellation ends
    for job in _select(conn, job_ids, workflow_id):
        if job["status"] in FINAL_STATES:
            out.skipped.append({"id": job["id"], "status": job["status"], "reason": "already ended"})
            continue
        values = transition(job, CANCELLED, now, error_code=int(ErrorCode.KILLED_ON_REQUEST))
        moves.append({"_id": job["id"], "_from": job["status"], **values})
        out.job_ids.append(job["id"])
        if job["status"] in ACTIVE_STATES and job["pilot_id"] is not None:
            out.kill[job["pilot_id"]].append(job["id"])
            ended.append(
                {
                    "job_id": job["id"],
                    "attempt": job["attempt"],
                    "pilot_id": job["pilot_id"],
                    "queue": job["queue"],
                    "status": CANCELLED,
                    "error_code": int(ErrorCode.KILLED_ON_REQUEST),
                    "error_diag": "cancelled by user while on a pilot",
                    "dispatched_at": job["dispatched_at"],
                    "started_at": job["started_at"],
                    "ended_at": now,
                }
            )
        if job["client"]:
            out.notify[job["client"]].append(
                {
                    "uid": job["uid"],
                    "status": CANCELLED,
                    "error_code": int(ErrorCode.KILLED_ON_REQUEST),
                    "error_diag": "cancelled by user",
                    "result": None,
                    "exc": False,
                }
            )
    _apply(conn, moves)
    if ended:
        conn.execute(insert(s.attempts), ended)
    if out.job_ids:
        note_pruned(
            out.notify,
            dag.prune(
                conn, out.job_ids, now, "an input can never exist: its producer was cancelled",
                released=out.queues,
            ),
        )
    return out


def retry(
    conn: Connection,
    now: float,
    job_ids: list[int] | None = None,
    workflow_id: int | None = None,
    extra: int = 1,
) -> Changed:
    """Give failed or cancelled jobs ``extra`` more attempts, and undo what their failure did
    downstream: the jobs pruned because their outputs went missing wait for them again (see
    :func:`pandaflow.server.dag.revive`). A job runs again as soon as its inputs are available:
    those of a restarted workflow that were cancelled while waiting wait again."""
    out = Changed()
    claim_writes(conn)
    moves = []
    for job in _select(conn, job_ids, workflow_id):
        if job["status"] not in (FAILED, CANCELLED):
            out.skipped.append(
                {"id": job["id"], "status": job["status"], "reason": "only failed or cancelled jobs"}
            )
            continue
        values = transition(job, PENDING, now, extra_attempts=extra)
        moves.append({"_id": job["id"], "_from": job["status"], **values})
        out.job_ids.append(job["id"])
    if not moves:
        return out
    _apply(conn, moves)
    revived = dag.revive(conn, out.job_ids, now)
    touched = [*out.job_ids, *revived]
    for part in chunks(touched):
        conn.execute(s.job_results.delete().where(s.job_results.c.job_id.in_(list(part))))
    _released, queues = dag.release_waiting(conn, touched, now)
    out.queues |= queues
    out.job_ids.extend(revived)
    return out
