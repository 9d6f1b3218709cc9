"""The harvester driving GoogleBatchProvider on a fake Batch client: a preemptible queue with ready
jobs gets a SPOT pilot job sized from the queue, and the worker row follows what Batch reports
(preemption, scale-in by deletion, API refusals)."""

import time

import pytest
from google.api_core import exceptions as gexc
from google.cloud import batch_v1
from sqlalchemy import select
from test_google_batch_fake import FakeBatchClient

from pandaflow.harvester import Harvester, HarvesterConfig
from pandaflow.harvester import workers as w
from pandaflow.server.app import sync_queues
from pandaflow.server.jobs import pilots, submission
from pandaflow.server.jobs.broker import Broker
from pandaflow.server.jobs.queues import parse_queues
from pandaflow.server.store import schema as s
from pandaflow.server.store.db import open_database

QUEUE = "GOOGLE_IDF_BATCH_HIMEM"
PARENT = "projects/rubin-idf/locations/us-central1"


@pytest.fixture
def engine(tmp_path):
    engine = open_database(f"sqlite:///{tmp_path / 'h.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def batch(monkeypatch):
    """The one fake client every provider the harvester builds talks to (no credentials needed)."""
    fake = FakeBatchClient()
    monkeypatch.setattr(batch_v1, "BatchServiceClient", lambda: fake)
    return fake


def idf_harvester(engine, tmp_path, **queue_keys):
    queue = {
        "name": QUEUE, "site": "Google_IDF", "min_memory_mb": 14336, "max_memory_mb": 40960,
        "cores": 1, "max_workers": 3, "worker_memory_mb": 40960, "preemptible": True,
        "provider": {"name": "google_batch", "project": "rubin-idf", "preemptible": True,
                     "image": "us-central1-docker.pkg.dev/rubin-idf/pandaflow/pilot:1",
                     "token_secret": "pandaflow-token", "labels": {"site": "google_idf"}},
        **queue_keys,
    }  # fmt: skip
    queues = parse_queues([queue], "test")
    sync_queues(engine, queues)
    jobs = [{"command": "true", "queue": QUEUE, "memory_mb": 20000}]
    with engine.begin() as conn:
        submission.store(
            conn, submission.validate(jobs, Broker(queues)), submission.WorkflowBook(), workflow="wf"
        )
    cfg = HarvesterConfig(
        zmq_endpoint="tcp://pandaflow-server:8801", token="tok", workdir=str(tmp_path / "h"), name="h1",
        queues=queues, interval=0.05, python="python3",
    )  # fmt: skip
    return Harvester(engine, cfg)


def worker(engine):
    with engine.connect() as conn:
        return conn.execute(select(s.workers).order_by(s.workers.c.id)).mappings().first()


def test_ready_work_becomes_a_spot_batch_job_sized_from_the_queue(engine, tmp_path, batch):
    harvester = idf_harvester(engine, tmp_path)
    report = harvester.cycle()[QUEUE]
    assert report.errors == [] and len(report.submitted) == 1
    row = worker(engine)
    (name,) = batch.jobs
    assert (row["state"], row["provider"], row["provider_job_id"]) == (w.SUBMITTED, "google_batch", name)
    assert name.startswith(f"{PARENT}/jobs/pandaflow-google-idf-batch-himem-{row['id']}-")
    job = batch.jobs[name]
    task = job.task_groups[0].task_spec
    assert (task.compute_resource.cpu_milli, task.compute_resource.memory_mib) == (1000, 40960)
    policy = job.allocation_policy.instances[0].policy
    assert policy.provisioning_model == batch_v1.AllocationPolicy.ProvisioningModel.SPOT
    assert dict(task.environment.secret_variables) == {
        "PANDAFLOW_TOKEN": "projects/rubin-idf/secrets/pandaflow-token/versions/latest"
    }
    script = task.runnables[0].container.commands[1]
    token_file = f"{tmp_path}/h/token"
    assert f'printf %s "$PANDAFLOW_TOKEN" > {token_file}' in script
    command = script.splitlines()[-1]
    assert command.startswith("python3 -m pandaflow.pilot --zmq tcp://pandaflow-server:8801")
    assert f"--queue {QUEUE} --cores 1 --memory 40960 --token-file {token_file}" in command
    assert f"--worker-id {row['id']}" in command
    assert job.labels["site"] == "google_idf"


def test_a_preempted_vm_before_the_pilot_registered_makes_the_worker_missing(engine, tmp_path, batch):
    harvester = idf_harvester(engine, tmp_path)
    harvester.cycle()
    (name,) = batch.jobs
    batch.move(name, "RUNNING")
    harvester.cycle()
    assert (worker(engine)["state"], worker(engine)["batch_state"]) == (w.RUNNING, "RUNNING")
    batch.move(name, "FAILED", 50001, "Task state is updated from RUNNING to FAILED.")
    harvester.cycle()
    row = worker(engine)
    assert (row["state"], row["batch_state"]) == (w.MISSING, "FAILED")
    assert row["error"] == (
        f"the google_batch job {name} ended (failed with exit code 50001 (the spot VM was preempted: "
        "Task state is updated from RUNNING to FAILED.)) before its pilot registered"
    )


def test_a_job_that_fails_after_its_pilot_registered_fails_the_worker(engine, tmp_path, batch):
    harvester = idf_harvester(engine, tmp_path)
    harvester.cycle()
    (name,) = batch.jobs
    batch.move(name, "RUNNING")
    row = worker(engine)
    with engine.begin() as conn:
        pilots.register(
            conn, {"pilot": "p1", "queue": QUEUE, "cores": 1, "worker_id": row["id"]}, time.time()
        )
    harvester.cycle()
    assert worker(engine)["state"] == w.RUNNING
    batch.move(name, "FAILED", 137, "Task state is updated from RUNNING to FAILED with exit code 137.")
    harvester.cycle()
    row = worker(engine)
    assert (row["state"], row["batch_state"]) == (w.FAILED, "FAILED")
    assert "exit code 137" in row["error"]


def test_idle_workers_are_scaled_in_by_deleting_their_job(engine, tmp_path, batch):
    harvester = idf_harvester(engine, tmp_path, worker_idle_s=0.01)
    harvester.cycle()
    (name,) = batch.jobs
    with engine.begin() as conn:  # the work went elsewhere; the queue is quiet
        conn.execute(s.jobs.delete())
    time.sleep(0.05)
    report = harvester.cycle()[QUEUE]
    assert report.cancelled == [worker(engine)["id"]] and worker(engine)["state"] == w.CANCELLED
    assert [c.request.name for c in batch.of("delete_job")] == [name]


def test_an_api_refusal_fails_the_worker_and_stays_with_the_queue(engine, tmp_path, batch):
    harvester = idf_harvester(engine, tmp_path)
    batch.fail_next("create_job", gexc.PermissionDenied("Permission 'batch.jobs.create' denied on resource"))
    report = harvester.cycle()[QUEUE]
    row = worker(engine)
    assert row["state"] == w.FAILED
    assert row["error"].startswith(
        "submit failed: PermissionDenied: 403 Permission 'batch.jobs.create' denied"
    )
    assert report.errors and harvester.errors[QUEUE].startswith(f"worker {row['id']}: submit failed")


def test_an_outage_while_following_workers_is_recorded_not_raised(engine, tmp_path, batch):
    harvester = idf_harvester(engine, tmp_path)
    harvester.cycle()
    batch.fail_next("get_job", gexc.ServiceUnavailable("Batch is unavailable"))
    report = harvester.cycle()[QUEUE]
    assert any("Batch is unavailable" in e for e in report.errors)
    assert worker(engine)["state"] == w.SUBMITTED
