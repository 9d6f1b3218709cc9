"""Test doubles and helpers for the harvester tests: a provider that starts nothing
(:class:`FakeProvider`), queues it serves, ready jobs, a harvester that cycles when told, and
pilots registered from its workers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from parsl.jobs.states import JobState, JobStatus

from pandaflow.harvester import Harvester, HarvesterConfig
from pandaflow.server.app import sync_queues
from pandaflow.server.jobs import pilots, submission
from pandaflow.server.jobs.broker import Broker
from pandaflow.server.jobs.queues import parse_queues


class FakeProvider:
    """A parsl-style provider that starts nothing: it hands out job ids, reports the states the
    test sets, and raises on ``submit``/``status``/``cancel`` when told to."""

    instances: list[FakeProvider] = []

    def __init__(
        self, label: str = "fake", cores_per_node: int | None = None, mem_per_node: int | None = None
    ):
        self.label = label
        self.cores_per_node = cores_per_node
        self.mem_per_node = mem_per_node
        self.script_dir: str | None = None
        self.resources: dict[str, dict[str, Any]] = {}
        self.submitted: list[tuple[str, str]] = []  # (job id, command)
        self.cancelled: list[str] = []
        self.fail: dict[str, Exception] = {}  # method name -> exception to raise
        self.refuse_cancel = False
        self._next = 0
        FakeProvider.instances.append(self)

    def _maybe_fail(self, method: str) -> None:
        if method in self.fail:
            raise self.fail[method]

    def submit(self, command: str, tasks_per_node: int, job_name: str = "fake") -> str:
        self._maybe_fail("submit")
        self._next += 1
        job_id = f"job-{self._next}"
        self.resources[job_id] = {"job_id": job_id, "status": JobStatus(JobState.PENDING)}
        self.submitted.append((job_id, command))
        return job_id

    def set_state(self, job_id: str, state: JobState, **kw: Any) -> None:
        self.resources[job_id]["status"] = JobStatus(state, **kw)

    def status(self, job_ids):
        self._maybe_fail("status")
        return [self.resources[j]["status"] for j in job_ids]

    def cancel(self, job_ids):
        self._maybe_fail("cancel")
        if self.refuse_cancel:
            return [False for _ in job_ids]
        for j in job_ids:
            self.resources[j]["status"] = JobStatus(JobState.CANCELLED)
            self.cancelled.append(j)
        return [True for _ in job_ids]

    @property
    def status_polling_interval(self) -> int:
        return 1


def queue_set(engine, *entries: dict[str, Any]):
    """Parse queue entries, mirror them in the database; returns (queues, broker)."""
    queues = parse_queues(list(entries), "test queues")
    sync_queues(engine, queues)
    return queues, Broker(queues)


def fake_queue(name="q", **kw):
    """A queue description served by :class:`FakeProvider` (pull unless ``mode="push"``)."""
    return {
        "name": name,
        "cores": 2,
        "max_memory_mb": 4000,
        "provider": {"name": "fake"},
        "max_workers": 10,
        **kw,
    }


def submit_jobs(engine, broker, n, queue="q", **fields):
    """Store ``n`` ready shell jobs on ``queue``; returns their ids."""
    jobs = [{"command": "true", "queue": queue, **fields} for _ in range(n)]
    with engine.begin() as conn:
        stored = submission.store(
            conn, submission.validate(jobs, broker), submission.WorkflowBook(), workflow="wf"
        )
    return list(stored.ids.values())


def harvester(engine, tmp_path: Path, queues, name: str = "h1", **kw: Any) -> Harvester:
    """A harvester ``name`` serving ``queues`` (no thread: the test calls ``cycle()``), its work
    directory under ``tmp_path``; pilots would connect to a dispatcher that is not there."""
    cfg = HarvesterConfig(
        zmq_endpoint="tcp://127.0.0.1:5555",
        token="tok",
        workdir=str(tmp_path / name),
        name=name,
        queues=queues,
        interval=0.05,
        **kw,
    )
    return Harvester(engine, cfg)


def register_pilot(engine, worker_id: int, name: str = "p1", queue: str = "q", cores: int = 2) -> int:
    """Register a pilot as the one that came up in worker ``worker_id``; returns its id."""
    with engine.begin() as conn:
        return pilots.register(
            conn, {"pilot": name, "queue": queue, "cores": cores, "worker_id": worker_id}, time.time()
        )
