"""A queue's demand and supply as the job and pilot tables hold them, for the harvester's
accounting (:mod:`pandaflow.harvester.accounting`): the ready jobs a pilot of a given shape
could take, and how much of each active pilot is in use.

The harvester reads the job tables through these functions (and :mod:`pandaflow.server.dispatch.push`
for reservations, :func:`pandaflow.server.jobs.pilots.states` for pilot states), never with its own SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, case, func, select

from pandaflow.server.jobs.pilots import ACTIVE
from pandaflow.server.jobs.states import ACTIVE_STATES, READY
from pandaflow.server.store import schema as s

_J = s.jobs.c
_P = s.pilots.c


@dataclass(frozen=True, slots=True)
class ReadyJobs:
    """A queue's ready jobs, split by whether a pilot of the given shape can take them."""

    total: int
    fit: int  # ready jobs a pilot of the shape can take (cores and memory)
    fit_cores: int  # their cores

    @property
    def unfit(self) -> int:
        """Ready jobs larger than the pilot shape (more cores or more memory)."""
        return self.total - self.fit


@dataclass(frozen=True, slots=True)
class PilotView:
    """An active pilot of the queue and how much of it is in use."""

    id: int
    cores: int
    held_cores: int  # cores of the jobs it holds (dispatched or running)
    ended_jobs: int  # jobs it has finished or failed so far (as of the dispatcher's last sweep)
    registered_at: float

    @property
    def idle_slots(self) -> int:
        return max(0, self.cores - self.held_cores)


def ready_jobs(conn: Connection, queue: str, worker_cores: int, worker_memory_mb: int | None) -> ReadyJobs:
    """Count ``queue``'s ready jobs, and those that fit a pilot of ``worker_cores`` and
    ``worker_memory_mb`` (None: any memory)."""
    fits = (_J.cores <= worker_cores) & (
        _J.memory_mb.is_(None) | (_J.memory_mb <= (worker_memory_mb or 1 << 40))
    )
    # One pass over the queue's ready jobs (the dispatch index leads with status, queue).
    row = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((fits, 1), else_=0)), 0),
            func.coalesce(func.sum(case((fits, _J.cores), else_=0)), 0),
        ).where(_J.status == READY, _J.queue == queue)
    ).one()
    return ReadyJobs(total=int(row[0]), fit=int(row[1]), fit_cores=int(row[2]))


def active_pilots(conn: Connection, queue: str) -> dict[int, PilotView]:
    """The active pilots of ``queue`` by id, each with the cores of the jobs it holds."""
    pilots = conn.execute(
        select(_P.id, _P.cores, _P.n_done + _P.n_failed, _P.registered_at).where(
            _P.status == ACTIVE, _P.queue == queue
        )
    ).all()
    held: dict[int, int] = {}
    if pilots:
        held = dict(
            conn.execute(
                select(_J.pilot_id, func.sum(_J.cores))
                .where(_J.pilot_id.in_([p[0] for p in pilots]), _J.status.in_(list(ACTIVE_STATES)))
                .group_by(_J.pilot_id)
            ).all()
        )
    return {
        pid: PilotView(pid, cores, int(held.get(pid) or 0), int(ended or 0), registered)
        for pid, cores, ended, registered in pilots
    }
