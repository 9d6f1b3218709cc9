"""What runs the jobs: pilots, queues with live counts and their harvesters' status, the
harvester's workers, and the server's summary."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, select

from pandaflow.server.front.queries.common import (
    _J,
    _P,
    DEFAULT_LIMIT,
    PILOT_STATES,
    check_page,
    iso,
    paged,
    zero_counts,
)
from pandaflow.server.jobs import pilots as pilot_registry
from pandaflow.server.jobs.states import (
    ACTIVE_STATES,
    DISPATCHED,
    READY,
    RESERVED,
    RUNNING,
)
from pandaflow.server.store import schema as s

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
    check_page(limit, offset)
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
    return paged("pilots", items, total, limit, offset)


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

    check_page(limit, offset)
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
    page = paged("workers", items, total, limit, offset)
    page["queues"] = harvester_status(conn, queue)
    return page


def summary(conn: Connection, now: float | None = None) -> dict[str, Any]:
    """The state of the whole system: jobs by state, workflows, pilots by state and the queues."""
    now = time.time() if now is None else now
    jobs = zero_counts()
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
