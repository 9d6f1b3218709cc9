"""Read-only queries over the job database, shared by the REST API and the CLI's ``--db`` mode.

Every function takes a SQLAlchemy :class:`~sqlalchemy.Connection` and returns plain, JSON-ready
dicts and lists: the REST API sends them as they are, so ``pandaflow --db ... --json`` and
``pandaflow --server ... --json`` print the same thing. Conventions:

* times are ISO-8601 UTC strings in keys ending ``_at`` (``None`` when unset), durations are
  seconds (float) in keys ending ``_s``;
* lists are pages ``{"<things>": [...], "total": N, "limit": L, "offset": O}``;
* job counts by state are maps over every state of :data:`~pandaflow.server.jobs.states.ALL_STATES`
  (zeros included, so consumers need no defaults);
* a missing object raises :class:`NotFound`, a bad filter value raises ``ValueError``; both
  messages say what was wrong and what is allowed.

The derived status of a workflow or task (:func:`derived_status`) is computed from the states
of its jobs; it is never stored, so it cannot disagree with them.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select

from pandaflow import errorcodes
from pandaflow.server.jobs import pilots as pilot_registry
from pandaflow.server.jobs.states import (
    ACTIVE_STATES,
    ALL_STATES,
    CANCELLED,
    DISPATCHED,
    EXTERNAL_NAMES,
    FINAL_STATES,
    FINISHED,
    READY,
    RESERVED,
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


def _duration(start: float | None, end: float | None) -> float | None:
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


def _check_page(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")


def _page(key: str, items: list[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    return {key: items, "total": total, "limit": limit, "offset": offset}


def _zero_counts() -> dict[str, int]:
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


def _counts_by(conn: Connection, column, ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """Job counts by state for each id of ``column`` (jobs.workflow_id or jobs.task_id)."""
    ids = list(ids)
    out: dict[int, dict[str, int]] = {i: _zero_counts() for i in ids}
    if not ids:
        return out
    rows = conn.execute(
        select(column, _J.status, func.count()).where(column.in_(ids)).group_by(column, _J.status)
    ).all()
    for key, status, n in rows:
        out[key][status] = n
    return out


def _with_counts(item: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    item["status"] = derived_status(counts)
    item["n_jobs"] = sum(counts.values())
    item["counts"] = counts
    return item


# ---------------------------------------------------------------- workflows and tasks


def _workflow(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "owner": row.owner,
        "client": row.client,
        "sites": _sites(row.sites),
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def _sites(text: str | None) -> dict[str, float] | None:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None  # a corrupt policy must not hide the workflow


def list_workflows(conn: Connection, limit: int = DEFAULT_LIMIT, offset: int = 0) -> dict[str, Any]:
    """A page of workflows, newest first, each with job counts by state and its derived status."""
    _check_page(limit, offset)
    total = conn.execute(select(func.count()).select_from(s.workflows)).scalar_one()
    rows = conn.execute(select(s.workflows).order_by(_W.id.desc()).limit(limit).offset(offset)).all()
    counts = _counts_by(conn, _J.workflow_id, (r.id for r in rows))
    items = [_with_counts(_workflow(r), counts[r.id]) for r in rows]
    return _page("workflows", items, total, limit, offset)


def require_workflow(conn: Connection, workflow_id: int) -> None:
    """Raise :class:`NotFound` unless the workflow exists."""
    if conn.execute(select(_W.id).where(_W.id == workflow_id)).first() is None:
        raise NotFound(
            f"no workflow {workflow_id}; list workflows with GET /workflows or `pandaflow workflows`"
        )


def get_workflow(conn: Connection, workflow_id: int) -> dict[str, Any]:
    """One workflow with its job counts, derived status and its first 1000 tasks (each with the same;
    :func:`list_tasks` pages through more)."""
    row = conn.execute(select(s.workflows).where(_W.id == workflow_id)).first()
    if row is None:
        raise NotFound(
            f"no workflow {workflow_id}; list workflows with GET /workflows or `pandaflow workflows`"
        )
    counts = _counts_by(conn, _J.workflow_id, [workflow_id])[workflow_id]
    item = _with_counts(_workflow(row), counts)
    item["tasks"] = list_tasks(conn, workflow_id=workflow_id, limit=MAX_LIMIT)["tasks"]
    return item


def list_tasks(
    conn: Connection, workflow_id: int | None = None, limit: int = DEFAULT_LIMIT, offset: int = 0
) -> dict[str, Any]:
    """A page of tasks ordered by id (optionally of one workflow), with counts and derived status."""
    _check_page(limit, offset)
    where = [] if workflow_id is None else [_T.workflow_id == workflow_id]
    total = conn.execute(select(func.count()).select_from(s.tasks).where(*where)).scalar_one()
    rows = conn.execute(select(s.tasks).where(*where).order_by(_T.id).limit(limit).offset(offset)).all()
    counts = _counts_by(conn, _J.task_id, (r.id for r in rows))
    items = [
        _with_counts(
            {
                "id": r.id,
                "workflow_id": r.workflow_id,
                "name": r.name,
                "priority": r.priority,
                "created_at": iso(r.created_at),
            },
            counts[r.id],
        )
        for r in rows
    ]
    return _page("tasks", items, total, limit, offset)


# ---------------------------------------------------------------- jobs

_JOB_COLUMNS = (
    _J.id, _J.uid, _J.name, _J.workflow_id, _J.task_id, _T.name.label("task"), _J.kind, _J.status, _J.queue,
    _J.priority, _J.cores, _J.memory_mb, _J.disk_mb, _J.walltime_s, _J.attempt, _J.max_attempts, _J.pilot_id,
    _J.worker_id, _J.error_code, _J.error_diag, _J.exit_code, _J.max_rss_mb, _J.max_pss_mb, _J.created_at,
    _J.updated_at, _J.dispatched_at, _J.started_at, _J.ended_at,
)  # fmt: skip


def _job(row: Any) -> dict[str, Any]:
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
        "duration_s": _duration(row.started_at, row.ended_at),
    }


def _statuses(status: str | Sequence[str] | None) -> list[str]:
    if status is None:
        return []
    wanted = [status] if isinstance(status, str) else list(status)
    unknown = [x for x in wanted if x not in ALL_STATES]
    if unknown:
        raise ValueError(
            f"unknown job status {', '.join(map(repr, unknown))}; allowed: {', '.join(ALL_STATES)}"
        )
    return wanted


def _known_queue(conn: Connection, queue: str) -> None:
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
    _check_page(limit, offset)
    where = []
    if workflow_id is not None:
        where.append(_J.workflow_id == workflow_id)
    if task_id is not None:
        where.append(_J.task_id == task_id)
    states = _statuses(status)
    if states:
        where.append(_J.status.in_(states))
    if queue is not None:
        _known_queue(conn, queue)
        where.append(_J.queue == queue)
    if pilot_id is not None:
        where.append(_J.pilot_id == pilot_id)
    if name:
        where.append(_J.name.contains(name, autoescape=True))
    total = conn.execute(select(func.count()).select_from(s.jobs).where(*where)).scalar_one()
    rows = conn.execute(
        select(*_JOB_COLUMNS)
        .select_from(s.jobs.join(s.tasks, _T.id == _J.task_id))
        .where(*where)
        .order_by(_J.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return _page("jobs", [_job(r) for r in rows], total, limit, offset)


def _samples(text: str | None) -> list[list[float]]:
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
        select(*_JOB_COLUMNS, _J.command, _J.env, _J.client, _J.stdout_tail)
        .select_from(s.jobs.join(s.tasks, _T.id == _J.task_id))
        .where(_J.id == job_id)
    ).first()
    if row is None:
        raise NotFound(f"no job {job_id}; list jobs with GET /jobs or `pandaflow jobs`")
    job = _job(row)
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
            "duration_s": _duration(a.started_at, a.ended_at),
            "max_rss_mb": a.max_rss_mb,
            "max_pss_mb": a.max_pss_mb,
            "memory_samples": _samples(a.memory_samples),
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


# ---------------------------------------------------------------- pilots, queues, summary


def list_pilots(
    conn: Connection,
    status: str | None = None,
    queue: str | None = None,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    now: float | None = None,
) -> dict[str, Any]:
    """A page of pilots, newest first, each with the number of jobs it holds now."""
    _check_page(limit, offset)
    now = time.time() if now is None else now
    where = []
    if status is not None:
        if status not in PILOT_STATES:
            raise ValueError(f"unknown pilot status {status!r}; allowed: {', '.join(PILOT_STATES)}")
        where.append(_P.status == status)
    if queue is not None:
        where.append(_P.queue == queue)
    total = conn.execute(select(func.count()).select_from(s.pilots).where(*where)).scalar_one()
    rows = conn.execute(
        select(s.pilots).where(*where).order_by(_P.id.desc()).limit(limit).offset(offset)
    ).all()
    holding: dict[int, int] = {}
    if rows:
        holding = dict(
            conn.execute(
                select(_J.pilot_id, func.count())
                .where(_J.pilot_id.in_([r.id for r in rows]), _J.status.in_(list(ACTIVE_STATES)))
                .group_by(_J.pilot_id)
            ).all()
        )
    items = [
        {
            "id": r.id,
            "name": r.name,
            "queue": r.queue,
            "status": r.status,
            "host": r.host,
            "pid": r.pid,
            "cores": r.cores,
            "memory_mb": r.memory_mb,
            "workdir": r.workdir,
            "version": r.version,
            "jobs_held": holding.get(r.id, 0),
            "n_done": r.n_done,
            "n_failed": r.n_failed,
            "registered_at": iso(r.registered_at),
            "last_heartbeat_at": iso(r.last_heartbeat),
            "heartbeat_age_s": round(max(0.0, now - r.last_heartbeat), 3) if r.status == "active" else None,
            "ended_at": iso(r.ended_at),
        }
        for r in rows
    ]
    return _page("pilots", items, total, limit, offset)


def list_queues(conn: Connection) -> dict[str, Any]:
    """Every queue: its description (as loaded by the server), live counts of jobs and pilots, and
    what each harvester serving it saw and did in its last cycle (``harvesters``, see
    :func:`harvester_status`; empty for queues no harvester serves)."""
    counted = (READY, RESERVED, DISPATCHED, RUNNING)
    jobs: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(counted, 0))
    for queue, status, n in conn.execute(
        select(_J.queue, _J.status, func.count()).where(_J.status.in_(counted)).group_by(_J.queue, _J.status)
    ).all():
        jobs[queue][status] = n
    active = dict(
        conn.execute(
            select(_P.queue, func.count()).where(_P.status == pilot_registry.ACTIVE).group_by(_P.queue)
        ).all()
    )
    harvesters: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in harvester_status(conn):
        harvesters[item["queue"]].append(item)
    items = []
    for row in conn.execute(select(s.queues).order_by(s.queues.c.name)).all():
        try:
            description = json.loads(row.description)
        except ValueError:
            description = {}
        counts = jobs[row.name]
        items.append(
            {
                **description,
                "name": row.name,
                "ready_jobs": counts[READY],
                "reserved_jobs": counts[RESERVED],
                "dispatched_jobs": counts[DISPATCHED],
                "running_jobs": counts[RUNNING],
                "active_pilots": active.get(row.name, 0),
                "updated_at": iso(row.updated_at),
                "harvesters": harvesters.get(row.name, []),
            }
        )
    return {"queues": items}


# ---------------------------------------------------------------- harvester: workers and queue status

_WK = s.workers.c
_HQ = s.harvester_queues.c


def harvester_status(conn: Connection, queue: str | None = None) -> list[dict[str, Any]]:
    """What each harvester saw and did on each queue in its last cycle (the ``harvester_queues``
    table), by queue then harvester: demand (``ready_jobs``, ``ready_cores``, ``unfit_jobs``),
    supply (``idle_slots``, ``queued_workers``, ``running_workers``), the last ``action`` and why,
    and the last provider ``error`` (``""`` once it works again; ``error_at`` keeps when it was)."""
    query = select(s.harvester_queues).order_by(_HQ.queue, _HQ.harvester)
    if queue is not None:
        query = query.where(_HQ.queue == queue)
    return [
        {
            "queue": r.queue,
            "harvester": r.harvester,
            "cycle_at": iso(r.cycle_at),
            "ready_jobs": r.ready_jobs,
            "ready_cores": r.ready_cores,
            "unfit_jobs": r.unfit_jobs,
            "idle_slots": r.idle_slots,
            "queued_workers": r.queued_workers,
            "running_workers": r.running_workers,
            "action": r.action,
            "error": r.error,
            "error_at": iso(r.error_at),
        }
        for r in conn.execute(query).all()
    ]


def list_workers(
    conn: Connection,
    queue: str | None = None,
    state: str | Sequence[str] | None = None,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    now: float | None = None,
) -> dict[str, Any]:
    """A page of the pilot workers harvesters submitted, newest first, and under ``queues`` the
    harvesters' status of the queue asked for (of every queue without a ``queue`` filter).

    ``state`` is one worker state or several (see :mod:`pandaflow.harvester.workers`); an unknown
    state or queue raises ``ValueError`` naming the allowed values.
    """
    from pandaflow.server.store.schema import WORKER_STATES as STATES

    _check_page(limit, offset)
    now = time.time() if now is None else now
    where = []
    if queue is not None:
        known = set(conn.execute(select(s.queues.c.name)).scalars())
        # A queue dropped from the configuration may still have workers worth looking at.
        if queue not in known and conn.execute(select(_WK.id).where(_WK.queue == queue)).first() is None:
            raise ValueError(f"unknown queue {queue!r}; known queues: {', '.join(sorted(known)) or '(none)'}")
        where.append(_WK.queue == queue)
    if state is not None:
        states = [state] if isinstance(state, str) else list(state)
        unknown = [x for x in states if x not in STATES]
        if unknown or not states:
            shown = ", ".join(map(repr, unknown)) or "(none)"
            raise ValueError(f"unknown worker state {shown}; allowed: {', '.join(STATES)}")
        where.append(_WK.state.in_(states))
    total = conn.execute(select(func.count()).select_from(s.workers).where(*where)).scalar_one()
    rows = conn.execute(
        select(s.workers, _P.name.label("pilot"))
        .select_from(s.workers.outerjoin(s.pilots, _P.id == _WK.pilot_id))
        .where(*where)
        .order_by(_WK.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    items = [
        {
            "id": r.id,
            "queue": r.queue,
            "state": r.state,
            "batch_state": r.batch_state,
            "provider": r.provider,
            "provider_job_id": r.provider_job_id,
            "harvester": r.harvester,
            "cores": r.cores,
            "memory_mb": r.memory_mb,
            "pilot_id": r.pilot_id,
            "pilot": r.pilot,
            "error": r.error,
            "submitted_at": iso(r.submitted_at),
            "started_at": iso(r.started_at),
            "ended_at": iso(r.ended_at),
            "age_s": round(max(0.0, (r.ended_at or now) - r.submitted_at), 3),
        }
        for r in rows
    ]
    page = _page("workers", items, total, limit, offset)
    page["queues"] = harvester_status(conn, queue)
    return page


def summary(conn: Connection, now: float | None = None) -> dict[str, Any]:
    """The state of the whole system: jobs by state, workflows, pilots by state and the queues."""
    now = time.time() if now is None else now
    jobs = _zero_counts()
    for status, n in conn.execute(select(_J.status, func.count()).group_by(_J.status)).all():
        jobs[status] = n
    pilot_counts = dict.fromkeys(PILOT_STATES, 0)
    for status, n in conn.execute(select(_P.status, func.count()).group_by(_P.status)).all():
        pilot_counts[status] = n
    return {
        "at": iso(now),
        "workflows": conn.execute(select(func.count()).select_from(s.workflows)).scalar_one(),
        "n_jobs": sum(jobs.values()),
        "jobs": jobs,
        "pilots": pilot_counts,
        "queues": list_queues(conn)["queues"],
    }


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


# ---------------------------------------------------------------- bps report

#: Columns of a ``bps report`` table, in its order: the WmsStates names every pandaflow state maps
#: to (states.EXTERNAL_NAMES), then EXPECTED (the jobs of the label).
BPS_COLUMNS = ("UNREADY", "READY", "PENDING", "RUNNING", "DELETED", "HELD", "SUCCEEDED", "FAILED", "PRUNED")
BPS_RUN_STATES = {  # derived workflow status -> the WmsStates name bps shows for the run
    EMPTY: "UNKNOWN",
    RUNNING: "RUNNING",
    FINISHED: "SUCCEEDED",
    SUBFINISHED: "FAILED",
    "failed": "FAILED",
    CANCELLED: "DELETED",
}


def _bps_counts(counts: dict[str, int]) -> dict[str, int]:
    out = dict.fromkeys(BPS_COLUMNS, 0)
    for state, n in counts.items():
        out[EXTERNAL_NAMES[state][1]] += n
    out["EXPECTED"] = sum(counts.values())
    return out


def report(conn: Connection, workflow_id: int) -> dict[str, Any]:
    """A workflow's jobs by task (pipeline label) and BPS state, the data of ``bps report``.

    ``total`` and each label's ``counts`` map every column of :data:`BPS_COLUMNS` and
    ``EXPECTED`` (the jobs of the label) to a number; labels come in task order (the order they
    were first submitted, i.e. pipeline order for a DAG file). ``status`` is the workflow's
    derived status, ``bps_state`` its WmsStates name, ``percent_succeeded`` the integer
    percentage of jobs that succeeded (None without jobs). One grouped count over the
    workflow's jobs, so a million-job workflow is still one indexed scan.
    """
    row = conn.execute(select(s.workflows).where(_W.id == workflow_id)).first()
    if row is None:
        raise NotFound(
            f"no workflow {workflow_id}; list workflows with GET /workflows or `pandaflow workflows`"
        )
    tasks = conn.execute(select(_T.id, _T.name).where(_T.workflow_id == workflow_id).order_by(_T.id)).all()
    by_task: dict[int, dict[str, int]] = {t.id: _zero_counts() for t in tasks}
    for task_id, status, n in conn.execute(
        select(_J.task_id, _J.status, func.count())
        .where(_J.workflow_id == workflow_id)
        .group_by(_J.task_id, _J.status)
    ).all():
        by_task.setdefault(task_id, _zero_counts())[status] = n
    total = _zero_counts()
    for counts in by_task.values():
        for state, n in counts.items():
            total[state] += n
    status = derived_status(total)
    n_jobs = sum(total.values())
    return {
        **_workflow(row),
        "status": status,
        "bps_state": BPS_RUN_STATES[status],
        "n_jobs": n_jobs,
        "percent_succeeded": int(100 * total[FINISHED] / n_jobs) if n_jobs else None,
        "columns": [*BPS_COLUMNS, "EXPECTED"],
        "total": _bps_counts(total),
        "labels": [{"label": t.name, "task_id": t.id, "counts": _bps_counts(by_task[t.id])} for t in tasks],
    }
