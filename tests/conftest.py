"""Shared fixtures: a real job server state on a temporary SQLite database, and a helper that
moves jobs through their states with the server's own modules."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import select

from pandaflow.server import assignment, completion, pilots, submission
from pandaflow.server import schema as s
from pandaflow.server.app import ServerState, create_app, sync_queues
from pandaflow.server.broker import Broker
from pandaflow.server.db import open_database
from pandaflow.server.queues import parse_queues

TOKEN = "t"


# Two queues split by memory, so brokerage has a choice to make.
TEST_QUEUES = [
    {"name": "small", "max_memory_mb": 2000, "cores": 4},
    {"name": "big", "min_memory_mb": 2000, "max_memory_mb": 8000, "cores": 8},
]


class RecordingDispatcher:
    """Stands in for the dispatcher thread: records the control messages it is poked with."""

    endpoint = "tcp://127.0.0.1:5555"
    epoch = "test-epoch"

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def poke(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("kind") == kind]


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
        return [j["id"] for j in jobs]

    def report(self, job_id: int, ok: bool = True, error_code: int = 0, **fields: Any) -> None:
        """Record the outcome of the job's current attempt as a pilot would send it."""
        now = time.time()
        with self.engine.begin() as conn:
            attempt = conn.execute(select(s.jobs.c.attempt).where(s.jobs.c.id == job_id)).scalar_one()
            outcome = {"id": job_id, "attempt": attempt, "ok": ok, "error_code": error_code, "error_diag": "",
                       "exit_code": 0 if ok else 1, "t0": now - 2.0, "t1": now, **fields}  # fmt: skip
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


@pytest.fixture
def db_url(tmp_path) -> str:
    return "sqlite:///" + str(tmp_path / "t.db")


@pytest.fixture
def engine(db_url):
    engine = open_database(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def queues(engine):
    found = parse_queues(TEST_QUEUES)
    sync_queues(engine, found)
    return found


@pytest.fixture
def dispatcher() -> RecordingDispatcher:
    return RecordingDispatcher()


@pytest.fixture
def server_state(engine, queues, dispatcher) -> ServerState:
    return ServerState(engine, queues, Broker(queues), token=TOKEN, dispatcher=dispatcher)


@pytest.fixture
def app(server_state):
    return create_app(server_state)


@pytest.fixture
def api(app):
    """A Flask test client that sends the right bearer token."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return client


@pytest.fixture
def workload(engine, queues) -> Workload:
    return Workload(engine, Broker(queues))


# ---------------------------------------------------------------- real processes (integration, executors)


class ProcessTag:
    """Marks every process a test starts (through an environment variable they inherit) so the
    test can list what is still alive, and its teardown can kill whatever leaked."""

    VARIABLE = "PANDAFLOW_TEST_TAG"

    def __init__(self, tag: str):
        self.tag = tag

    def alive(self) -> list:
        """Processes other than this one that carry the tag (pilots, servers, workers, forkservers)."""
        import os

        import psutil

        found = []
        for proc in psutil.process_iter(["pid"]):
            if proc.pid == os.getpid():
                continue
            try:
                if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(self.VARIABLE) == self.tag:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def kill_all(self) -> list:
        """SIGKILL every tagged process; return them (once they are gone or zombies)."""
        import time

        import psutil

        procs = self.alive()
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and set(procs) & set(self.alive()):
            time.sleep(0.02)
        return procs


@pytest.fixture
def process_tag(monkeypatch) -> ProcessTag:
    """Tag the processes this test starts; kill any of them still alive at teardown."""
    import uuid

    tag = ProcessTag(uuid.uuid4().hex)
    monkeypatch.setenv(ProcessTag.VARIABLE, tag.tag)
    yield tag
    tag.kill_all()


@pytest.fixture
def load_parsl(tmp_path):
    """``load_parsl(*executors, **config)`` loads a parsl Config and returns the DataFlowKernel;
    teardown runs ``dfk.cleanup()`` (even if the test failed) and ``parsl.clear()``."""
    import parsl
    from parsl.config import Config

    loaded = []

    def load(*executors, **config):
        config.setdefault("run_dir", str(tmp_path / "runinfo"))
        config.setdefault("strategy", "none")
        dfk = parsl.load(Config(executors=list(executors), **config))
        loaded.append(dfk)
        return dfk

    yield load
    try:
        for dfk in loaded:
            if not dfk.cleanup_called:  # a test may have cleaned up itself
                dfk.cleanup()
    finally:
        parsl.clear()
