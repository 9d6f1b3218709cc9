"""Jobs in any state, put there by the server's own submission, assignment and completion code
(:class:`Workload`), on the two test queues of :data:`TEST_QUEUES`."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from pandaflow import protocol
from pandaflow.server.dispatch import assignment, completion
from pandaflow.server.jobs import pilots, submission
from pandaflow.server.jobs.broker import Broker
from pandaflow.server.store import schema as s

# Two queues split by memory, so brokerage has a choice to make.
TEST_QUEUES = [
    {"name": "small", "max_memory_mb": 2000, "cores": 4},
    {"name": "big", "min_memory_mb": 2000, "max_memory_mb": 8000, "cores": 8},
]


class Workload:
    """Puts jobs into any state through the real submission, assignment and completion code."""

    def __init__(self, engine, broker: Broker):
        self.engine = engine
        self.broker = broker

    def submit(
        self, jobs: list[dict[str, Any]], workflow: str = "wf", client: str | None = None
    ) -> list[int]:
        """Store jobs (shell jobs by default) as ready; returns their ids in order."""
        jobs = [{"command": "true", **job} for job in jobs]
        clean = submission.validate(jobs, self.broker)
        with self.engine.begin() as conn:
            stored = submission.store(
                conn, clean, submission.WorkflowBook(), workflow=workflow, client=client
            )
        return [stored.ids[job["uid"]] for job in clean]

    def pilot(self, name: str = "pilot-1", queue: str = "small") -> int:
        """Register a pilot; returns its id."""
        with self.engine.begin() as conn:
            return pilots.register(
                conn, {"pilot": name, "queue": queue, "host": "node1", "cores": 4}, time.time()
            )

    def dispatch(self, pilot_id: int, queue: str = "small", n: int = 1000) -> list[int]:
        """Hand ready jobs of ``queue`` to the pilot; returns the ids dispatched."""
        with self.engine.begin() as conn:
            jobs = assignment.assign(conn, pilot_id=pilot_id, queue=queue, n=n, now=time.time())
        return [j.job_id for j in jobs]

    def report(self, job_id: int, ok: bool = True, error_code: int = 0, **fields: Any) -> None:
        """Record the outcome of the job's current attempt as a pilot would send it."""
        now = time.time()
        with self.engine.begin() as conn:
            attempt = conn.execute(select(s.jobs.c.attempt).where(s.jobs.c.id == job_id)).scalar_one()
            outcome = protocol.Outcome(job_id=job_id, attempt=attempt, ok=ok, error_code=error_code,
                                       exit_code=0 if ok else 1, started_at=now - 2.0, ended_at=now,
                                       **fields)  # fmt: skip
            completion.record(conn, [outcome], now)

    def status(self, job_id: int) -> str:
        with self.engine.connect() as conn:
            return conn.execute(select(s.jobs.c.status).where(s.jobs.c.id == job_id)).scalar_one()

    def statuses(self, job_ids: list[int]) -> list[str]:
        return [self.status(job_id) for job_id in job_ids]

    def run(self, pilot_id: int, job_id: int, ok: bool = True, queue: str = "small") -> None:
        """Dispatch what is ready (the job among it) and report the job's outcome."""
        if self.status(job_id) == "ready":
            self.dispatch(pilot_id, queue)
        assert self.status(job_id) == "dispatched", f"job {job_id} was not ready"
        self.report(job_id, ok=ok, error_code=0 if ok else 1002)
