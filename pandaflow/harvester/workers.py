"""Workers: one row per pilot job the harvester hands to a provider, and the states it goes through.

::

    submitted --> running --> finished | failed | cancelled | missing
        \\------------------> finished | failed | cancelled | missing

``submitted``  the row exists and the provider has (or is being asked to take) the job; it may wait
               in a batch queue
``running``    the provider runs it, or its pilot registered (``pilot_id`` is then set)
``finished``   it ended normally (the pilot exited, the batch walltime ran out) after a pilot came up
``failed``     the provider refused it, or it failed after its pilot came up (``error`` says why)
``cancelled``  the harvester (or someone) cancelled it after its pilot came up
``missing``    it ended, or ran too long, without its pilot ever registering: the pilot died on
               the way (bad environment, no route to the server); ``error`` holds what is known

A pilot that registers late revives a ``missing`` worker (``pandaflow.server.jobs.pilots``). Every
state change here is conditional on the state it leaves, so the harvester and the dispatcher
(which links pilots to workers) cannot undo each other's writes. A worker that ends gives the
jobs still reserved for it (push queues, :mod:`pandaflow.server.dispatch.push`) back to its queue, in the
same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from pandaflow.server.dispatch import push
from pandaflow.server.store import schema as s

SUBMITTED = "submitted"
RUNNING = "running"
FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"
MISSING = "missing"

LIVE_STATES = (SUBMITTED, RUNNING)
STATES = s.WORKER_STATES  # SUBMITTED, RUNNING, FINISHED, FAILED, CANCELLED, MISSING

# (from) -> the states it may go to; terminal states go nowhere (but see the late pilot above).
TRANSITIONS: dict[str, frozenset[str]] = {
    SUBMITTED: frozenset({RUNNING, FINISHED, FAILED, CANCELLED, MISSING}),
    RUNNING: frozenset({FINISHED, FAILED, CANCELLED, MISSING}),
    FINISHED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
    MISSING: frozenset(),
}
_W = s.workers.c
_HQ = s.harvester_queues.c


@dataclass(frozen=True, slots=True)
class Worker:
    """A live worker as the harvester sees it."""

    id: int
    queue: str
    harvester: str
    provider: str
    provider_job_id: str | None
    provider_data: str | None
    state: str
    batch_state: str | None
    cores: int
    pilot_id: int | None
    submitted_at: float
    started_at: float | None


def create(
    conn: Connection,
    *,
    queue: str,
    harvester: str,
    provider: str,
    cores: int,
    memory_mb: int | None,
    now: float,
) -> int:
    """A new ``submitted`` worker, before the provider is asked: its id goes on the pilot's command line."""
    return conn.execute(
        insert(s.workers).values(
            queue=queue,
            harvester=harvester,
            provider=provider,
            state=SUBMITTED,
            cores=cores,
            memory_mb=memory_mb,
            error="",
            submitted_at=now,
            updated_at=now,
        )
    ).inserted_primary_key[0]


def accepted(conn: Connection, worker_id: int, job_id: str, provider_data: str | None, now: float) -> None:
    """The provider took the job: remember its id (and what a restarted harvester needs)."""
    conn.execute(
        update(s.workers)
        .where(_W.id == worker_id)
        .values(provider_job_id=job_id, provider_data=provider_data, updated_at=now)
    )


def move(
    conn: Connection,
    worker_id: int,
    to: str,
    now: float,
    *,
    batch_state: str | None = None,
    error: str | None = None,
) -> bool:
    """Move a worker to ``to`` if its current state allows it; False when it did not move."""
    sources = [state for state, targets in TRANSITIONS.items() if to in targets]
    if not sources:
        raise ValueError(f"no worker state leads to {to!r}")
    values: dict[str, Any] = {"state": to, "updated_at": now}
    if to == RUNNING:
        values["started_at"] = func.coalesce(_W.started_at, now)
    elif to not in LIVE_STATES:
        values["ended_at"] = now
    if batch_state is not None:
        values["batch_state"] = batch_state
    if error is not None:
        values["error"] = error[-4000:]
    where = [_W.id == worker_id, _W.state.in_(sources)]
    if to == MISSING:
        where.append(_W.pilot_id.is_(None))  # a pilot registered meanwhile: not missing after all
    result = conn.execute(update(s.workers).where(*where).values(values))
    moved = result.rowcount > 0
    if moved and to not in LIVE_STATES:
        # Its pilot will not take them any more: the jobs go to another worker.
        push.release(conn, [worker_id], now)
    return moved


def note(conn: Connection, worker_id: int, now: float, *, batch_state: str) -> None:
    """Record the provider's latest word on a worker whose state does not change."""
    conn.execute(
        update(s.workers)
        .where(_W.id == worker_id, _W.batch_state.is_distinct_from(batch_state))
        .values(batch_state=batch_state, updated_at=now)
    )


def live(conn: Connection, queue: str | None = None, harvester: str | None = None) -> list[Worker]:
    """Workers still submitted or running (of one queue, of one harvester), oldest first."""
    where = [_W.state.in_(LIVE_STATES)]
    if queue is not None:
        where.append(_W.queue == queue)
    if harvester is not None:
        where.append(_W.harvester == harvester)
    rows = conn.execute(
        select(
            _W.id, _W.queue, _W.harvester, _W.provider, _W.provider_job_id, _W.provider_data, _W.state,
            _W.batch_state, _W.cores, _W.pilot_id, _W.submitted_at, _W.started_at,
        ).where(*where).order_by(_W.id)
    ).all()  # fmt: skip
    return [Worker(*row) for row in rows]


def submitted_since(conn: Connection, queue: str, since: float) -> int:
    """How many workers of the queue were submitted after ``since`` (by any harvester)."""
    return conn.execute(
        select(func.count()).select_from(s.workers).where(_W.queue == queue, _W.submitted_at > since)
    ).scalar_one()


def record_queue(conn: Connection, harvester: str, queue: str, values: dict[str, Any]) -> None:
    """Upsert the harvester's view of a queue after a cycle (``harvester_queues``)."""
    updated = conn.execute(
        update(s.harvester_queues).where(_HQ.queue == queue, _HQ.harvester == harvester).values(values)
    ).rowcount
    if not updated:
        conn.execute(insert(s.harvester_queues).values(queue=queue, harvester=harvester, **values))
