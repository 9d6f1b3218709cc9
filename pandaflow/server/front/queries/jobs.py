"""Jobs: listings, one job with its attempts, its timeline and its log, and errors by code."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, select

from pandaflow.server.front.queries.common import (
    _A,
    _J,
    _P,
    _T,
    DEFAULT_LIMIT,
    NotFound,
    check_page,
    error_info,
    iso,
    paged,
    seconds_between,
)
from pandaflow.server.jobs.states import (
    ALL_STATES,
    EXTERNAL_NAMES,
)
from pandaflow.server.store import schema as s

# ---------------------------------------------------------------- jobs

JOB_COLUMNS = (
    _J.id, _J.uid, _J.name, _J.workflow_id, _J.task_id, _T.name.label("task"), _J.kind, _J.status, _J.queue,
    _J.priority, _J.cores, _J.memory_mb, _J.disk_mb, _J.walltime_s, _J.attempt, _J.max_attempts, _J.pilot_id,
    _J.worker_id, _J.error_code, _J.error_diag, _J.exit_code, _J.max_rss_mb, _J.max_pss_mb, _J.created_at,
    _J.updated_at, _J.dispatched_at, _J.started_at, _J.ended_at,
)  # fmt: skip


def job_dict(row: Any) -> dict[str, Any]:
    name, _ = error_info(row.error_code)
    return {
        "id": row.id,
        "uid": row.uid,
        "name": row.name,
        "workflow_id": row.workflow_id,
        "task_id": row.task_id,
        "task": row.task,
        "kind": row.kind,
        "status": row.status,
        "panda_status": EXTERNAL_NAMES[row.status][0],
        "queue": row.queue,
        "priority": row.priority,
        "cores": row.cores,
        "memory_mb": row.memory_mb,
        "disk_mb": row.disk_mb,
        "walltime_s": row.walltime_s,
        "attempt": row.attempt,
        "max_attempts": row.max_attempts,
        "pilot_id": row.pilot_id,
        "worker_id": row.worker_id,
        "error_code": row.error_code,
        "error_name": name,
        "error_diag": row.error_diag,
        "exit_code": row.exit_code,
        "max_rss_mb": row.max_rss_mb,
        "max_pss_mb": row.max_pss_mb,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "dispatched_at": iso(row.dispatched_at),
        "started_at": iso(row.started_at),
        "ended_at": iso(row.ended_at),
        "duration_s": seconds_between(row.started_at, row.ended_at),
    }


def parse_statuses(status: str | Sequence[str] | None) -> list[str]:
    if status is None:
        return []
    wanted = [status] if isinstance(status, str) else list(status)
    unknown = [x for x in wanted if x not in ALL_STATES]
    if unknown:
        raise ValueError(
            f"unknown job status {', '.join(map(repr, unknown))}; allowed: {', '.join(ALL_STATES)}"
        )
    return wanted


def known_queue(conn: Connection, queue: str) -> None:
    known = list(conn.execute(select(s.queues.c.name).order_by(s.queues.c.name)).scalars())
    if queue not in known:
        raise ValueError(f"unknown queue {queue!r}; known queues: {', '.join(known) or '(none)'}")


def list_jobs(
    conn: Connection,
    *,
    workflow_id: int | None = None,
    task_id: int | None = None,
    status: str | Sequence[str] | None = None,
    queue: str | None = None,
    pilot_id: int | None = None,
    name: str | None = None,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
) -> dict[str, Any]:
    """A page of jobs ordered by id, filtered by every criterion given.

    ``status`` is one state or several (any of them matches); ``name`` matches a substring of
    the job name. Unknown states or queues raise ``ValueError`` naming the allowed values.
    """
    check_page(limit, offset)
    where = []
    if workflow_id is not None:
        where.append(_J.workflow_id == workflow_id)
    if task_id is not None:
        where.append(_J.task_id == task_id)
    states = parse_statuses(status)
    if states:
        where.append(_J.status.in_(states))
    if queue is not None:
        known_queue(conn, queue)
        where.append(_J.queue == queue)
    if pilot_id is not None:
        where.append(_J.pilot_id == pilot_id)
    if name:
        where.append(_J.name.contains(name, autoescape=True))
    total = conn.execute(select(func.count()).select_from(s.jobs).where(*where)).scalar_one()
    rows = conn.execute(
        select(*JOB_COLUMNS)
        .select_from(s.jobs.join(s.tasks, _T.id == _J.task_id))
        .where(*where)
        .order_by(_J.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return paged("jobs", [job_dict(r) for r in rows], total, limit, offset)


def sample_list(text: str | None) -> list[list[float]]:
    if not text:
        return []
    try:
        samples = json.loads(text)
    except ValueError:
        return []  # a corrupt sample list must not hide the rest of the job
    return samples if isinstance(samples, list) else []


def get_job(conn: Connection, job_id: int) -> dict[str, Any]:
    """One job with its command, environment, output tail and attempt history (no payload bytes)."""
    row = conn.execute(
        select(*JOB_COLUMNS, _J.command, _J.env, _J.client, _J.stdout_tail)
        .select_from(s.jobs.join(s.tasks, _T.id == _J.task_id))
        .where(_J.id == job_id)
    ).first()
    if row is None:
        raise NotFound(f"no job {job_id}; list jobs with GET /jobs or `pandaflow jobs`")
    job = job_dict(row)
    job["error_description"] = error_info(row.error_code)[1]
    job["bps_status"] = EXTERNAL_NAMES[row.status][1]
    job["client"] = row.client
    job["command"] = row.command
    try:
        job["env"] = json.loads(row.env) if row.env else None
    except ValueError:
        job["env"] = None
    job["stdout_tail"] = row.stdout_tail
    result = conn.execute(
        select(s.job_results.c.is_exception).where(s.job_results.c.job_id == job_id)
    ).first()
    job["has_result"] = result is not None
    job["result_is_exception"] = bool(result.is_exception) if result is not None else False
    logged = set(conn.execute(select(s.job_logs.c.attempt).where(s.job_logs.c.job_id == job_id)).scalars())
    history = conn.execute(
        select(s.attempts, _P.name.label("pilot"))
        .select_from(s.attempts.outerjoin(s.pilots, _P.id == _A.pilot_id))
        .where(_A.job_id == job_id)
        .order_by(_A.attempt)
    ).all()
    job["attempts"] = [
        {
            "attempt": a.attempt,
            "status": a.status,
            "pilot_id": a.pilot_id,
            "pilot": a.pilot,
            "queue": a.queue,
            "error_code": a.error_code,
            "error_name": error_info(a.error_code)[0],
            "error_description": error_info(a.error_code)[1],
            "error_diag": a.error_diag,
            "exit_code": a.exit_code,
            "dispatched_at": iso(a.dispatched_at),
            "started_at": iso(a.started_at),
            "ended_at": iso(a.ended_at),
            "duration_s": seconds_between(a.started_at, a.ended_at),
            "max_rss_mb": a.max_rss_mb,
            "max_pss_mb": a.max_pss_mb,
            "memory_samples": sample_list(a.memory_samples),
            "memory_mb": a.memory_mb,
            "has_log": a.attempt in logged,
        }
        for a in history
    ]
    return job


def job_events(conn: Connection, job_id: int) -> dict[str, Any]:
    """The job's timeline: its submission (from the job row), then every change of its state in
    order (``job_events``, written with each change), with the pilot and the reason."""
    row = conn.execute(select(_J.id, _J.status, _J.created_at).where(_J.id == job_id)).first()
    if row is None:
        raise NotFound(f"no job {job_id}; list jobs with GET /jobs or `pandaflow jobs`")
    logged = conn.execute(
        select(s.job_events, _P.name.label("pilot"))
        .select_from(s.job_events.outerjoin(s.pilots, _P.id == s.job_events.c.pilot_id))
        .where(s.job_events.c.job_id == job_id)
        .order_by(s.job_events.c.id)
    ).all()
    first = logged[0].from_status if logged else row.status
    events = [{"at": iso(row.created_at), "attempt": 0, "from": None, "to": first, "event": "submit",
               "pilot_id": None, "pilot": None, "reason": ""}]  # fmt: skip
    events += [
        {"at": iso(e.at), "attempt": e.attempt, "from": e.from_status, "to": e.to_status, "event": e.event,
         "pilot_id": e.pilot_id, "pilot": e.pilot, "reason": e.reason}
        for e in logged
    ]  # fmt: skip
    return {"job_id": job_id, "status": row.status, "events": events}


def get_log(conn: Connection, job_id: int, attempt: int | None = None) -> dict[str, Any]:
    """The log of a job's latest attempt (or of ``attempt``).

    Returns ``{"job_id", "attempt", "source", "text"}``: ``source`` is ``log`` when the pilot
    uploaded a full log, ``tail`` when only the job's stdout tail is known (the latest attempt
    without an uploaded log), ``none`` when there is nothing. Bytes that are not UTF-8 are
    replaced, so a binary log cannot break the reader.
    """
    job = conn.execute(select(_J.attempt, _J.stdout_tail).where(_J.id == job_id)).first()
    if job is None:
        raise NotFound(f"no job {job_id}; list jobs with GET /jobs or `pandaflow jobs`")
    if attempt is None:
        attempt = job.attempt
    elif not 1 <= attempt <= job.attempt:
        have = f"attempts 1..{job.attempt}" if job.attempt else "no attempts yet"
        raise NotFound(f"job {job_id} has no attempt {attempt} ({have})")
    blob = conn.execute(
        select(s.job_logs.c.log).where(s.job_logs.c.job_id == job_id, s.job_logs.c.attempt == attempt)
    ).scalar()
    if blob is not None:
        return {
            "job_id": job_id,
            "attempt": attempt,
            "source": "log",
            "text": bytes(blob).decode("utf-8", "replace"),
        }
    # The stdout tail belongs to the latest attempt only; older attempts without a log have nothing.
    if attempt == job.attempt and job.stdout_tail:
        return {"job_id": job_id, "attempt": attempt, "source": "tail", "text": job.stdout_tail}
    return {"job_id": job_id, "attempt": attempt, "source": "none", "text": ""}


def error_summary(conn: Connection, workflow_id: int | None = None) -> dict[str, Any]:
    """Errors grouped by task and error code, most frequent first.

    ``jobs`` counts jobs whose latest attempt ended with the code (failed jobs, and jobs put back
    in the queue for a retry); ``attempts`` counts every attempt that ended with it, retried
    ones included. ``example_diag`` is one diagnostic message of the group.
    """
    job_where = [_J.error_code != 0]
    attempt_where = [_A.error_code != 0]
    if workflow_id is not None:
        job_where.append(_J.workflow_id == workflow_id)
        attempt_where.append(_J.workflow_id == workflow_id)
    groups: dict[tuple[int, int], dict[str, Any]] = {}

    def group(task_id: int, code: int) -> dict[str, Any]:
        return groups.setdefault((task_id, code), {"jobs": 0, "attempts": 0, "example_diag": ""})

    for task_id, code, n, diag in conn.execute(
        select(_J.task_id, _J.error_code, func.count(), func.max(_J.error_diag))
        .where(*job_where)
        .group_by(_J.task_id, _J.error_code)
    ).all():
        g = group(task_id, code)
        g["jobs"], g["example_diag"] = n, diag or ""
    for task_id, code, n, diag in conn.execute(
        select(_J.task_id, _A.error_code, func.count(), func.max(_A.error_diag))
        .select_from(s.attempts.join(s.jobs, _J.id == _A.job_id))
        .where(*attempt_where)
        .group_by(_J.task_id, _A.error_code)
    ).all():
        g = group(task_id, code)
        g["attempts"] = n
        g["example_diag"] = g["example_diag"] or diag or ""
    tasks = {}
    if groups:
        tasks = {
            r.id: r
            for r in conn.execute(
                select(_T.id, _T.name, _T.workflow_id).where(_T.id.in_({t for t, _ in groups}))
            ).all()
        }
    rows = []
    for (task_id, code), g in groups.items():
        name, description = error_info(code)
        rows.append(
            {
                "workflow_id": tasks[task_id].workflow_id,
                "task_id": task_id,
                "task": tasks[task_id].name,
                "error_code": code,
                "error_name": name,
                "description": description,
                **g,
            }
        )
    rows.sort(key=lambda r: (-r["jobs"], -r["attempts"], r["task_id"], r["error_code"]))
    return {"workflow_id": workflow_id, "errors": rows}
