"""Workflows and their tasks, and the ``bps report`` of a workflow."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, func, select

from pandaflow.server.front.queries.common import (
    _J,
    _T,
    _W,
    DEFAULT_LIMIT,
    EMPTY,
    MAX_LIMIT,
    SUBFINISHED,
    NotFound,
    check_page,
    counts_by,
    derived_status,
    iso,
    paged,
    with_counts,
    zero_counts,
)
from pandaflow.server.jobs.states import (
    CANCELLED,
    EXTERNAL_NAMES,
    FINISHED,
    RUNNING,
)
from pandaflow.server.store import schema as s

# ---------------------------------------------------------------- workflows and tasks


def workflow_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "owner": row.owner,
        "client": row.client,
        "sites": site_shares(row.sites),
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def site_shares(text: str | None) -> dict[str, float] | None:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None  # a corrupt policy must not hide the workflow


def list_workflows(conn: Connection, limit: int = DEFAULT_LIMIT, offset: int = 0) -> dict[str, Any]:
    """A page of workflows, newest first, each with job counts by state and its derived status."""
    check_page(limit, offset)
    total = conn.execute(select(func.count()).select_from(s.workflows)).scalar_one()
    rows = conn.execute(select(s.workflows).order_by(_W.id.desc()).limit(limit).offset(offset)).all()
    counts = counts_by(conn, _J.workflow_id, (r.id for r in rows))
    items = [with_counts(workflow_dict(r), counts[r.id]) for r in rows]
    return paged("workflows", items, total, limit, offset)


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
    counts = counts_by(conn, _J.workflow_id, [workflow_id])[workflow_id]
    item = with_counts(workflow_dict(row), counts)
    item["tasks"] = list_tasks(conn, workflow_id=workflow_id, limit=MAX_LIMIT)["tasks"]
    return item


def list_tasks(
    conn: Connection, workflow_id: int | None = None, limit: int = DEFAULT_LIMIT, offset: int = 0
) -> dict[str, Any]:
    """A page of tasks ordered by id (optionally of one workflow), with counts and derived status."""
    check_page(limit, offset)
    where = [] if workflow_id is None else [_T.workflow_id == workflow_id]
    total = conn.execute(select(func.count()).select_from(s.tasks).where(*where)).scalar_one()
    rows = conn.execute(select(s.tasks).where(*where).order_by(_T.id).limit(limit).offset(offset)).all()
    counts = counts_by(conn, _J.task_id, (r.id for r in rows))
    items = [
        with_counts(
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
    return paged("tasks", items, total, limit, offset)


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


def bps_counts(counts: dict[str, int]) -> dict[str, int]:
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
    by_task: dict[int, dict[str, int]] = {t.id: zero_counts() for t in tasks}
    for task_id, status, n in conn.execute(
        select(_J.task_id, _J.status, func.count())
        .where(_J.workflow_id == workflow_id)
        .group_by(_J.task_id, _J.status)
    ).all():
        by_task.setdefault(task_id, zero_counts())[status] = n
    total = zero_counts()
    for counts in by_task.values():
        for state, n in counts.items():
            total[state] += n
    status = derived_status(total)
    n_jobs = sum(total.values())
    return {
        **workflow_dict(row),
        "status": status,
        "bps_state": BPS_RUN_STATES[status],
        "n_jobs": n_jobs,
        "percent_succeeded": int(100 * total[FINISHED] / n_jobs) if n_jobs else None,
        "columns": [*BPS_COLUMNS, "EXPECTED"],
        "total": bps_counts(total),
        "labels": [{"label": t.name, "task_id": t.id, "counts": bps_counts(by_task[t.id])} for t in tasks],
    }
