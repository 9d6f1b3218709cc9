"""Assignment: hand ready jobs of a queue to a pilot (ready -> dispatched), highest priority
first, FIFO among equals."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

from sqlalchemy import Connection

from pandaflow import protocol
from pandaflow.server.jobs import states
from pandaflow.server.store.statements import Sql, marks

_UNLIMITED = 1 << 40
_SELECT_READY = (
    "SELECT id, status, attempt, kind, command, env, cores, memory_mb, walltime_s, queue FROM jobs"
    " WHERE status='ready' AND queue=? AND cores<=? AND (memory_mb IS NULL OR memory_mb<=?)"
    " ORDER BY priority DESC, id LIMIT ?"
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
) -> list[protocol.Payload]:
    """Dispatch up to ``n`` ready jobs of ``queue`` to the pilot and return their payloads.

    ``cores``/``memory_mb`` describe the pilot: jobs larger than it are left for another pilot.
    ``payload_cache`` holds function buffers of recent submissions, saving a read per job.
    """
    sql = Sql(conn)
    # Several server processes may share one PostgreSQL database: each claims distinct rows.
    lock = " FOR UPDATE SKIP LOCKED" if sql.pg else ""
    picked = sql.maps(_SELECT_READY + lock, (queue, cores or _UNLIMITED, memory_mb or _UNLIMITED, n))
    if not picked:
        return []
    moved = states.apply(conn, "dispatch", picked, now, pilot_id=pilot_id).moved
    return to_wire(sql, moved, payload_cache)


def prefetched(
    conn: Connection,
    *,
    queue: str,
    other_than: int,
    n: int,
    cores: int | None,
    memory_mb: int | None,
    before: float,
) -> list[dict[str, Any]]:
    """Jobs of ``queue`` dispatched before ``before`` to pilots other than ``other_than`` and not
    reported started (held in prefetch), that a pilot of ``cores``/``memory_mb`` could run; the
    most recently dispatched first (their pilot would run them last)."""
    return Sql(conn).maps(
        "SELECT id, attempt, pilot_id FROM jobs WHERE status='dispatched' AND queue=? AND pilot_id<>?"
        " AND dispatched_at<? AND cores<=? AND (memory_mb IS NULL OR memory_mb<=?)"
        " ORDER BY dispatched_at DESC, id DESC LIMIT ?",
        (queue, other_than, before, cores or _UNLIMITED, memory_mb or _UNLIMITED, n),
    )


def to_wire(
    sql: Sql, picked: list[dict[str, Any]], payload_cache: MutableMapping[int, bytes] | None = None
) -> list[protocol.Payload]:
    """The payloads of dispatched jobs (the ``jobs`` message), with their function buffers (from
    ``payload_cache`` where recent submissions left them, else read in one query)."""
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
        query = f"SELECT job_id, buffer FROM job_payloads WHERE job_id IN ({marks(len(missing))})"
        buffers.update((job_id, bytes(buf)) for job_id, buf in sql.rows(query, missing))
    return [
        protocol.Payload(
            job_id=j["id"],
            attempt=j["attempt"],
            kind=j["kind"],
            buffer=buffers.get(j["id"]),
            command=j["command"],
            env=json.loads(j["env"]) if j["env"] else None,
            cores=j["cores"],
            memory_mb=j["memory_mb"],
            walltime_s=j["walltime_s"],
        )
        for j in picked
    ]
