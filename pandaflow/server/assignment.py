"""Assignment: hand ready jobs of a queue to a pilot (ready -> dispatched), highest priority
first, FIFO among equals."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from pandaflow.server import schema as s
from pandaflow.server.states import DISPATCHED, READY, transition

_J = s.jobs.c
_COLUMNS = (
    _J.id,
    _J.uid,
    _J.status,
    _J.attempt,
    _J.kind,
    _J.command,
    _J.env,
    _J.cores,
    _J.memory_mb,
    _J.walltime_s,
    _J.queue,
)


def assign(
    conn: Connection,
    *,
    pilot_id: int,
    queue: str,
    n: int,
    cores: int | None = None,
    memory_mb: int | None = None,
    now: float,
) -> list[dict[str, Any]]:
    """Dispatch up to ``n`` ready jobs of ``queue`` to the pilot and return their payloads.

    ``cores``/``memory_mb`` are what the pilot has free: larger jobs are left for another pilot.
    """
    query = (
        select(*_COLUMNS)
        .where(_J.status == READY, _J.queue == queue)
        .order_by(_J.priority.desc(), _J.id)
        .limit(n if cores is None and memory_mb is None else n * 4)
    )
    if conn.dialect.name == "postgresql":
        # Several server processes may share one database: each claims distinct rows.
        query = query.with_for_update(skip_locked=True)
    picked = []
    free_cores, free_mem = cores, memory_mb
    for row in conn.execute(query).mappings():
        if free_cores is not None:
            if row["cores"] > free_cores:
                continue
            free_cores -= row["cores"]
        if free_mem is not None and row["memory_mb"]:
            if row["memory_mb"] > free_mem:
                continue
            free_mem -= row["memory_mb"]
        picked.append(dict(row))
        if len(picked) >= n:
            break
    if not picked:
        return []
    updates, history = [], []
    for job in picked:
        values = transition(job, DISPATCHED, now, pilot_id=pilot_id)
        updates.append({"_id": job["id"], "_attempt": job["attempt"], **values})
        job["attempt"] = values["attempt"]
        history.append(
            {
                "job_id": job["id"],
                "attempt": values["attempt"],
                "pilot_id": pilot_id,
                "queue": queue,
                "status": DISPATCHED,
                "error_code": 0,
                "error_diag": "",
                "dispatched_at": now,
            }
        )
    conn.execute(
        update(s.jobs)
        .where(_J.id == bindparam("_id"), _J.attempt == bindparam("_attempt"), _J.status == READY)
        .values({k: bindparam(k) for k in updates[0] if not k.startswith("_")}),
        updates,
    )
    conn.execute(insert(s.attempts), history)
    buffers = {}
    python_ids = [j["id"] for j in picked if j["kind"] == "python"]
    if python_ids:
        buffers = dict(
            conn.execute(
                select(s.job_payloads.c.job_id, s.job_payloads.c.buffer).where(
                    s.job_payloads.c.job_id.in_(python_ids)
                )
            ).all()
        )
    return [
        {
            "id": j["id"],
            "attempt": j["attempt"],
            "kind": j["kind"],
            "buffer": buffers.get(j["id"]),
            "command": j["command"],
            "env": json.loads(j["env"]) if j["env"] else None,
            "cores": j["cores"],
            "memory_mb": j["memory_mb"],
            "walltime_s": j["walltime_s"],
        }
        for j in picked
    ]
