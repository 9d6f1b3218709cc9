"""User control of jobs: cancel, retry, hold and release, by job ids, a workflow, or one task
(label) of a workflow. Every change goes through :func:`pandaflow.server.jobs.states.apply`; each
function runs in the caller's transaction and returns what changed and what to tell others."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, insert, select

from pandaflow.errorcodes import ErrorCode
from pandaflow.server.jobs import dag, states
from pandaflow.server.jobs.states import ACTIVE_STATES, CANCELLED, FAILED, FINAL_STATES, HELD, Effects
from pandaflow.server.store import schema as s
from pandaflow.server.store.statements import Sql, chunks, claim_writes, marks

_J = s.jobs.c


class ControlError(ValueError):
    """A control request names nothing that can be acted on."""


class NotThere(ControlError):
    """A control request names jobs, or a task, that do not exist."""


@dataclass(slots=True)
class Changed:
    """What a control request changed: the jobs it moved, those it left (with the reason), and
    the follow-ups for the dispatcher (pilots to kill, clients to notify, queues with work)."""

    job_ids: list[int] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"id", "status", "reason"}
    effects: Effects = field(default_factory=Effects)

    @property
    def kill(self) -> dict[int, list[int]]:
        return self.effects.kill

    @property
    def notify(self) -> dict[str, list[dict[str, Any]]]:
        return self.effects.notify

    @property
    def queues(self) -> set[str]:
        return self.effects.queues

    def skip(self, job: dict[str, Any], reason: str) -> None:
        self.skipped.append({"id": job["id"], "status": job["status"], "reason": reason})


def _select(
    conn: Connection, job_ids: list[int] | None, workflow_id: int | None, task: str | None = None
) -> list[dict[str, Any]]:
    if not job_ids and workflow_id is None:
        raise ControlError("name job ids or a workflow id")
    if task is not None and workflow_id is None:
        raise ControlError("a task (label) is named within a workflow: give the workflow id too")
    claim_writes(conn)
    query = select(
        _J.id, _J.uid, _J.status, _J.attempt, _J.max_attempts, _J.pilot_id, _J.client, _J.queue,
        _J.error_code, _J.dispatched_at, _J.started_at, _J.memory_mb,
    ).order_by(_J.id)  # fmt: skip
    if job_ids:
        query = query.where(_J.id.in_(job_ids))
    if workflow_id is not None:
        query = query.where(_J.workflow_id == workflow_id)
    if task is not None:
        task_id = conn.execute(
            select(s.tasks.c.id).where(s.tasks.c.workflow_id == workflow_id, s.tasks.c.name == task)
        ).scalar()
        if task_id is None:
            names = conn.execute(select(s.tasks.c.name).where(s.tasks.c.workflow_id == workflow_id)).scalars()
            raise NotThere(f"workflow {workflow_id} has no task {task!r}; its tasks: {sorted(names)}")
        query = query.where(_J.task_id == task_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    rows = [dict(r) for r in conn.execute(query).mappings()]
    if job_ids:
        missing = set(job_ids) - {r["id"] for r in rows}
        if missing:
            raise NotThere(f"no such job(s): {sorted(missing)}")
    elif not rows:
        what = f"task {task!r} of workflow {workflow_id}" if task else f"workflow {workflow_id}"
        raise ControlError(f"{what} has no jobs (or does not exist)")
    return rows


def cancel(
    conn: Connection, now: float, job_ids: list[int] | None = None, workflow_id: int | None = None,
    task: str | None = None, why: str = "cancelled by user",
) -> Changed:  # fmt: skip
    """Cancel every job named that has not ended; running ones are killed on their pilots, and
    what they would have produced is missing (their consumers are pruned). ``why`` is the
    jobs' diagnosis and the reason in their history."""
    out = Changed()
    todo = []
    for job in _select(conn, job_ids, workflow_id, task):
        if job["status"] in FINAL_STATES:
            out.skip(job, "already ended")
        else:
            todo.append(job)
    code = int(ErrorCode.KILLED_ON_REQUEST)
    applied = states.apply(
        conn, "cancel", todo, now, error_code=code, error_diag=why, reason=why, effects=out.effects,
    )  # fmt: skip
    out.job_ids.extend(applied.ids)
    ended = [
        {"job_id": job["id"], "attempt": job["attempt"], "pilot_id": job["pilot_id"], "queue": job["queue"],
         "status": CANCELLED, "error_code": code, "error_diag": f"{why} while on a pilot",
         "dispatched_at": job["dispatched_at"], "started_at": job["started_at"], "ended_at": now,
         "memory_mb": job["memory_mb"]}
        for job in applied.moved
        if job["from"] in ACTIVE_STATES and job["pilot_id"] is not None
    ]  # fmt: skip
    if ended:
        conn.execute(insert(s.attempts), ended)
    dag.follow(conn, applied, now, out.effects)
    return out


