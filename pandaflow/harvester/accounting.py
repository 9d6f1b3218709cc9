"""Accounting: a queue's demand (ready jobs its pilots can take) against its supply (job slots of
active pilots not in use, plus the slots of workers that have no pilot yet).

Both sides are counted in job slots (cores): a pilot of ``worker_cores`` slots runs jobs whose
cores add up to at most that. A ready job larger than the queue's pilots (more cores than
``worker_cores`` or more memory than ``worker_memory_mb``) is not demand, since no pilot the
harvester could start would take it; it is counted apart (``unfit_jobs``) so it stays visible.

Supply, without counting anything twice:

* an active pilot of the queue offers ``cores - cores held`` (held: its dispatched and running
  jobs), whether a harvester started it or not;
* a live worker whose pilot has not registered yet (waiting in a batch queue, or starting)
  offers all of ``cores``: it will soon ask for work;
* a live worker whose pilot already left (exited, lost) offers nothing: it is on its way out.

On push queues the jobs reserved for a worker (:mod:`pandaflow.server.dispatch.push`) are neither demand
(they are no longer ready) nor supply: a worker's slots count minus the cores reserved for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection

from pandaflow.harvester import workers as w
from pandaflow.server.dispatch import push
from pandaflow.server.jobs import demand
from pandaflow.server.jobs.demand import PilotView


@dataclass(slots=True)
class Snapshot:
    """Demand and supply of one queue at one moment."""

    queue: str
    ready_jobs: int = 0  # ready jobs the queue's pilots can take
    ready_cores: int = 0
    unfit_jobs: int = 0  # ready jobs larger than the queue's pilots
    pilots: dict[int, PilotView] = field(default_factory=dict)  # active pilots by id
    workers: list[w.Worker] = field(default_factory=list)  # live workers (every harvester's)
    reserved: dict[int, tuple[int, int]] = field(default_factory=dict)  # worker -> (jobs, cores) reserved

    def serving(self, worker: w.Worker) -> bool:
        """The worker's pilot is registered and active."""
        return worker.pilot_id is not None and worker.pilot_id in self.pilots

    def pending(self, worker: w.Worker) -> bool:
        """The worker has no pilot yet (queued in the batch system, or starting up)."""
        return worker.pilot_id is None

    def reserved_cores(self, worker: w.Worker) -> int:
        """Cores of the jobs reserved for the worker that its pilot has not taken yet."""
        return self.reserved.get(worker.id, (0, 0))[1]

    @property
    def reserved_jobs(self) -> int:
        return sum(n for n, _cores in self.reserved.values())

    @property
    def idle_slots(self) -> int:
        """Slots that can take a job now or soon: free slots of pilots, slots of pending workers,
        less what is reserved for them."""
        promised = {wk.pilot_id: self.reserved_cores(wk) for wk in self.workers if wk.pilot_id is not None}
        return sum(max(0, p.idle_slots - promised.get(p.id, 0)) for p in self.pilots.values()) + sum(
            max(0, wk.cores - self.reserved_cores(wk)) for wk in self.workers if self.pending(wk)
        )

    @property
    def queued_workers(self) -> int:
        """Live workers waiting in the provider (not yet running)."""
        return sum(1 for wk in self.workers if wk.state == w.SUBMITTED)

    @property
    def running_workers(self) -> int:
        return sum(1 for wk in self.workers if wk.state == w.RUNNING)


def snapshot(conn: Connection, queue: str, worker_cores: int, worker_memory_mb: int | None) -> Snapshot:
    """Count demand and supply of ``queue`` for pilots of ``worker_cores`` and ``worker_memory_mb``."""
    snap = Snapshot(queue)
    ready = demand.ready_jobs(conn, queue, worker_cores, worker_memory_mb)
    snap.ready_jobs, snap.ready_cores, snap.unfit_jobs = ready.fit, ready.fit_cores, ready.unfit
    snap.pilots = demand.active_pilots(conn, queue)
    snap.workers = w.live(conn, queue=queue)
    snap.reserved = push.reserved_cores(conn, queue)
    return snap
