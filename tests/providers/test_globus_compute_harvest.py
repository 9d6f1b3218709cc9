"""The harvester driving GlobusComputeProvider: pilot functions go through the SDK's packing to a
real endpoint engine, which runs the harvester's pilot command (here a stand-in for Python that
prints its arguments and waits for SIGTERM like a pilot); the worker rows follow."""

import stat
import time

import pytest

pytest.importorskip("globus_compute_sdk")
pytest.importorskip("globus_compute_endpoint")

import globus_compute_sdk  # noqa: E402
from sqlalchemy import select  # noqa: E402
from support.waiting import wait_until  # noqa: E402
from test_globus_compute_loopback import LoopbackExecutor, endpoint_engine  # noqa: E402, F401

from pandaflow.harvester import Harvester, HarvesterConfig, policy  # noqa: E402
from pandaflow.harvester import workers as w  # noqa: E402
from pandaflow.server.app import sync_queues  # noqa: E402
from pandaflow.server.jobs import pilots, submission  # noqa: E402
from pandaflow.server.jobs.broker import Broker  # noqa: E402
from pandaflow.server.jobs.queues import parse_queues  # noqa: E402
from pandaflow.server.store import schema as s  # noqa: E402
from pandaflow.server.store.db import open_database  # noqa: E402

QUEUE = "HPC_MILANO"
ENDPOINT_ID = "5f7b0d4e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"


@pytest.fixture
def engine(tmp_path):
    engine = open_database(f"sqlite:///{tmp_path / 'h.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def loopback(monkeypatch, endpoint_engine):  # noqa: F811 (the fixture imported above)
    executor = LoopbackExecutor(endpoint_engine)
    monkeypatch.setattr(globus_compute_sdk, "Executor", lambda **kwargs: executor)
    return executor


def fake_python(tmp_path, body: str) -> str:
    path = tmp_path / "python"
    path.write_text(f'#!/bin/sh\necho "pilot $*"\n{body}\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def hpc_harvester(engine, tmp_path, python, **queue_keys):
    queue = {
        "name": QUEUE, "site": "SLAC", "max_memory_mb": 4096, "cores": 1, "max_workers": 2,
        "worker_cores": 4, "worker_memory_mb": 16384,
        "provider": {"name": "globus_compute", "endpoint_id": ENDPOINT_ID, "poll_s": 0.05,
                     "state_dir": str(tmp_path / "pilots"),
                     "user_endpoint_config": {"ACCOUNT": "rubin:developers"},
                     "size_variables": {"cores": "CORES_PER_NODE", "memory_gb": "MEM_PER_NODE"}},
        **queue_keys,
    }  # fmt: skip
    queues = parse_queues([queue], "test")
    sync_queues(engine, queues)
    with engine.begin() as conn:
        jobs = [{"command": "true", "queue": QUEUE, "memory_mb": 2000}]
        submission.store(
            conn, submission.validate(jobs, Broker(queues)), submission.WorkflowBook(), workflow="wf"
        )
    cfg = HarvesterConfig(
        zmq_endpoint="tcp://server:8801", token="tok", workdir=str(tmp_path / "h"), name="h1",
        queues=queues, interval=0.05, python=python,
    )  # fmt: skip
    return Harvester(engine, cfg)


def worker(engine):
    with engine.connect() as conn:
        return conn.execute(select(s.workers).order_by(s.workers.c.id)).mappings().first()


def test_ready_work_becomes_a_pilot_function_running_the_pilot_command(engine, tmp_path, loopback):
    python = fake_python(tmp_path, "trap 'exit 0' TERM; while :; do sleep 0.05; done")
    harvester = hpc_harvester(engine, tmp_path, python)
    report = harvester.cycle()[QUEUE]
    assert report.errors == [] and len(report.submitted) == 1
    row = worker(engine)
    assert (row["state"], row["provider"]) == (w.SUBMITTED, "globus_compute")
    key = row["provider_job_id"].rpartition("/")[0]
    assert key.startswith(f"pandaflow-{QUEUE}-{row['id']}-")
    log = tmp_path / "pilots" / f"{key}.log"
    wait_until(lambda: log.exists() and log.read_text(), 30, "the pilot command's output")
    assert log.read_text().startswith(
        f"pilot -m pandaflow.pilot --zmq tcp://server:8801 --queue {QUEUE} --cores 4 --memory 16384 "
    )
    assert f"--worker-id {row['id']}" in log.read_text()
    harvester.cycle()
    assert (worker(engine)["state"], worker(engine)["batch_state"]) == (w.RUNNING, "RUNNING")
    provider_of(harvester).cancel([row["provider_job_id"]])


def test_a_pilot_that_exits_before_registering_is_missing_with_its_log(engine, tmp_path, loopback):
    python = fake_python(tmp_path, "echo 'no route to server' >&2; exit 1")
    harvester = hpc_harvester(engine, tmp_path, python)
    harvester.cycle()
    provider = provider_of(harvester)
    wait_until(lambda: all(f.done() for f in provider.futures.values()), 30, "the pilot functions to end")
    harvester.cycle()
    row = worker(engine)
    assert (row["state"], row["batch_state"]) == (w.MISSING, "FAILED")
    assert "failed with exit code 1" in row["error"] and "log ends:" in row["error"]
    assert row["error"].endswith("| no route to server)) before its pilot registered")


def test_idle_pilots_are_asked_to_stop_and_drain(engine, tmp_path, loopback):
    python = fake_python(tmp_path, "trap 'echo draining; exit 0' TERM; while :; do sleep 0.05; done")
    harvester = hpc_harvester(engine, tmp_path, python, worker_idle_s=0.01)
    harvester.cycle()
    row = worker(engine)
    key = row["provider_job_id"].rpartition("/")[0]
    wait_until(lambda: (tmp_path / "pilots" / f"{key}.pid").exists(), 30, "the pilot to start")
    with engine.begin() as conn:
        pilots.register(
            conn, {"pilot": "p1", "queue": QUEUE, "cores": 4, "worker_id": row["id"]}, time.time()
        )
        conn.execute(s.jobs.delete())  # the work went elsewhere; the queue is quiet
    cancelled = []

    def scaled_in():
        return cancelled.extend(harvester.cycle()[QUEUE].cancelled) or cancelled

    wait_until(scaled_in, 30, "scale-in once the pilot is idle long enough")
    assert cancelled == [row["id"]] and worker(engine)["state"] == w.CANCELLED
    assert [name for name, _a, _k in loopback.submitted] == ["run_pilot", "stop_pilot"]
    log = tmp_path / "pilots" / f"{key}.log"
    wait_until(lambda: "draining" in log.read_text(), 30, "the pilot to drain")


def provider_of(harvester):
    """The provider instance the harvester built for the queue (it keeps one per queue)."""
    queue = harvester.cfg.queues[0]
    return harvester.provider(queue, policy.Limits.of(queue))