def retry(
    conn: Connection, now: float, job_ids: list[int] | None = None, workflow_id: int | None = None,
    extra: int = 1, task: str | None = None,
) -> Changed:  # fmt: skip
    """Give failed or cancelled jobs at least ``extra`` more attempts, clear what their last
    attempt left, and undo what their failure did downstream: the jobs pruned because their
    outputs went missing wait for them again (see :func:`pandaflow.server.jobs.dag.revive`). A job
    runs again as soon as its inputs are available: those of a restarted workflow that were
    cancelled while waiting wait again."""
    out = Changed()
    todo = []
    for job in _select(conn, job_ids, workflow_id, task):
        if job["status"] in (FAILED, CANCELLED):
            todo.append(job)
        else:
            out.skip(job, "only failed or cancelled jobs")
    if not todo:
        return out
    applied = states.apply(conn, "resubmit", todo, now, extra_attempts=extra, reason="retried by user")
    out.job_ids.extend(applied.ids)
    revived = dag.revive(conn, out.job_ids, now, extra_attempts=extra)
    touched = [*out.job_ids, *revived]
    for part in chunks(touched):
        conn.execute(s.job_results.delete().where(s.job_results.c.job_id.in_(list(part))))
    dag.release_waiting(conn, touched, now, out.effects)
    out.job_ids.extend(revived)
    return out


def hold(
    conn: Connection, now: float, job_ids: list[int] | None = None, workflow_id: int | None = None,
    task: str | None = None,
) -> Changed:  # fmt: skip
    """Hold the jobs named that wait (pending, ready, reserved): they are neither dispatched nor
    pruned until released. Jobs on a pilot run to their end (cancel them to stop them)."""
    out = Changed()
    todo = []
    for job in _select(conn, job_ids, workflow_id, task):
        if job["status"] in states.WAITING_STATES:
            todo.append(job)
        elif job["status"] == HELD:
            out.skip(job, "already held")
        elif job["status"] in ACTIVE_STATES:
            out.skip(job, "on a pilot: it runs to its end (cancel it to stop it)")
        else:
            out.skip(job, "already ended")
    out.job_ids.extend(states.apply(conn, "hold", todo, now, reason="held by user").ids)
    return out


def release(
    conn: Connection, now: float, job_ids: list[int] | None = None, workflow_id: int | None = None,
    task: str | None = None,
) -> Changed:  # fmt: skip
    """Release held jobs back to where they were: ready when every input is available, pending
    while some are not, and pruned when one can never exist any more (a producer failed while
    the job was held; what it would have produced is then missing too)."""
    out = Changed()
    todo = []
    for job in _select(conn, job_ids, workflow_id, task):
        if job["status"] == HELD:
            todo.append(job)
        else:
            out.skip(job, "not held")
    if not todo:
        return out
    ids = states.apply(conn, "unhold", todo, now, reason="released by user").ids
    out.job_ids.extend(ids)
    doomed = _lacking(conn, ids)
    if doomed:
        why = "an input can never exist: its producer ended without it while this job was held"
        rows = [job for job in todo if job["id"] in doomed]
        for row in rows:
            row["status"] = states.PENDING
        pruned = states.apply(conn, "prune", rows, now, error_diag=why, reason=why, effects=out.effects)
        dag.prune(conn, pruned.ids, now, "an input can never exist: its producer was pruned", out.effects)
    dag.release_waiting(conn, [i for i in ids if i not in doomed], now, out.effects)
    return out


def _lacking(conn: Connection, job_ids: list[int]) -> set[int]:
    """Jobs (not ``always``) that read a product that can never exist."""
    sql = Sql(conn)
    found: set[int] = set()
    for part in chunks(job_ids):
        found.update(
            r[0]
            for r in sql.rows(
                "SELECT DISTINCT i.job_id FROM job_inputs i JOIN products p ON p.id=i.product_id"
                f" JOIN jobs j ON j.id=i.job_id WHERE i.job_id IN ({marks(len(part))})"
                " AND p.status='missing' AND NOT j.always",
                part,
            )
        )
    return found
