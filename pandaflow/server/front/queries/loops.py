"""Loops (:mod:`pandaflow.loops`): hyperparameter searches and active-learning searches, with
their trials, progress and best point so far."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, func, select

from pandaflow.server.front.queries.common import DEFAULT_LIMIT, NotFound, check_page, iso, paged
from pandaflow.server.jobs.loops import TRIAL_STATES
from pandaflow.server.store import schema as s

_L = s.loops.c
_R = s.trials.c
_W = s.workflows.c


def _loop_row(conn: Connection, name: str) -> Any:
    row = conn.execute(select(s.loops).where(_L.name == name)).first()
    if row is None:
        raise NotFound(f"no loop {name!r}; list loops with GET /loops or `pandaflow loops`")
    return row


def _trial_counts(conn: Connection, loop_ids: list[int]) -> dict[int, dict[str, int]]:
    out = {i: dict.fromkeys(TRIAL_STATES, 0) for i in loop_ids}
    if loop_ids:
        rows = conn.execute(
            select(_R.loop_id, _R.state, func.count())
            .where(_R.loop_id.in_(loop_ids))
            .group_by(_R.loop_id, _R.state)
        ).all()
        for loop_id, state, n in rows:
            out[loop_id][state] = n
    return out


def trial_dict(row: Any) -> dict[str, Any]:
    return {
        "number": row.number,
        "iteration": row.iteration,
        "params": json.loads(row.params),
        "state": row.state,
        "value": row.value,
        "error": row.error,
        "attempts": row.attempts,
        "job_uid": row.job_uid,
        "created_at": iso(row.created_at),
        "ended_at": iso(row.ended_at),
    }


def _best(conn: Connection, row: Any) -> dict[str, Any] | None:
    if row.direction not in ("minimize", "maximize"):
        return None
    order = _R.value.asc() if row.direction == "minimize" else _R.value.desc()
    best = conn.execute(
        select(s.trials)
        .where(_R.loop_id == row.id, _R.state == "complete", _R.value.is_not(None))
        .order_by(order, _R.number)
        .limit(1)
    ).first()
    return trial_dict(best) if best is not None else None


def loop_dict(conn: Connection, row: Any, counts: dict[str, int]) -> dict[str, Any]:
    done = counts["complete"] + counts["failed"]
    workflow_id = conn.execute(select(func.max(_W.id)).where(_W.name == row.workflow)).scalar()
    return {
        "name": row.name,
        "kind": row.kind,
        "owner": row.owner,
        "status": row.status,
        "message": row.message,
        "direction": row.direction or None,
        "budget": row.budget,
        "done": done,
        "progress": round(min(1.0, done / row.budget), 4) if row.budget else 1.0,
        "counts": counts,
        "best": _best(conn, row),
        "workflow": row.workflow,
        "workflow_id": workflow_id,
        "config": json.loads(row.config),
        "summary": json.loads(row.summary) if row.summary else None,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "ended_at": iso(row.ended_at),
    }


def list_loops(conn: Connection, limit: int = DEFAULT_LIMIT, offset: int = 0) -> dict[str, Any]:
    """A page of loops, newest first, each with its trial counts, progress and best trial."""
    check_page(limit, offset)
    total = conn.execute(select(func.count()).select_from(s.loops)).scalar_one()
    rows = conn.execute(select(s.loops).order_by(_L.id.desc()).limit(limit).offset(offset)).all()
    counts = _trial_counts(conn, [r.id for r in rows])
    return paged("loops", [loop_dict(conn, r, counts[r.id]) for r in rows], total, limit, offset)


def get_loop(conn: Connection, name: str) -> dict[str, Any]:
    """One loop: its settings, trial counts, progress, best trial and the driver's summary."""
    row = _loop_row(conn, name)
    return loop_dict(conn, row, _trial_counts(conn, [row.id])[row.id])


def list_trials(
    conn: Connection,
    name: str,
    state: str | None = None,
    order: str = "number",
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
) -> dict[str, Any]:
    """A page of a loop's trials, by number (``order="number"``) or best first (``order="value"``,
    in the loop's direction; trials without a value last)."""
    check_page(limit, offset)
    row = _loop_row(conn, name)
    where = [_R.loop_id == row.id]
    if state is not None:
        if state not in TRIAL_STATES:
            raise ValueError(f"state must be one of {', '.join(TRIAL_STATES)}, got {state!r}")
        where.append(_R.state == state)
    if order == "number":
        ordering = [_R.number]
    elif order == "value":
        value = _R.value.desc() if row.direction == "maximize" else _R.value.asc()
        ordering = [_R.value.is_(None), value, _R.number]
    else:
        raise ValueError(f"order must be 'number' or 'value', got {order!r}")
    total = conn.execute(select(func.count()).select_from(s.trials).where(*where)).scalar_one()
    rows = conn.execute(select(s.trials).where(*where).order_by(*ordering).limit(limit).offset(offset)).all()
    return paged("trials", [trial_dict(r) for r in rows], total, limit, offset)
