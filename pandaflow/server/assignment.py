"""Assignment: hand ready jobs of a queue to a pilot (ready -> dispatched), highest priority
first, FIFO among equals."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

from sqlalchemy import Connection, bindparam, select

from pandaflow.server import schema as s
from pandaflow.server.statements import ids_param, update_jobs
from pandaflow.server.states import DISPATCHED, READY, transition

_J = s.jobs.c
_UNLIMITED = 1 << 40
_SELECT_READY = (
    select(
        _J.id,
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
    .where(
        _J.status == READY,
        _J.queue == bindparam("queue"),
        _J.cores <= bindparam("cores"),
        _J.memory_mb.is_(None) | (_J.memory_mb <= bindparam("memory_mb")),
    )
    .order_by(_J.priority.desc(), _J.id)
    .limit(bindparam("n"))
)
_SELECT_READY_LOCKED = _SELECT_READY.with_for_update(skip_locked=True)
_SELECT_PAYLOADS = select(s.job_payloads.c.job_id, s.job_payloads.c.buffer).where(
    s.job_payloads.c.job_id.in_(ids_param())
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
    payload_cache: MutableMapping[int, bytes] | None = None,
) -> list[dict[str, Any]]:
    """Dispatch up to ``n`` ready jobs of ``queue`` to the pilot and return their payloads.

    ``cores``/``memory_mb`` describe the pilot: jobs larger than it are left for another pilot.
    ``payload_cache`` holds function buffers of recent submissions, saving a read per job.
    """
    # Several server processes may share one PostgreSQL database: each claims distinct rows.
    query = _SELECT_READY_LOCKED if conn.dialect.name == "postgresql" else _SELECT_READY
    params = {"queue": queue, "cores": cores or _UNLIMITED, "memory_mb": memory_mb or _UNLIMITED, "n": n}
    picked = [dict(row) for row in conn.execute(query, params).mappings()]
    if not picked:
        return []
    updates = []
    for job in picked:
        values = transition(job, DISPATCHED, now, pilot_id=pilot_id)
        updates.append({"_id": job["id"], "_attempt": job["attempt"], **values})
        job["attempt"] = values["attempt"]
    columns = tuple(k for k in updates[0] if not k.startswith("_"))
    conn.execute(update_jobs(columns, guard_status=READY), updates)
    buffers: dict[int, bytes] = {}
    missing = []
    for j in picked:
        if j["kind"] == "python":
            buffer = payload_cache.pop(j["id"], None) if payload_cache is not None else None
            if buffer is None:
                missing.append(j["id"])
            else:
                buffers[j["id"]] = buffer
    if missing:
        buffers.update(conn.execute(_SELECT_PAYLOADS, {"ids": missing}).all())
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
