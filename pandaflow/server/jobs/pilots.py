"""The pilot registry: registration, heartbeats and departures."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, bindparam, case, func, insert, select, update

from pandaflow.server.store import schema as s

_P = s.pilots.c
ACTIVE = "active"
LOST = "lost"
EXITED = "exited"


def register(conn: Connection, info: dict[str, Any], now: float) -> int:
    """Record a pilot (or re-activate one that re-registers after a server restart)."""
    name = str(info["pilot"])
    values = {
        "queue": str(info.get("queue") or ""),
        "host": str(info.get("host") or ""),
        "pid": info.get("pid"),
        "cores": int(info.get("cores") or 1),
        "memory_mb": info.get("memory_mb"),
        "workdir": str(info.get("workdir") or ""),
        "version": str(info.get("version") or ""),
        "status": ACTIVE,
        "last_heartbeat": now,
        "ended_at": None,
    }
    pid = conn.execute(select(_P.id).where(_P.name == name)).scalar()
    if pid is not None:
        conn.execute(update(s.pilots).where(_P.id == pid).values(values))
    else:
        inserted = conn.execute(insert(s.pilots).values(name=name, registered_at=now, **values))
        pid = inserted.inserted_primary_key[0]
    worker_id = info.get("worker_id")
    if isinstance(worker_id, int) and not isinstance(worker_id, bool):
        _attach_worker(conn, worker_id, pid, now)
    return pid


def _attach_worker(conn: Connection, worker_id: int, pilot_id: int, now: float) -> None:
    """Link the harvester's worker to the pilot that came up in it: the worker is running (even one
    given up as missing: it plainly is not), unless the harvester already cancelled it."""
    w = s.workers.c
    conn.execute(
        update(s.workers)
        .where(w.id == worker_id)
        .values(
            pilot_id=pilot_id,
            state=case((w.state.in_(("submitted", "missing")), "running"), else_=w.state),
            started_at=func.coalesce(w.started_at, now),
            ended_at=case((w.state == "missing", None), else_=w.ended_at),
            updated_at=now,
        )
    )


def states(conn: Connection, pilot_ids: Iterable[int]) -> dict[int, str]:
    """``{pilot id: status}`` of the given pilots (ids no pilot has are left out)."""
    ids = list(pilot_ids)
    if not ids:
        return {}
    return dict(conn.execute(select(_P.id, _P.status).where(_P.id.in_(ids))).all())


def lookup(conn: Connection, name: str) -> tuple[int, str, str] | None:
    """(id, queue, status) of the pilot called ``name``."""
    row = conn.execute(select(_P.id, _P.queue, _P.status).where(_P.name == name)).first()
    return (row.id, row.queue, row.status) if row else None


def heartbeat(conn: Connection, pilot_ids: list[int], now: float) -> None:
    """Refresh the heartbeat time of the given pilots (one statement for all)."""
    if pilot_ids:
        conn.execute(
            update(s.pilots).where(_P.id == bindparam("_id")).values(last_heartbeat=now, status=ACTIVE),
            [{"_id": p} for p in pilot_ids],
        )


def depart(conn: Connection, pilot_id: int, now: float, status: str = EXITED) -> None:
    conn.execute(update(s.pilots).where(_P.id == pilot_id).values(status=status, ended_at=now))


def silent_since(conn: Connection, deadline: float) -> list[int]:
    """Active pilots whose last heartbeat is older than ``deadline``."""
    return list(
        conn.execute(select(_P.id).where(_P.status == ACTIVE, _P.last_heartbeat < deadline)).scalars()
    )


def count_done(conn: Connection, counts: dict[int, tuple[int, int]]) -> None:
    """Add finished/failed job counts per pilot."""
    if counts:
        conn.execute(
            update(s.pilots)
            .where(_P.id == bindparam("_id"))
            .values(n_done=_P.n_done + bindparam("d"), n_failed=_P.n_failed + bindparam("f")),
            [{"_id": p, "d": d, "f": f} for p, (d, f) in counts.items()],
        )
