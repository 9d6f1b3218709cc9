"""Push queues: ready jobs reserved for the harvester worker submitted for them.

On a queue with ``"mode": "push"`` (PanDA's push queues) the harvester does not start a pilot
and let it ask for any job: when it submits a worker, it reserves specific ready jobs for it
(:func:`reserve`, ``ready -> reserved``, ``jobs.worker_id`` = the worker), in the transaction
that creates the worker's row. The reservation is in the database only, so it survives restarts
of the server and of the harvester.

* No other pilot gets a reserved job: pull dispatch only ever selects ``ready`` jobs.
* When the worker's pilot registers (``--worker-id``) and asks for work, the dispatcher serves
  its reserved jobs first (:func:`take`, ``reserved -> dispatched``), then, for any slots left,
  the queue's unreserved ready jobs like any pilot's. Serving on the pilot's request keeps the
  pilot's own flow control (it never holds more than it asked for); it asks right after it
  registers, so the reserved jobs go out in the same dispatcher turn.
* When the worker ends without its pilot having taken them (the batch job failed or was
  cancelled, the pilot never arrived, the submission failed, the worker was scaled in), the
  reservation is released (:func:`release`, ``reserved -> ready``) in the same transaction that
  ends the worker, and the jobs go to another worker. A job is never stuck on a dead worker and
  never lost.

``jobs.worker_id`` stays set once the pilot took the job, so a job's worker remains visible; a
retry clears it (the next attempt is reserved afresh).
"""

from __future__ import annotations

from collections.abc import MutableMapping

from sqlalchemy import Connection

from pandaflow import protocol
from pandaflow.server.dispatch import assignment
from pandaflow.server.jobs import states
from pandaflow.server.store.statements import Sql, marks

_UNLIMITED = 1 << 40
_CANDIDATES = (
    "SELECT id, status, attempt, cores FROM jobs"
    " WHERE status='ready' AND queue=? AND cores<=? AND (memory_mb IS NULL OR memory_mb<=?)"
    " ORDER BY priority DESC, id LIMIT ?"
)
_RESERVED_FOR_PILOT = (
    "SELECT id, status, attempt, kind, command, env, cores, memory_mb, walltime_s, queue FROM jobs"
    " WHERE status='reserved' AND worker_id IN (SELECT id FROM workers WHERE pilot_id=?)"
    " ORDER BY priority DESC, id LIMIT ?"
)
_RESERVED_FOR_WORKERS = (
    "SELECT id, status, attempt, queue FROM jobs WHERE status='reserved' AND worker_id IN ({})"
)


def reserve(
    conn: Connection, *, worker_id: int, queue: str, cores: int, memory_mb: int | None, now: float
) -> list[int]:
    """Reserve ready jobs of ``queue`` for a new worker of ``cores`` slots and ``memory_mb``.

    Highest priority first, FIFO among equals, as pull dispatch would hand them out; jobs are
    taken while their cores fit in the slots left. Call it in the transaction that created the
    worker's row: that insert already holds SQLite's write lock, so the reservation cannot race
    the dispatcher (on PostgreSQL the rows are claimed with ``SKIP LOCKED``). Returns the job ids.
    """
    sql = Sql(conn)
    lock = " FOR UPDATE SKIP LOCKED" if sql.pg else ""
    # Every job needs at least one core, so no more than `cores` can fit; a few more candidates
    # let smaller jobs fill slots a large one left.
    candidates = sql.maps(_CANDIDATES + lock, (queue, cores, memory_mb or _UNLIMITED, 2 * cores + 8))
    free = cores
    picked = []
    for job in candidates:
        if job["cores"] <= free:
            picked.append(job)
            free -= job["cores"]
            if free <= 0:
                break
    return states.apply(conn, "reserve", picked, now, worker_id=worker_id, reason=f"worker {worker_id}").ids


def take(
    conn: Connection,
    *,
    pilot_id: int,
    n: int,
    now: float,
    payload_cache: MutableMapping[int, bytes] | None = None,
) -> list[protocol.Payload]:
    """Dispatch up to ``n`` jobs reserved for the worker the pilot runs in; returns their payloads
    in the shape :func:`pandaflow.server.dispatch.assignment.assign` sends (the pilot cannot tell them apart).
    """
    if n <= 0:
        return []
    sql = Sql(conn)
    # No SKIP LOCKED: a harvester releasing these very rows must wait for us, not race us.
    lock = " FOR UPDATE" if sql.pg else ""
    picked = sql.maps(_RESERVED_FOR_PILOT + lock, (pilot_id, n))
    if not picked:
        return []
    # Not strict: on SQLite the select above may have run before this transaction began, and the
    # guarded update leaves out (and the pilot is not sent) a job released meanwhile.
    taken = states.apply(conn, "dispatch", picked, now, pilot_id=pilot_id, strict=False).moved
    return assignment.to_wire(sql, taken, payload_cache)


def release(conn: Connection, worker_ids: list[int], now: float) -> set[str]:
    """Give the jobs still reserved for these workers back to their queues (``reserved -> ready``).

    Returns the queues that got ready jobs back.
    """
    if not worker_ids:
        return set()
    sql = Sql(conn)
    lock = " FOR UPDATE" if sql.pg else ""
    held = sql.maps(_RESERVED_FOR_WORKERS.format(marks(len(worker_ids))) + lock, list(worker_ids))
    moved = states.apply(conn, "unreserve", held, now, strict=False, reason="its worker ended").moved
    return {job["queue"] for job in moved}


def reserved_cores(conn: Connection, queue: str) -> dict[int, tuple[int, int]]:
    """Jobs and cores reserved per worker of ``queue``: ``{worker_id: (jobs, cores)}``."""
    rows = Sql(conn).rows(
        "SELECT worker_id, COUNT(*), SUM(cores) FROM jobs WHERE status='reserved' AND queue=?"
        " GROUP BY worker_id",
        (queue,),
    )
    return {worker: (int(n), int(c or 0)) for worker, n, c in rows}
